"""Group-Lk penalties by units: the group proximal step against brute force,
`attach(..., structure="units")`, its records, saving, and training that
zeroes whole units which `shrink` then removes.

Backend-neutral: `test_backends.py` runs this file under JAX and PyTorch,
and compares the three backends' steps from the same weights."""

import json
import os

import keras
import numpy as np
import pytest

import keras_lk
from keras_lk.penalties.plan import UnitPlan

numpy = keras.ops.convert_to_numpy

GROUP_K = (0.0, 0.3, 0.5, 2 / 3, 0.8, 1.0, 1.5, 2.0, 3.0)
VECTORS = ([0.3, -0.4], [1.2, 0.5], [-2.0, 1.0], [0.05, 0.02], [0.0, 0.0],
           [3.0, -4.0])


def objective(x, v, t, k):
    norm = np.linalg.norm(x, axis=-1)
    penalty = (norm != 0).astype(float) if k == 0 else norm ** k
    return 0.5 * np.sum((x - v) ** 2, axis=-1) + t * penalty


def brute_force(v, t, k):
    """argmin over a 2-D grid around 0 and v, refined twice."""
    v = np.asarray(v, float)
    centre, half = np.zeros(2), np.abs(v).max() + 0.05
    best = None
    for _ in range(3):
        axis = np.linspace(-half, half, 801)
        grid = np.stack(np.meshgrid(axis + centre[0], axis + centre[1]), -1)
        grid = grid.reshape(-1, 2)
        # The origin is a candidate at every level (k <= 1 zeroes there).
        grid = np.concatenate([grid, np.zeros((1, 2))])
        values = objective(grid, v, t, k)
        best = grid[np.argmin(values)]
        centre, half = best, half / 100
    return best


@pytest.mark.parametrize("k", GROUP_K)
@pytest.mark.parametrize("t", (0.05, 0.3, 1.0))
def test_group_prox_matches_brute_force(k, t):
    for v in VECTORS:
        got = np.asarray(keras_lk.group_prox(np.array(v), t, k), float)
        expected = brute_force(v, t, k)
        # As good as the grid's best, and next to it.
        assert objective(got, np.array(v), t, k) <= objective(
            expected, np.array(v), t, k) + 1e-6, (v, got, expected)
        np.testing.assert_allclose(got, expected, atol=2e-4)


@pytest.mark.parametrize("k,threshold", [(0.0, np.sqrt(2 * 0.5)),
                                         (0.5, 1.5 * 0.5 ** (2 / 3)),
                                         (1.0, 0.5)])
def test_a_group_is_zero_up_to_the_threshold_and_not_above(k, threshold):
    direction = np.array([0.6, -0.8, 0.0])
    below = keras_lk.group_prox(direction * threshold * 0.999, 0.5, k)
    above = keras_lk.group_prox(direction * threshold * 1.01, 0.5, k)
    assert np.all(np.asarray(below) == 0)
    assert np.count_nonzero(np.asarray(above)) == 2  # of 0.6, -0.8, 0
    # The direction is kept.
    got = np.asarray(above)
    np.testing.assert_allclose(got / np.linalg.norm(got), direction,
                               atol=1e-6)


def test_block_soft_thresholding_and_block_hard_thresholding():
    v = np.array([3.0, 4.0])
    np.testing.assert_allclose(keras_lk.group_prox(v, 1.0, 1), v * 0.8,
                               rtol=1e-6)
    # k = 0 keeps v itself when ||v||^2 > 2t.
    np.testing.assert_array_equal(keras_lk.group_prox(v, 12.0, 0), v)
    assert not np.any(np.asarray(keras_lk.group_prox(v, 12.5, 0)))


@pytest.mark.parametrize("k", (-1, float("inf"), "1", None))
def test_group_prox_rejects_a_bad_k(k):
    with pytest.raises(ValueError, match="Invalid value for argument `k`"):
        keras_lk.group_prox(np.ones(2), 1.0, k)


def conv_model(units=16):
    inputs = keras.Input((8, 8, 1), name="pixels")
    x = keras.layers.Conv2D(8, 3, name="conv")(inputs)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(units, "relu", name="hidden")(x)
    return keras.Model(inputs, keras.layers.Dense(3, name="head")(x))


def data(n=64):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 8, 8, 1)).astype("float32")
    return x, (x.reshape(n, -1)[:, :3] > 0).astype("float32")


