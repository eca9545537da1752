"""One sparsity engine: one prox, one strength, one control law, one
state layout, and the optimizer's hook (keras_lk/penalties and
keras_lk/sparsity)."""

import warnings

import keras
import numpy as np
import pytest

import keras_lk
from keras_lk.penalties.plan import PenaltyGroup
from keras_lk.penalties.regularizers import proximal_strength
from keras_lk.sparsity import control, state as state_module


@pytest.mark.parametrize("k", [0.0, 0.5, 2 / 3, 0.8, 1.0, 1.5, 2.0])
def test_the_scalar_prox_is_the_group_prox_of_one_weight(k):
    values = np.array([-2.0, -0.7, -0.05, 0.0, 0.03, 0.4, 1.3, 3.0])
    for t in (0.01, 0.2, 1.0):
        scalar = np.asarray(keras_lk.prox(values, t, k))
        group = np.array([np.asarray(keras_lk.group_prox(
            np.array([v]), t, k))[0] for v in values])
        np.testing.assert_allclose(group, scalar, rtol=1e-6, atol=1e-7)
        # The zeros are the same zeros.
        assert ((group == 0) == (scalar == 0)).all()


def test_one_strength_for_the_lk_and_the_group_penalty():
    for reduction in ("mean", "sum"):
        lk = keras_lk.LkRegularizer(1.0, 0.3, reduction, proximal=True)
        group = PenaltyGroup("g", 12, 1.0, 0.3, reduction, [])
        expected = 0.1 * 0.3 / (12 if reduction == "mean" else 1)
        assert float(lk.proximal_strength(0.1, 12)) == pytest.approx(
            expected)
        assert float(group.strength(0.1)) == pytest.approx(expected)
    # k = inf: alpha * max|w|, whatever the reduction.
    assert proximal_strength(0.1, 2.0, "mean", 50, float("inf")) == (
        pytest.approx(0.2))


def test_the_defaults_of_the_two_penalties():
    lk, group = keras_lk.LkRegularizer(), keras_lk.GroupLkRegularizer()
    assert (lk.alpha, lk.reduction) == (group.alpha, group.reduction)
    # Documented differences: the group lasso's k, and proximal for files
    # saved before the gradient mode.
    assert (group.k, group.proximal) == (1.0, True)
    assert "on\n    purpose" in keras_lk.GroupLkRegularizer.__doc__


def test_the_law_moves_by_a_bounded_step_and_never_lowers_a_threshold():
    def moved(log_scale, scheduled, zeros):
        return float(control.moved_log_scale(*(
            keras.ops.convert_to_tensor(v, "float32")
            for v in (log_scale, scheduled, zeros))))

    up, down = moved(1.0, 0.9, 0.0), moved(1.0, 0.0, 0.9)
    assert up == pytest.approx(1.0 + control.MAX_MOVE)
    assert down == pytest.approx(1.0 - control.MAX_MOVE)
    assert moved(1.0, 0.51, 0.5) == pytest.approx(
        1.0 + control.GAIN * 0.01, rel=1e-4)
    assert moved(control.MAX_LOG_SCALE, 1.0, 0.0) == control.MAX_LOG_SCALE
    values = np.array([0.1, 0.4, 0.2, 0.3], "float32")
    assert float(control.quantile(values, 0.5)) == pytest.approx(0.2)
    assert float(control.quantile(values, 0.0)) == 0.0
    assert float(control.raised_threshold(np.float32(0.35), values, 0.5)) \
        == pytest.approx(0.35)
    assert float(control.raised_threshold(np.float32(0.1), values, 0.75)) \
        == pytest.approx(0.3)