def attach_units(model, k=1.0, alpha=1.0, reduction="sum"):
    return keras_lk.attach(model, keras_lk.LkRegularizer(
        k, alpha, reduction, proximal=True), structure="units")


def test_attach_records_every_slice_of_every_removable_group():
    model = conv_model()
    layers = attach_units(model)
    assert [layer.name for layer in layers] == ["conv", "bn", "hidden",
                                                "head"]
    records = {v.path: getattr(v.regularizer, "slices", None)
               for v in model.trainable_weights}
    assert [(s["group"], s["axis"]) for s in records["conv/kernel"]] == [
        ("conv", 3)]
    assert {s["group"] for s in records["bn/gamma"]} == {"conv"}
    # The hidden kernel: rows of the conv channels (through Flatten), and
    # its own columns.
    hidden = {s["group"]: s for s in records["hidden/kernel"]}
    assert hidden["conv"]["axis"] == 0 and hidden["hidden"]["axis"] == 1
    rows = np.asarray(hidden["conv"]["positions"])
    assert rows.shape == (6 * 6 * 8,) and rows[:8].tolist() == list(range(8))
    # The output layer is not a removable group: only its input rows are.
    assert [s["group"] for s in records["head/kernel"]] == ["hidden"]
    assert records["head/bias"] is None


def test_plan_norms_are_the_unit_groups_norms():
    model = conv_model()
    attach_units(model)
    plan = UnitPlan.build(model.trainable_weights)
    norms = plan.norms(lambda v: v.value)
    for group, norm in zip(plan.groups, norms):
        expected = next(g for g in keras_lk.unit_groups(model)
                        if g.name == group.name).norms(2)
        np.testing.assert_allclose(numpy(norm), expected, rtol=1e-5)


def test_the_plan_step_is_the_group_prox_of_each_unit():
    model = conv_model()
    attach_units(model, k=0.5, alpha=3.0)
    plan = UnitPlan.build(model.trainable_weights)
    new = dict(zip(map(id, plan.variables),
                   plan.step(0.1, lambda v: v.value)))
    group = keras_lk.unit_groups(model)[2]
    assert group.name == "hidden"
    kernel = model.get_layer("hidden").kernel
    head = model.get_layer("head").kernel
    bias = model.get_layer("hidden").bias
    for unit in range(group.size):
        v = np.concatenate([numpy(kernel)[:, unit],
                            numpy(bias)[unit:unit + 1],
                            numpy(head)[unit]])
        # A unit of `hidden` is also in the conv group's rows of its
        # kernel: the step multiplies both groups' factors.
        conv_factor = numpy(new[id(kernel)])[:, unit] / np.where(
            numpy(kernel)[:, unit] == 0, 1, numpy(kernel)[:, unit])
        expected = numpy(keras_lk.group_prox(v, 0.3, 0.5))
        np.testing.assert_allclose(
            numpy(new[id(head)])[unit], expected[-3:], atol=1e-6)
        np.testing.assert_allclose(
            numpy(new[id(bias)])[unit], expected[-4], atol=1e-6)
        assert conv_factor.shape == (288,)


@pytest.mark.slow
def test_training_zeroes_whole_units_and_shrink_keeps_the_outputs(tmp_path):
    model = conv_model(units=32)
    attach_units(model, k=1.0, alpha=1.0)
    model.compile(keras_lk.ProximalOptimizer(keras.optimizers.SGD(0.05)),
                  "binary_crossentropy")
    x, y = data()
    model.fit(x, y, epochs=6, batch_size=16, verbose=0)
    hidden = next(g for g in keras_lk.unit_groups(model)
                  if g.name == "hidden")
    assert 0 < hidden.live() < 32
    # Every slice of a dead unit is exactly zero.
    norms = hidden.norms(np.inf)
    dead = np.flatnonzero(norms == 0)
    assert not np.any(numpy(model.get_layer("head").kernel)[dead])
    small = keras_lk.strip(model, shrink=True)
    assert small.get_layer("hidden").units == hidden.live()
    np.testing.assert_allclose(small.predict(x, verbose=0),
                               model.predict(x, verbose=0), atol=1e-5)
    # The shrunk model carries nothing of keras_lk.
    path = str(tmp_path / "small.keras")
    small.save(path)
    with open(os.devnull, "w"):
        text = json.dumps(small.get_config())
    assert "keras_lk" not in text