def test_one_state_layout_with_named_fields():
    model = keras.Sequential([
        keras.Input((4,)), keras.layers.Dense(3, name="hidden"),
        keras.layers.Dense(3, name="mid"), keras.layers.Dense(
            2, kernel_regularizer=keras_lk.LkRegularizer(
                1, 0.1, proximal=True), name="out")])
    keras_lk.attach(model, keras_lk.LkRegularizer(0, 0.1, proximal=True),
                    structure="units", names=["hidden"])
    optimizer = keras_lk.ProximalOptimizer(keras.optimizers.SGD(0.1))
    model.compile(optimizer, "mse")
    optimizer.build(model.trainable_variables)
    state = optimizer.state("sparsity")
    assert isinstance(state, state_module.SparsityState)
    entries = list(state.weights.values()) + state.units
    assert entries and all(
        tuple(e.vector.shape) == (len(state_module.FIELDS),)
        for e in entries)
    entry = state.units[0]
    entry.reset(np.ones(entry.mask.shape, bool), keep=2.0, target=0.5)
    assert float(entry.keep) == 2.0 and float(entry.target) == 0.5
    assert float(entry.log_scale) == 0.0
    with pytest.raises(ValueError, match="Unknown state fields"):
        entry.reset(np.ones(entry.mask.shape, bool), kept=1.0)
    assert optimizer.state("nothing") is None


def test_the_optimizer_hook_refuses_what_cannot_steer():
    optimizer = keras_lk.ProximalOptimizer(keras.optimizers.SGD(0.1))
    with pytest.raises(ValueError, match="steering.*Received: steering=42"):
        optimizer.steer("weights", 42)
    with pytest.raises(ValueError, match="kind.*Received: kind='layers'"):
        optimizer.steer("layers", None)
    optimizer.steer("units", None)
    assert optimizer.steering == {"units": None}


def test_a_units_steering_made_for_another_plan_does_not_step():
    # attach or detach during a fit makes a new plan: a steering made for
    # the old one must not assign its values to the new plan's weights.
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(
        6, name="hidden"), keras.layers.Dense(2, name="out")])
    keras_lk.attach(model, keras_lk.LkRegularizer(1, 0.1, proximal=True),
                    structure="units")
    optimizer = keras_lk.ProximalOptimizer(keras.optimizers.SGD(0.1))
    model.compile(optimizer, "mse")
    x = np.random.default_rng(0).normal(size=(16, 4)).astype("float32")
    model.fit(x, x[:, :2], epochs=1, verbose=0)

    class Stale:
        plan = object()

        def step(self, *args):
            raise AssertionError("a steering of another plan stepped")

    optimizer.steer("units", Stale())
    model.make_train_function(force=True)
    before = model.get_layer("hidden").kernel.numpy()
    model.fit(x, x[:, :2], epochs=1, verbose=0)
    assert not np.array_equal(before, model.get_layer("hidden").kernel.numpy())


def test_a_target_on_weights_and_one_on_units_in_one_fit():
    model = keras.Sequential([
        keras.Input((8,)), keras.layers.Dense(12, name="hidden"),
        keras.layers.Dense(6, name="mid"), keras.layers.Dense(
            3, name="out", kernel_regularizer=keras_lk.LkRegularizer(
                1, 0.1, proximal=True))])
    keras_lk.attach(model, keras_lk.LkRegularizer(0, 0.1, proximal=True),
                    structure="units", names=["hidden"])
    model.compile(keras_lk.ProximalOptimizer(keras.optimizers.SGD(0.05)),
                  "mse")
    x = np.random.default_rng(1).normal(size=(64, 8)).astype("float32")
    model.fit(x, x[:, :3], epochs=4, batch_size=8, verbose=0, callbacks=[
        keras_lk.SparsityTarget(0.5),
        keras_lk.SparsityTarget(0.5, structure="units")])
    out = model.get_layer("out").kernel.numpy()
    assert int((out == 0).sum()) == round(0.5 * out.size)
    hidden = model.get_layer("hidden").kernel.numpy()
    assert int((np.abs(hidden).sum(axis=0) == 0).sum()) == 6