@pytest.mark.slow
def test_the_penalty_saves_and_loads_and_training_goes_on(tmp_path):
    model = conv_model()
    attach_units(model, k=0.5, alpha=0.3, reduction="mean")
    model.compile(keras_lk.ProximalOptimizer(keras.optimizers.SGD(0.05)),
                  "binary_crossentropy")
    x, y = data()
    model.fit(x, y, epochs=1, verbose=0)
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    for old, new in zip(model.trainable_weights, loaded.trainable_weights):
        assert (old.regularizer is None) == (new.regularizer is None)
        if old.regularizer is not None:
            assert new.regularizer.get_config() == old.regularizer.get_config()
    np.testing.assert_allclose(
        float(sum(keras.ops.convert_to_numpy(l) for l in loaded.losses)),
        float(sum(keras.ops.convert_to_numpy(l) for l in model.losses)),
        rtol=1e-5)
    loaded.fit(x, y, epochs=1, verbose=0)


def test_the_penalty_is_the_sum_of_unit_norms_to_the_k():
    model = conv_model()
    attach_units(model, k=0.5, alpha=2.0, reduction="sum")
    total = float(sum(keras.ops.convert_to_numpy(l) for l in model.losses))
    expected = sum(2.0 * np.sum(g.norms(2) ** 0.5)
                   for g in keras_lk.unit_groups(model) if g.removable)
    np.testing.assert_allclose(total, expected, rtol=1e-5)


def test_without_a_proximal_optimizer_the_first_gradient_raises():
    model = conv_model()
    attach_units(model)
    model.compile(keras.optimizers.SGD(0.05), "binary_crossentropy")
    x, y = data()
    with pytest.raises(ValueError, match="no keras_lk.ProximalOptimizer"):
        model.fit(x, y, epochs=1, verbose=0)


def test_detach_removes_the_group_penalty():
    model = conv_model()
    attach_units(model)
    detached = keras_lk.detach(model, structure="units")
    assert {layer.name for layer in detached} == {"conv", "bn", "hidden",
                                                  "head"}
    assert all(v.regularizer is None for v in model.trainable_weights)
    assert model.losses == []


@pytest.mark.parametrize("regularizer,match", [
    (keras_lk.LkRegularizer(float("inf"), 0.1, proximal=True), "finite k"),
    (keras_lk.LkRegularizer(float("inf"), 0.1), "finite k"),
    (keras.regularizers.L1(0.1), "an LkRegularizer")])
def test_attach_by_units_rejects_what_it_cannot_apply(regularizer, match):
    with pytest.raises(ValueError, match=match):
        keras_lk.attach(conv_model(), regularizer, structure="units")


def test_attach_by_units_names_unknown_groups_and_filters():
    regularizer = keras_lk.LkRegularizer(1, 0.1, proximal=True)
    with pytest.raises(ValueError, match=r"No removable unit group named "
                       r"\['head'\]"):
        keras_lk.attach(conv_model(), regularizer, structure="units",
                        names="head")
    with pytest.raises(ValueError, match="layer_types"):
        keras_lk.attach(conv_model(), regularizer, structure="units",
                        layer_types=keras.layers.Dense)
    with pytest.raises(ValueError, match="Invalid value for argument "
                       "`structure`"):
        keras_lk.attach(conv_model(), regularizer, structure="channels")
    layers = keras_lk.attach(conv_model(), regularizer, structure="units",
                             names=["hidden"])
    assert [layer.name for layer in layers] == ["hidden", "head"]


def compiled(model, k=1.0, alpha=1e-3, **compile_kwargs):
    attach_units(model, k=k, alpha=alpha)
    model.compile(keras_lk.ProximalOptimizer(keras.optimizers.SGD(0.05)),
                  keras.losses.BinaryCrossentropy(from_logits=True),
                  **compile_kwargs)
    return model


def live(model):
    return {g.name: g.live() for g in keras_lk.unit_groups(model)}


@pytest.mark.parametrize("k", (0.0, pytest.param(0.5, marks=pytest.mark.slow),
                               pytest.param(1.0, marks=pytest.mark.slow)))