def test_target_flops_is_target_macs_and_warns_once(monkeypatch):
    from keras_lk.sparsity import target as target_module

    monkeypatch.setattr(target_module, "_warned_flops", [])
    with pytest.raises(ValueError, match="target"):
        keras_lk.SparsityTarget(structure="units", target_flops=2.0)
    # A call that raises does not use up the one warning.
    with pytest.warns(DeprecationWarning, match="target_macs"):
        old = keras_lk.SparsityTarget(structure="units", target_flops=0.4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = keras_lk.SparsityTarget(structure="units", target_flops=0.3)
    new = keras_lk.SparsityTarget(structure="units", target_macs=0.4)
    assert old.target_macs == new.target_macs == old.target_flops == 0.4
    assert again.target_macs == 0.3
    again.target_flops = 0.2
    assert again.target_macs == 0.2
    with pytest.raises(ValueError, match="old name of target_macs"):
        keras_lk.SparsityTarget(structure="units", target_macs=0.4,
                                target_flops=0.4)
    with pytest.raises(ValueError, match="needs structure='units'"):
        keras_lk.SparsityTarget(target_macs=0.4)


def _proximal_model(optimizer):
    """A small model whose first kernel carries a proximal L1 penalty."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(
        5, name="h", kernel_regularizer=keras_lk.LkRegularizer(
            1, 0.1, proximal=True)), keras.layers.Dense(2, name="o")])
    model.compile(keras_lk.ProximalOptimizer(optimizer), "mse")
    return model


def test_a_file_with_state_of_another_layout_loads_the_rest(
        tmp_path, monkeypatch):
    # A file saved by a keras_lk whose SparsityTarget state had another
    # layout (here: four fields): the weights and Adam's moments load,
    # the state starts afresh with a warning, and a target still trains.
    x = np.random.default_rng(0).normal(size=(64, 6)).astype("float32")

    with monkeypatch.context() as patch:
        patch.setattr(state_module, "FIELDS", state_module.FIELDS[:4])
        saved = _proximal_model(keras.optimizers.Adam(0.01))
        saved.fit(x, x[:, :2], epochs=2, verbose=0)
    path = tmp_path / "earlier.keras"
    saved.save(path)
    with pytest.warns(UserWarning, match="sparsity_state"):
        loaded = keras.saving.load_model(path)
    inner = loaded.optimizer.inner_optimizer.variables
    for old, new in zip(saved.optimizer.inner_optimizer.variables, inner):
        np.testing.assert_array_equal(old.numpy(), new.numpy())
    assert any(float(np.abs(v.numpy()).sum()) > 0 for v in inner[2:])
    loaded.fit(x, x[:, :2], epochs=4, batch_size=8, verbose=0,
               callbacks=[keras_lk.SparsityTarget(0.6)])
    kernel = loaded.get_layer("h").kernel.numpy()
    assert int((kernel == 0).sum()) == round(0.6 * kernel.size)


def test_a_run_saved_in_another_layout_starts_afresh_on_resuming(
        tmp_path, monkeypatch):
    # Saved mid-run by a keras_lk whose state had another layout (here a
    # seventh field): resuming at a later epoch must not read the fresh
    # (zero) state as the saved run's, but start a new run.
    x = np.random.default_rng(0).normal(size=(64, 6)).astype("float32")

    path = tmp_path / "mid_run.keras"
    with monkeypatch.context() as patch:
        patch.setattr(state_module, "FIELDS",
                      state_module.FIELDS + ("extra",))
        class SaveMidRun(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                if epoch == 1:
                    self.model.save(path)

        saved = _proximal_model(keras.optimizers.SGD(0.05))
        saved.fit(x, x[:, :2], epochs=4, batch_size=8, verbose=0,
                  callbacks=[keras_lk.SparsityTarget(0.6, end_step=30),
                             SaveMidRun()])
    with pytest.warns(UserWarning, match="sparsity_state"):
        loaded = keras.saving.load_model(path)
    loaded.fit(x, x[:, :2], initial_epoch=2, epochs=6, batch_size=8,
               verbose=0, callbacks=[keras_lk.SparsityTarget(
                   0.6, end_step=30)])
    kernel = loaded.get_layer("h").kernel
    assert np.isfinite(kernel.numpy()).all()
    assert int((kernel.numpy() == 0).sum()) == round(0.6 * kernel.numpy().size)
    # A fresh run: the weight's scale was set (a resumed zero state has 0).
    entry = loaded.optimizer.state("sparsity").of(kernel)
    assert float(entry.scale) == 1.0