def test_a_unit_target_is_reached_exactly_and_shrinks(k):
    model = compiled(conv_model(units=32), k=k)
    x, y = data(128)
    history = model.fit(x, y, epochs=4, batch_size=16, verbose=0,
                        callbacks=[keras_lk.SparsityTarget(
                            0.5, structure="units")])
    assert live(model) == {"pixels": 1, "conv": 4, "hidden": 16, "head": 3}
    assert history.history["sparsity"][-1] == 0.5
    small = keras_lk.strip(model, shrink=True)
    np.testing.assert_allclose(small.predict(x, verbose=0),
                               model.predict(x, verbose=0), atol=1e-5)
    assert keras_lk.macs(small) == keras_lk.macs(model, live=True)


@pytest.mark.parametrize("target_macs", (
    0.5, pytest.param(0.75, marks=pytest.mark.slow)))
def test_a_macs_target_removes_at_least_that_share(target_macs):
    model = compiled(conv_model(units=32), k=0.5)
    x, y = data(128)
    dense = keras_lk.macs(model)
    history = model.fit(x, y, epochs=4, batch_size=16, verbose=0,
                        callbacks=[keras_lk.SparsityTarget(
                            structure="units", target_macs=target_macs)])
    left = keras_lk.macs(model, live=True) / dense
    assert left <= 1 - target_macs
    # The smallest uniform fraction that gets there: not far below.
    assert left > 1 - target_macs - 0.15
    assert history.history["live_macs_frac"][-1] == pytest.approx(left)
    assert keras_lk.macs(keras_lk.shrink(model)) / dense == pytest.approx(left)


def test_the_schedule_caps_the_zero_units_at_every_epoch():
    model = compiled(conv_model(units=32), k=1.0, alpha=50.0)
    x, y = data(128)
    # A strength that alone would zero every unit in a few steps.
    history = model.fit(x, y, epochs=4, batch_size=16, verbose=0,
                        callbacks=[keras_lk.SparsityTarget(
                            0.25, structure="units")])
    for got, scheduled in zip(history.history["sparsity"],
                              history.history["sparsity_target"]):
        assert got <= scheduled + 1e-6
    assert live(model)["hidden"] == 24


@pytest.mark.slow
def test_a_new_unit_target_per_fit_and_after_a_raising_fit(tmp_path):
    model = compiled(conv_model(units=32), k=1.0)
    x, y = data(128)

    class Boom(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch == 2:
                raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        model.fit(x, y, epochs=2, batch_size=16, verbose=0, callbacks=[
            keras_lk.SparsityTarget(0.5, structure="units"), Boom()])
    # After the raising fit, the controller leaves the step: plain group
    # proximal steps at alpha = 1e-3 zero nothing more.
    before = live(model)
    model.fit(x, y, epochs=1, batch_size=16, verbose=0)
    assert live(model) == before
    for target in (0.25, 0.5):
        model.fit(x, y, epochs=2, batch_size=16, verbose=0,
                  callbacks=[keras_lk.SparsityTarget(
                      target, structure="units",
                      log_dir=str(tmp_path / "logs"))])
        assert live(model)["hidden"] == round(32 * (1 - target))


@pytest.mark.slow
def test_jit_compile_gives_the_same_units():
    x, y = data(128)
    results = []
    for jit in (False, True):
        keras.utils.set_random_seed(1)
        model = compiled(conv_model(units=32), k=0.5, jit_compile=jit)
        model.fit(x, y, epochs=2, batch_size=16, verbose=0, shuffle=False,
                  callbacks=[keras_lk.SparsityTarget(0.5, structure="units")])
        results.append(live(model))
        keras.backend.clear_session(free_memory=False)
    assert results[0] == results[1]


def test_unit_target_says_what_is_wrong():
    x, y = data(32)
    model = conv_model()
    model.compile(keras_lk.ProximalOptimizer(keras.optimizers.SGD(0.05)),
                  "mse")
    with pytest.raises(ValueError, match="carry none. Attach it"):
        model.fit(x, y, epochs=1, verbose=0, callbacks=[
            keras_lk.SparsityTarget(0.5, structure="units")])
    model = conv_model()
    model.compile(keras_lk.ProximalOptimizer(keras.optimizers.SGD(0.05)),
                  "mse")
    model.fit(x, y, epochs=1, verbose=0)
    attach_units(model)
    with pytest.raises(ValueError, match="Compile the model again"):
        model.fit(x, y, epochs=1, verbose=0, callbacks=[
            keras_lk.SparsityTarget(0.5, structure="units")])
    model = conv_model()
    keras_lk.attach(model, keras_lk.LkRegularizer(1.0, 0.1),
                    structure="units")
    model.compile(keras_lk.ProximalOptimizer(keras.optimizers.SGD(0.05)),
                  "mse")
    with pytest.raises(ValueError, match="with proximal=False"):
        model.fit(x, y, epochs=1, verbose=0, callbacks=[
            keras_lk.SparsityTarget(0.5, structure="units")])
    model = compiled(conv_model(), k=2.0)
    with pytest.raises(ValueError, match="needs k <= 1"):
        model.fit(x, y, epochs=1, verbose=0, callbacks=[
            keras_lk.SparsityTarget(0.5, structure="units")])
    with pytest.raises(ValueError, match="needs structure='units'"):
        keras_lk.SparsityTarget(target_macs=0.5)
    with pytest.raises(ValueError, match="not both"):
        keras_lk.SparsityTarget(0.5, structure="units", target_macs=0.5)
    with pytest.raises(ValueError, match="argument `allocation`"):
        keras_lk.SparsityTarget(0.5, structure="units",
                                allocation="normalized")
    with pytest.raises(ValueError, match="argument `allocation`"):
        keras_lk.SparsityTarget(0.5, allocation="adaptive")
    with pytest.raises(ValueError, match="argument `structure`"):
        keras_lk.SparsityTarget(0.5, structure="channels")
    with pytest.raises(ValueError, match="argument `target_macs`"):
        keras_lk.SparsityTarget(structure="units", target_macs=1.5)
    with pytest.raises(ValueError, match="argument `target`"):
        keras_lk.SparsityTarget()


def test_the_unit_cards_are_written(tmp_path):
    import events
    model = compiled(conv_model(units=32), k=1.0)
    x, y = data(64)
    model.fit(x, y, epochs=2, batch_size=16, verbose=0, callbacks=[
        keras_lk.SparsityTarget(0.5, structure="units",
                                log_dir=str(tmp_path))])
    tags = events.tags(events.read(tmp_path), "train")
    for expected in ("unit_norms/hidden", "live_units/hidden",
                     "sparsity/conv", "live_macs_fraction/(all layers)"):
        assert expected in tags, sorted(tags)


# Keras's PyTorch backend refuses steps_per_execution > 1.
SETUPS = ("mixed_float16", "use_ema", "accumulation") + (
    ("steps_per_execution",) if keras.backend.backend() != "torch" else ())


@pytest.mark.slow
@pytest.mark.parametrize("allocation", ("uniform", "adaptive"))
@pytest.mark.parametrize("setup", SETUPS)
def test_a_unit_target_in_every_training_setup(setup, allocation):
    if setup == "mixed_float16":
        keras.config.set_dtype_policy("mixed_float16")
    inner = keras.optimizers.SGD(
        0.05, use_ema=setup == "use_ema",
        gradient_accumulation_steps=2 if setup == "accumulation" else None)
    model = conv_model(units=32)
    attach_units(model, k=0.5, alpha=1e-3)
    model.compile(keras_lk.ProximalOptimizer(inner),
                  keras.losses.BinaryCrossentropy(from_logits=True),
                  steps_per_execution=2 if setup == "steps_per_execution"
                  else 1)
    if setup == "mixed_float16":
        assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    x, y = data(128)
    model.fit(x, y, epochs=4, batch_size=16, verbose=0, callbacks=[
        keras_lk.SparsityTarget(0.5, structure="units",
                                allocation=allocation)])
    counts = live(model)
    if allocation == "uniform":
        assert counts == {"pixels": 1, "conv": 4, "hidden": 16, "head": 3}
    else:
        assert counts["conv"] + counts["hidden"] == 20, counts
    small = keras_lk.strip(model, shrink=True)
    np.testing.assert_allclose(
        numpy(small.predict(x[:16], verbose=0)).astype("float32"),
        numpy(model.predict(x[:16], verbose=0)).astype("float32"),
        atol=1e-2 if setup == "mixed_float16" else 1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("proximal", (True, False))
def test_the_penalty_share_is_reported(tmp_path, proximal):
    if proximal:
        model = compiled(conv_model(units=32), k=1.0, alpha=1e-2)
    else:
        model = conv_model(units=32)
        keras_lk.attach(model, keras_lk.LkRegularizer(1.0, 1e-2, "sum"),
                        structure="units")
        model.compile(keras.optimizers.SGD(0.05), keras.losses.
                      BinaryCrossentropy(from_logits=True))
    x, y = data(64)
    history = model.fit(x, y, epochs=1, batch_size=16, verbose=0,
                        callbacks=[keras_lk.LkMonitor(tmp_path)])
    expected = float(sum(numpy(l) for l in model.losses))
    assert history.history["reg_loss"][0] > 0
    # The epoch's mean; the weights moved a little since.
    assert history.history["reg_loss"][0] == pytest.approx(expected, rel=0.1)
    assert 0 < history.history["reg_share"][0] < 1


# The gradient mode: `LkRegularizer(k, alpha, proximal=False)` by units.

def expected_penalty_gradient(model, k, alpha):
    """`d/dw alpha * sum_g ||w_g||^k` of every trainable weight, in NumPy
    from the records: `alpha * k * ||w_u||^(k-2) * w` on the slices of unit
    `u`, 0 where `||w_u|| = 0`, summed over the groups a weight is in."""
    squares = {}
    for variable in model.trainable_weights:
        value = numpy(variable).astype("float64")
        for record in getattr(variable.regularizer, "slices", ()):
            axis, positions = record["axis"], np.asarray(record["positions"])
            others = tuple(a for a in range(value.ndim) if a != axis)
            per = np.sum(value ** 2, axis=others) if others else value ** 2
            total = squares.setdefault(record["group"],
                                       np.zeros(record["size"]))
            np.add.at(total, positions[positions >= 0],
                      per[positions >= 0])
    gradients = {}
    for variable in model.trainable_weights:
        value = numpy(variable).astype("float64")
        gradient = np.zeros_like(value)
        for record in getattr(variable.regularizer, "slices", ()):
            s = squares[record["group"]]
            factor = np.where(s > 0, alpha * k * np.where(
                s > 0, s, 1.0) ** (k / 2 - 1), 0.0)
            positions = np.asarray(record["positions"])
            along = np.where(positions >= 0, factor[positions], 0.0)
            shape = [1] * value.ndim
            shape[record["axis"]] = -1
            gradient += along.reshape(shape) * value
        gradients[variable.path] = gradient
    return gradients


def zero_loss(y_true, y_pred):
    return keras.ops.mean(y_pred) * 0.0


@pytest.mark.parametrize("k", (0.5, 1.0, 2.0))
def test_the_gradient_mode_reaches_every_slice_and_is_zero_at_zero(k):
    model = conv_model()
    keras_lk.attach(model, keras_lk.LkRegularizer(k, 0.01, "sum"),
                    structure="units")
    # A unit that is exactly zero in every slice: gradient 0 there, no NaN.
    hidden, head = model.get_layer("hidden"), model.get_layer("head")
    kernel = numpy(hidden.kernel)
    kernel[:, 2] = 0
    hidden.kernel.assign(kernel)
    bias = numpy(hidden.bias)
    bias[2] = 0
    hidden.bias.assign(bias)
    rows = numpy(head.kernel)
    rows[2] = 0
    head.kernel.assign(rows)
    total = float(sum(numpy(loss) for loss in model.losses))
    expected = sum(0.01 * np.sum(g.norms(2) ** k)
                   for g in keras_lk.unit_groups(model) if g.removable)
    np.testing.assert_allclose(total, expected, rtol=1e-5)
    gradients = expected_penalty_gradient(model, k, 0.01)
    before = {v.path: numpy(v).astype("float64")
              for v in model.trainable_weights}
    # One plain SGD step on the penalty alone (the data loss is 0).
    model.compile(keras.optimizers.SGD(0.5), zero_loss)
    x, y = data(8)
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    for variable in model.trainable_weights:
        after = numpy(variable).astype("float64")
        assert np.all(np.isfinite(after)), variable.path
        np.testing.assert_allclose(
            after, before[variable.path] - 0.5 * gradients[variable.path],
            rtol=2e-4, atol=1e-6, err_msg=variable.path)
    assert not np.any(numpy(hidden.kernel)[:, 2])


@pytest.mark.slow
def test_the_gradient_mode_trains_with_any_optimizer_and_saves(tmp_path):
    model = conv_model()
    keras_lk.attach(model, keras_lk.LkRegularizer(0.5, 0.02, "sum"),
                    structure="units")
    regularizer = model.get_layer("hidden").kernel.regularizer
    assert regularizer.get_config()["proximal"] is False
    assert "proximal=False" in repr(regularizer)
    model.compile(keras.optimizers.Adam(0.01), "binary_crossentropy",
                  jit_compile=True)
    x, y = data()
    history = model.fit(x, y, epochs=3, batch_size=16, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    norms = keras_lk.unit_groups(model)
    assert all(np.all(np.isfinite(g.norms(2))) for g in norms)

    path = os.path.join(tmp_path, "gradient.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    loaded_regularizer = loaded.get_layer("hidden").kernel.regularizer
    assert not loaded_regularizer.proximal
    # Loaded, the penalty cannot read its groups (the links are not
    # saved): it says how to link them, and attach links them.
    loaded.compile(keras.optimizers.Adam(0.01), "binary_crossentropy")
    with pytest.raises(ValueError, match="Attach the penalty again"):
        loaded.fit(x, y, epochs=1, batch_size=16, verbose=0)
    keras_lk.attach(loaded, keras_lk.LkRegularizer(0.5, 0.02, "sum"),
                    structure="units")
    loaded.compile(keras_lk.ProximalOptimizer(keras.optimizers.Adam(0.01)),
                   "binary_crossentropy")
    loaded.fit(x, y, epochs=1, batch_size=16, verbose=0)
    assert loaded.optimizer.unit_plan is None  # no group proximal step
    total = float(sum(numpy(loss) for loss in loaded.losses))
    expected = sum(0.02 * np.sum(g.norms(2) ** 0.5)
                   for g in keras_lk.unit_groups(loaded) if g.removable)
    np.testing.assert_allclose(total, expected, rtol=1e-5)


def test_the_gradient_mode_refuses_k_zero():
    with pytest.raises(ValueError, match="k=0, proximal=False"):
        keras_lk.GroupLkRegularizer(0, 0.1, proximal=False)
    with pytest.raises(ValueError, match="`proximal`"):
        keras_lk.GroupLkRegularizer(1, 0.1, proximal="no")


# Allocation across groups: one ranking of all the covered units.

def test_lamp_scores_and_unit_weights():
    from keras_lk.sparsity.ranking import lamp, unit_weights
    norms = np.array([3.0, 1.0, 0.0, 2.0], "float32")
    # Squares 9, 1, 0, 4: each over the sum of those at least as large.
    np.testing.assert_allclose(numpy(lamp(norms)),
                               [1.0, 1 / 14, 0.0, 4 / 13], rtol=1e-6)
    model = conv_model(units=32)
    attach_units(model)
    plan = UnitPlan.build(model.trainable_variables)
    weights = {g.name: unit_weights(g) for g in plan.groups}
    # A conv channel: its 3x3 kernel, its bias, BN's gamma and beta, and
    # its 36 rows of the hidden kernel (6 x 6 positions x 32 columns).
    assert weights["conv"] == 9 + 1 + 2 + 36 * 32
    # A hidden unit: its column (288 rows), its bias, its row of the head.
    assert weights["hidden"] == 288 + 1 + 3


@pytest.mark.parametrize("allocation,k", [
    ("global", 0.0), ("adaptive", 0.0),
    pytest.param("global", 1.0, marks=pytest.mark.slow),
    pytest.param("adaptive", 0.5, marks=pytest.mark.slow)])
def test_a_ranked_unit_target_is_reached_exactly_and_shrinks(allocation, k):
    model = compiled(conv_model(units=32), k=k)
    x, y = data(128)
    history = model.fit(x, y, epochs=4, batch_size=16, verbose=0,
                        callbacks=[keras_lk.SparsityTarget(
                            0.5, structure="units", allocation=allocation)])
    counts = live(model)
    # 20 of the 40 units of `conv` and `hidden`, wherever they are, and
    # each keeps at least one.
    assert counts["conv"] + counts["hidden"] == 20, counts
    assert counts["conv"] >= 1 and counts["hidden"] >= 1
    assert history.history["sparsity"][-1] == 0.5
    for got, scheduled in zip(history.history["sparsity"],
                              history.history["sparsity_target"]):
        assert got <= scheduled + 1e-6
    small = keras_lk.strip(model, shrink=True)
    np.testing.assert_allclose(small.predict(x, verbose=0),
                               model.predict(x, verbose=0), atol=1e-5)


def ranked_fit(allocation, scale):
    """The conv model, its hidden units' weights times `scale`, after a
    short fit toward 25% of its units (at a rate that barely moves them)."""
    keras.utils.set_random_seed(3)
    model = conv_model(units=32)
    for layer, names in (("hidden", ("kernel", "bias")), ("head", ("kernel",))):
        for name in names:
            variable = getattr(model.get_layer(layer), name)
            variable.assign(numpy(variable) * scale)
    attach_units(model, k=0.0, alpha=1e-3)
    model.compile(keras_lk.ProximalOptimizer(keras.optimizers.SGD(1e-5)),
                  keras.losses.BinaryCrossentropy(from_logits=True))
    x, y = data(64)
    model.fit(x, y, epochs=2, batch_size=16, verbose=0, shuffle=False,
              callbacks=[keras_lk.SparsityTarget(0.25, structure="units",
                                                 allocation=allocation)])
    return {g.name: tuple(np.flatnonzero(g.norms(2)))
            for g in keras_lk.unit_groups(model) if g.removable}


@pytest.mark.slow
def test_global_ranks_by_size_and_adaptive_without_scale():
    # The hidden units 100x smaller: every unit "global" removes is theirs.
    small = ranked_fit("global", 0.01)
    assert len(small["conv"]) == 8 and len(small["hidden"]) == 22
    # At their own size, some conv channels go too.
    assert len(ranked_fit("global", 1.0)["conv"]) < 8
    # LAMP scores have no scale: the same units go either way.
    adaptive = ranked_fit("adaptive", 1.0)
    assert ranked_fit("adaptive", 0.01) == adaptive
    assert len(adaptive["conv"]) + len(adaptive["hidden"]) == 30


def test_the_macs_are_a_polynomial_of_the_units_kept():
    from keras_lk.structure.analysis import analyze
    from keras_lk.structure.macs import MacsByCounts, total_macs
    from keras_lk.structure.groups import build_groups
    model = conv_model(units=32)
    analysis = analyze(model)
    groups = [g for g in build_groups(analysis) if g.removable]
    polynomial = MacsByCounts(analysis, groups)
    polynomial.check(trials=8)
    rng = np.random.default_rng(1)
    for _ in range(5):
        removed = [int(rng.integers(0, g.size)) for g in groups]
        dead = {g._root: set(rng.choice(g.size, r, replace=False).tolist())
                for g, r in zip(groups, removed) if r}
        left = total_macs(analysis, dead) / polynomial.dense
        assert polynomial.fraction_removed(removed) == pytest.approx(
            1 - left, abs=1e-9)
    # Where the count were not a polynomial of the units kept (no layer
    # keras_lk can rebuild is such today), `check` says so.
    polynomial.quadratic[0, 1] += 1e-3
    with pytest.raises(ValueError, match="allocation='uniform'"):
        polynomial.check()


@pytest.mark.parametrize("allocation", (
    "global", pytest.param("adaptive", marks=pytest.mark.slow)))
def test_a_ranked_macs_target_removes_at_least_that_share(
        allocation, tmp_path):
    import events
    model = compiled(conv_model(units=32), k=0.0)
    x, y = data(128)
    dense = keras_lk.macs(model)
    history = model.fit(x, y, epochs=4, batch_size=16, verbose=0,
                        callbacks=[keras_lk.SparsityTarget(
                            structure="units", target_macs=0.5,
                            allocation=allocation, log_dir=str(tmp_path))])
    left = keras_lk.macs(model, live=True) / dense
    assert left <= 0.5
    # The fewest units that get there, in the ranking's order: close.
    assert left > 0.4
    # While it steers, no more than the schedule is removed; the lock
    # (end_step: 3/4 of the fit) removes at least the target.
    steered = list(zip(history.history["live_macs_frac"],
                       history.history["live_macs_frac_target"]))[:2]
    for got, scheduled in steered:
        assert got >= scheduled - 1e-6, history.history
    assert history.history["live_macs_frac_target"][-1] == pytest.approx(0.5)
    assert min(live(model).values()) >= 1
    small = keras_lk.strip(model, shrink=True)
    assert keras_lk.macs(small) / dense == pytest.approx(left)
    np.testing.assert_allclose(small.predict(x, verbose=0),
                               model.predict(x, verbose=0), atol=1e-5)
    written = events.tags(events.read(tmp_path), "train")
    assert "live_macs_fraction_target/(all layers)" in written
    assert "sparsity_target/conv" not in written
