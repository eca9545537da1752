"""What keras_lk promises on every Keras backend, in code that names no
backend: the penalty and its gradients, `prox`, training with the penalty,
saving, `attach`/`detach` (attention included), `sparsity`, `strip`, and a
clear error from each feature that needs a backend keras_lk trains on.

These tests run here on the backend of the suite (TensorFlow) and again
under KERAS_BACKEND=jax and KERAS_BACKEND=torch, each in a subprocess
(`test_backends.py`)."""

import math
import os
import warnings

import keras
import numpy as np
import pytest
from keras import ops

import keras_lk
from keras_lk import LkRegularizer, lk_penalty, prox

BACKEND = keras.backend.backend()


def gradient(function, value):
    """d function / d value, with the backend's own autodiff."""
    value = np.asarray(value, "float32")
    if BACKEND == "tensorflow":
        import tensorflow as tf
        variable = tf.Variable(value)
        with tf.GradientTape() as tape:
            result = function(variable)
        return tape.gradient(result, variable).numpy()
    if BACKEND == "jax":
        import jax
        return np.asarray(jax.grad(function)(jax.numpy.asarray(value)))
    if BACKEND == "torch":
        import torch
        tensor = torch.tensor(value, requires_grad=True)
        function(tensor).backward()
        return tensor.grad.numpy()
    raise AssertionError(f"no gradient helper for backend {BACKEND!r}")


def test_the_backend_is_the_one_asked_for():
    assert BACKEND == os.environ.get("KERAS_BACKEND", "tensorflow")


W = np.array([[0.0, -0.5, 2.0], [1e-30, 0.25, -3.0]], "float32")


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("k", [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, math.inf])
def test_the_penalty_is_numpys(k, reduction):
    magnitude = np.abs(W.astype("float64"))
    if k == math.inf:
        expected = 0.3 * magnitude.max()
    else:
        terms = (magnitude != 0).astype("float64") if k == 0 else (
            magnitude ** k)
        expected = 0.3 * (terms.mean() if reduction == "mean" else
                          terms.sum())
    got = float(lk_penalty(ops.convert_to_tensor(W), k, 0.3, reduction))
    assert got == pytest.approx(expected, rel=1e-5)
    regularizer = LkRegularizer(k=k, alpha=0.3, reduction=reduction,
                                proximal=k == 0)
    if k != 0:  # a proximal regularizer's call needs TensorFlow today
        assert float(regularizer(ops.convert_to_tensor(W))) == (
            pytest.approx(expected, rel=1e-5))


@pytest.mark.parametrize("k", [0.5, 1.0, 1.5, 3.0])
def test_gradients_are_exact_and_zero_at_zero(k):
    regularizer = LkRegularizer(k=k, alpha=0.3)
    got = gradient(lambda w: regularizer(w), W)
    w = W.astype("float64")
    with np.errstate(divide="ignore", invalid="ignore"):
        expected = np.where(w == 0, 0.0, 0.3 * k * np.abs(w) ** (k - 1)
                            * np.sign(w) / w.size)
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-12)
    assert got[0, 0] == 0.0


@pytest.mark.parametrize("k", [0.0, 0.5, 1.0, 1.5])
def test_prox_minimizes_the_proximal_objective(k):
    w = np.linspace(-2.0, 2.0, 41).astype("float32")
    t = 0.3
    got = np.asarray(ops.convert_to_numpy(prox(w, t, k)), "float64")
    grid = np.linspace(-2.5, 2.5, 200001)
    penalty = (grid != 0).astype("float64") if k == 0 else np.abs(grid) ** k
    for value, x in zip(w.astype("float64"), got):
        objective = 0.5 * (grid - value) ** 2 + t * penalty
        best = objective.min()
        own = 0.5 * (x - value) ** 2 + t * (
            float(x != 0) if k == 0 else abs(x) ** k)
        assert own <= best + 1e-4, (k, value, x, grid[objective.argmin()])


def model_with(regularizer, units=3):
    return keras.Sequential([
        keras.Input((6,)),
        keras.layers.Dense(8, "relu", name="hidden",
                           kernel_regularizer=regularizer),
        keras.layers.Dense(units, name="head",
                           kernel_regularizer=regularizer)])


def test_a_gradient_penalty_trains_from_zeros_and_is_in_the_loss(tmp_path):
    regularizer = LkRegularizer(k=0.5, alpha=0.1)
    model = model_with(regularizer)
    model.get_layer("hidden").kernel.assign(np.zeros((6, 8)))
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((64, 6)), rng.standard_normal((64, 3))
    model.compile(keras.optimizers.SGD(0.05), "mse")
    history = model.fit(x, y, batch_size=16, epochs=3, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    kernels = [model.get_layer(n).kernel.numpy() for n in ("hidden", "head")]
    expected = sum(0.1 * np.mean(np.sqrt(np.abs(k))) for k in kernels)
    assert float(sum(model.losses)) == pytest.approx(expected, rel=1e-5)
    # Saved and loaded with no custom_objects, penalty included.
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    assert loaded.get_layer("head").kernel_regularizer.get_config() == (
        regularizer.get_config())
    assert float(sum(loaded.losses)) == pytest.approx(expected, rel=1e-5)


def test_attach_reaches_attention_projections_and_detach_removes_them():
    tokens = keras.Input((5,), dtype="int32")
    x = keras.layers.Embedding(20, 8, name="embed")(tokens)
    x = keras.layers.MultiHeadAttention(2, 4, name="mha")(x, x)
    model = keras.Model(tokens, keras.layers.Dense(2, name="out")(
        keras.layers.GlobalAveragePooling1D()(x)))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        layers = keras_lk.attach(model, LkRegularizer(k=1, alpha=0.5),
                                 layer_types=keras.layers.EinsumDense)
    assert [layer.name for layer in layers] == [
        "query", "key", "value", "attention_output"]
    assert any("does not record it" in str(w.message) for w in caught)
    expected = sum(0.5 * np.mean(np.abs(layer.kernel.numpy()))
                   for layer in layers)
    assert float(sum(model.losses)) == pytest.approx(expected, rel=1e-5)
    assert keras_lk.detach(model, layer_types=keras.layers.EinsumDense) == (
        layers)
    assert model.losses == []


def test_sparsity_counts_exact_zeros_and_strip_copies_them():
    model = model_with(LkRegularizer(k=1, alpha=0.1))
    kernel = model.get_layer("hidden").kernel
    kernel.assign(np.where(np.arange(48).reshape(6, 8) % 3 == 0, 0.0,
                           kernel.numpy()))
    report = keras_lk.sparsity(model)
    assert report["layers"]["hidden"] == {"zeros": 16, "size": 48,
                                          "fraction": pytest.approx(1 / 3)}
    assert report["total"]["zeros"] == 16 + int(np.sum(
        model.get_layer("head").kernel.numpy() == 0))
    plain = keras_lk.strip(model)
    assert plain.get_layer("hidden").kernel_regularizer is None
    x = np.random.default_rng(1).standard_normal((4, 6)).astype("float32")
    np.testing.assert_allclose(ops.convert_to_numpy(plain(x)),
                               ops.convert_to_numpy(model(x)), rtol=1e-6)
    assert keras_lk.sparsity(plain)["total"] == report["total"]


def numpy_prox(w, t, k):
    """NumPy closed forms for k = 0 and 1; keras_lk's own `prox` (checked
    against a brute-force grid above) for the others."""
    if k == 0:
        return np.where(w * w > 2 * t, w, 0.0)
    if k == 1:
        return np.sign(w) * np.maximum(np.abs(w) - t, 0.0)
    return np.asarray(ops.convert_to_numpy(prox(w.astype("float32"), t, k)),
                      "float64")


# alpha per k: a strength that zeroes part of the kernel within 3 steps.
ALPHAS = {0.0: 8.0, 0.5: 15.0, 1.0: 40.0, 1.5: 8.0, math.inf: 1.5}


@pytest.mark.parametrize("accumulate", [None, 2])
@pytest.mark.parametrize("k", sorted(ALPHAS))
def test_proximal_training_is_numpys_sgd_then_prox(k, accumulate):
    """Full-batch fits of a linear layer under ProximalOptimizer(SGD) with a
    decaying learning rate, against the same steps in NumPy: the gradient
    step, then `prox(w, lr_i * alpha / n, k)` (k = inf: `lr_i * alpha`).
    With gradient accumulation every second step is the real update, and
    the proximal step runs with it, at its learning rate."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((32, 6)).astype("float32")
    y = rng.standard_normal((32, 4)).astype("float32")
    w0 = rng.standard_normal((6, 4)).astype("float32") * 0.5
    alpha = ALPHAS[k]
    regularizer = LkRegularizer(k=k, alpha=alpha, proximal=True)
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(
        4, use_bias=False, kernel_regularizer=regularizer)])
    model.layers[0].kernel.assign(w0)
    schedule = keras.optimizers.schedules.ExponentialDecay(0.1, 1, 0.8)
    model.compile(keras_lk.ProximalOptimizer(keras.optimizers.SGD(
        schedule, gradient_accumulation_steps=accumulate)), "mse")
    updates = 3
    model.fit(x, y, batch_size=32, epochs=updates * (accumulate or 1),
              shuffle=False, verbose=0)
    w = w0.astype("float64")
    for i in range(updates):
        # Keras evaluates the schedule at its raw step count: the update
        # that ends an accumulation of 2 runs at steps 1, 3, 5.
        rate = 0.1 * 0.8 ** (i if not accumulate else
                             accumulate * i + accumulate - 1)
        w = w - rate * 2.0 * x.T.astype("float64") @ (x @ w - y) / y.size
        t = rate * alpha / (1 if math.isinf(k) else w.size)
        w = numpy_prox(w, t, k)
    got = model.layers[0].kernel.numpy()
    zeros = np.sum(w == 0) if k <= 1 else 0
    if k <= 1:
        assert zeros >= 3, f"the test's alpha zeroes too few: {zeros}"
    np.testing.assert_array_equal(got == 0, w == 0)
    np.testing.assert_allclose(got, w, rtol=2e-4, atol=2e-5)
    # The penalty enters the loss (k = 0: alpha x fraction of nonzeros).
    assert float(sum(model.losses)) == pytest.approx(
        float(lk_penalty(got, k, alpha)), rel=1e-5)


def proximal_fit(setup):
    """A k = 1 proximal fit (2 epochs of 4 steps) in a Keras setup; returns
    the model."""
    policy = keras.config.dtype_policy()
    if setup == "mixed_float16":
        keras.config.set_dtype_policy("mixed_float16")
    try:
        rng = np.random.default_rng(5)
        x = rng.standard_normal((64, 6)).astype("float32")
        y = rng.standard_normal((64, 3)).astype("float32")
        model = model_with(LkRegularizer(k=1, alpha=20.0, proximal=True))
        model.set_weights([rng.standard_normal(w.shape).astype("float32")
                           * 0.4 for w in model.get_weights()])
        inner = keras.optimizers.SGD(0.1, use_ema=setup == "use_ema",
                                     ema_momentum=0.5)
        model.compile(keras_lk.ProximalOptimizer(inner), "mse",
                      jit_compile=setup != "jit_compile=False",
                      steps_per_execution=4 if setup == "steps_per_execution"
                      else 1)
        history = model.fit(x, y, batch_size=16, epochs=2, shuffle=False,
                            verbose=0)
        assert np.all(np.isfinite(history.history["loss"]))
        return model
    finally:
        keras.config.set_dtype_policy(policy)


def kernels(model):
    return [ops.convert_to_numpy(layer.kernel) for layer in model.layers]


@pytest.mark.parametrize("setup", ["steps_per_execution", "jit_compile=False",
                                   "use_ema", "mixed_float16"])
def test_proximal_training_in_keras_setups(setup):
    if setup == "steps_per_execution" and BACKEND == "torch":
        # Keras itself refuses it there, before any step.
        with pytest.raises(ValueError, match="steps_per_execution"):
            proximal_fit(setup)
        return
    reference = kernels(proximal_fit("plain"))
    assert all(np.mean(k == 0) > 0.1 for k in reference)
    model = proximal_fit(setup)
    got = kernels(model)
    if setup in ("steps_per_execution", "jit_compile=False"):
        for ours, theirs in zip(got, reference):  # the same steps
            np.testing.assert_array_equal(ours == 0, theirs == 0)
            np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)
    elif setup == "use_ema":
        # The moving averages replace the weights at the end of fit; the
        # weights training left at exactly 0 stay 0 (an average of
        # earlier nonzero values would not be).
        assert all(np.mean(k == 0) > 0.1 for k in got)
    else:  # float16 compute, float32 weights, loss scaling around the step
        assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
        assert all(np.mean(k == 0) > 0.1 for k in got)
        agree = np.mean(np.concatenate([(a == 0).ravel() == (b == 0).ravel()
                                        for a, b in zip(got, reference)]))
        assert agree > 0.9, agree


def test_proximal_training_saves_loads_and_continues_the_same(tmp_path):
    rng = np.random.default_rng(9)
    x = rng.standard_normal((64, 6)).astype("float32")
    y = rng.standard_normal((64, 3)).astype("float32")
    model = model_with(LkRegularizer(k=0.5, alpha=20.0, proximal=True))
    model.compile(keras_lk.ProximalOptimizer(keras.optimizers.Adam(0.02)),
                  "mse")
    model.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0)
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    assert isinstance(loaded.optimizer, keras_lk.ProximalOptimizer)
    # Adam's moments and the step count came back with the weights.
    for ours, theirs in zip(model.optimizer.variables,
                            loaded.optimizer.variables):
        np.testing.assert_array_equal(ops.convert_to_numpy(ours),
                                      ops.convert_to_numpy(theirs))
    for each in (model, loaded):
        each.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
    for ours, theirs in zip(kernels(model), kernels(loaded)):
        assert np.mean(ours == 0) > 0.1
        np.testing.assert_array_equal(ours == 0, theirs == 0)
        np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-7)


def test_a_proximal_penalty_without_proximal_optimizer_refuses_to_train():
    model = model_with(LkRegularizer(k=1, alpha=0.1, proximal=True))
    model.compile(keras.optimizers.SGD(0.1), "mse")
    x = np.ones((8, 6), "float32")
    with pytest.raises(ValueError, match="no keras_lk.ProximalOptimizer"):
        model.fit(x, np.zeros((8, 3)), verbose=0)


class KernelsAtBatchEnd(keras.callbacks.Callback):
    """Copies of the kernels after every step (reading `self.model` gives
    the running step's weights on JAX too)."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def on_train_batch_end(self, batch, logs=None):
        self.seen.append([ops.convert_to_numpy(layer.kernel)
                          for layer in self.model.layers])


def test_zero_counts_and_histograms_show_the_weights_of_their_step(tmp_path):
    from events import read
    rng = np.random.default_rng(7)
    model = model_with(LkRegularizer(k=1, alpha=30.0, proximal=True))
    model.set_weights([rng.standard_normal(w.shape).astype("float32") * 0.4
                       for w in model.get_weights()])
    model.compile(keras_lk.ProximalOptimizer(keras.optimizers.SGD(0.05)),
                  "mse")
    kernels = KernelsAtBatchEnd()
    # 2 epochs of 4 steps; zero counts every 2 steps, histograms per epoch.
    history = model.fit(
        rng.standard_normal((64, 6)), rng.standard_normal((64, 3)),
        batch_size=16, epochs=2, shuffle=False, verbose=0, callbacks=[
            # The monitors first: no other callback syncs for them.
            keras_lk.ZeroCounts(tmp_path, update_freq=2, tol=0.05),
            keras_lk.AbsWeightHistograms(tmp_path / "h"), kernels])
    events = read(tmp_path)
    counts = events[("train", "zero_count/(all layers)")]
    exact = events[("train", "exact_zero_count/hidden")]
    assert sorted(counts) == [2, 4, 6, 8]  # the optimizer's step
    for step in (2, 4, 6, 8):
        hidden, head = kernels.seen[step - 1]
        assert counts[step] == np.sum(np.abs(hidden) <= 0.05) + np.sum(
            np.abs(head) <= 0.05)
        assert exact[step] == np.sum(hidden == 0)
    # Zeros grow, so a stale read (the weights of an earlier step) differs.
    assert exact[2] < exact[8]
    assert history.history["zero_frac"][-1] == pytest.approx(
        counts[8] / (48 + 24))
    histograms = read(tmp_path / "h")
    for name, kernel in zip(("hidden", "head"), kernels.seen[-1]):
        buckets = histograms[("train", f"abs_weights/{name}/kernel")][1]
        assert buckets[:, 2].sum() == kernel.size
        assert buckets[-1, 1] == pytest.approx(np.abs(kernel).max())
        log_buckets = histograms[("train",
                                  f"log10_abs_weights/{name}/kernel")][1]
        assert log_buckets[0, 2] == np.sum(kernel == 0)


def test_the_packed_pass_gives_each_weights_statistics_and_numpys():
    # The monitors pack many weights into one pass on TensorFlow and JAX:
    # run eagerly on this backend, it gives what the pass over each weight
    # gives, to the bit, and NumPy's counts: zeros, padding (sizes that
    # are not whole rows of 1024), NaN and inf, a weight spanning blocks.
    from keras_lk.monitoring.packed_stats import packed_statistics, unstack
    from keras_lk.monitoring.stats import weight_statistics
    rng = np.random.default_rng(5)
    tensors = [rng.normal(size=shape).astype("float32") * scale
               for shape, scale in [((3, 4), 1.0), ((0,), 1.0),
                                    ((1024,), 0.0), ((600, 1000), 0.1),
                                    ((50, 70), 1e-4)]]
    tensors[0][1, 1] = np.nan
    tensors[3][0, :3] = [np.inf, 0.0, -np.inf]
    stacked = packed_statistics(tensors, 1e-3)
    packed = unstack({key: ops.convert_to_numpy(value)
                      for key, value in stacked.items()})
    for tensor, got in zip(tensors, packed):
        expected = weight_statistics(tensor, 1e-3)
        for key, value in expected.items():
            np.testing.assert_array_equal(got[key], ops.convert_to_numpy(
                value), f"{key} {tensor.shape}")
        finite = np.abs(tensor[np.isfinite(tensor)])
        assert got["near_zeros"] == np.sum(finite <= np.float32(1e-3))
        assert got["exact_zeros"] == np.sum(finite == 0)
        assert got["abs_counts"].sum() == finite.size
        assert (got["nan"], got["inf"]) == (np.isnan(tensor).sum(),
                                             np.isinf(tensor).sum())


def test_what_needs_another_backend_says_so_with_the_backend(tmp_path):
    model = model_with(LkRegularizer(k=1, alpha=0.1, proximal=True))
    trains = ("tensorflow", "jax", "torch")
    # (what the message starts with, how to make it, where it works)
    entries = [
        ("keras_lk.LkMonitor",
         lambda: keras_lk.LkMonitor(tmp_path, step_stats=True), trains),
        ("keras_lk.ZeroCounts",
         lambda: keras_lk.ZeroCounts(tmp_path, step_stats=True), trains),
        ("keras_lk.LkMonitor", lambda: keras_lk.LkMonitor(
            tmp_path, pull_batch=(np.ones((2, 6)), np.ones((2, 3)))),
         trains),
        # The monitors record the penalty (and signs) at every step on JAX
        # (through a host callback) and PyTorch too.
        ("keras_lk.LkMonitor", lambda: keras_lk.LkMonitor(tmp_path),
         trains),
        ("keras_lk.RegularizationShare",
         lambda: keras_lk.RegularizationShare(tmp_path), trains),
        # The proximal step, SparsityTarget, and the monitors that read
        # the weights at each log, run on JAX and PyTorch too.
        ("keras_lk.SparsityTarget",
         lambda: keras_lk.SparsityTarget(0.5), trains),
        ("keras_lk.ZeroCounts", lambda: keras_lk.ZeroCounts(tmp_path),
         trains),
        ("keras_lk.AbsWeightHistograms",
         lambda: keras_lk.AbsWeightHistograms(tmp_path), trains),
        ("keras_lk.ProximalOptimizer", lambda: keras_lk.ProximalOptimizer(
            keras.optimizers.SGD(0.1)), trains),
        ("LkRegularizer(k=1.0, alpha=0.1, reduction='mean', proximal=True) "
         "(proximal=True, applied by keras_lk.ProximalOptimizer)",
         lambda: model.losses, trains),
    ]
    for start, make, backends in entries:
        if BACKEND in backends:
            make()  # built, no error
            continue
        with pytest.raises(NotImplementedError) as raised:
            make()
        message = str(raised.value)
        assert message.startswith(
            f"{start} needs the TensorFlow, JAX or PyTorch backend;"), message
        assert f"runs on {BACKEND!r}" in message
        assert "KERAS_BACKEND=tensorflow" in message


def test_keras_lk_sweep_runs(tmp_path, capsys):
    from tbparse import SummaryReader

    from keras_lk.study import cli
    logdir = tmp_path / "sweep"
    assert cli.main(["sweep", "--logdir", str(logdir), "--targets", "0.5",
                     "--seeds", "0", "--epochs", "2", "--methods",
                     "L0_proximal", "magnitude"]) == 0
    assert "[3/3]" in capsys.readouterr().out
    for run in ("L0_proximal_t0.5_seed0", "magnitude_t0.5_seed0"):
        scalars = SummaryReader(str(logdir / run)).tensors
        values = dict(zip(scalars["tag"], scalars["value"]))
        assert float(values["sparsity"]) == pytest.approx(0.5, abs=0.01)
        assert float(values["test_accuracy"]) > 0.5, run  # chance: 0.1


@pytest.mark.slow
def test_keras_lk_demo_report_and_plot_run(tmp_path, capsys):
    # Every setting, a table and the charts, on each backend (test_cli.py
    # checks the demo's logs in detail on TensorFlow).
    from keras_lk.study import cli, report
    from keras_lk.study import runs as study_runs
    assert cli.main(["demo", "--logdir", str(tmp_path), "--epochs",
                     "2"]) == 0
    # Read back from the event files the monitors wrote on this backend.
    runs = report.find_runs(str(tmp_path))
    assert set(runs) == {setting.name for setting in study_runs.SETTINGS}
    assert runs["none"]["test acc"] > 0.7  # chance: 0.1
    assert runs["none"]["penalty share"] == 0.0
    assert runs["none"]["sign flips"] is None  # tracked on regularized ones
    # Exact zeros come from the proximal step only; L0.5 flip-flops under
    # gradient steps, and its proximal step makes it stop.
    assert runs["L0.5_proximal"]["exact zeros"] > 0.05
    assert runs["L0.5"]["exact zeros"] == 0.0
    assert runs["L0.5"]["sign flips"] > runs["L0.5_proximal"]["sign flips"]
    assert 0 < runs["L1"]["penalty share"] < 1
    assert (tmp_path / "comparison.png").read_bytes()[:4] == b"\x89PNG"
    # The other two commands on this backend: the report of those logs,
    # and the article's charts.
    capsys.readouterr()
    assert cli.main(["report", str(tmp_path)]) == 0
    table = capsys.readouterr().out
    assert all(name in table for name in runs)
    assert cli.main(["plot", "--out", str(tmp_path / "plots")]) == 0
    charts = sorted((tmp_path / "plots").glob("*.png"))
    assert charts and all(c.read_bytes()[:4] == b"\x89PNG" for c in charts)


@pytest.mark.parametrize("k", [0.0, 0.5])
def test_sparsity_target_under_gradient_accumulation_reaches_its_target(k):
    # The schedule counts the optimizer's updates (one per 2 batches here):
    # the default end_step is 3/4 of the fit's updates, not of its batches,
    # so the pattern locks at the target (it ended at 0.75 of 0.8 before).
    rng = np.random.default_rng(0)
    x = rng.standard_normal((256, 20)).astype("float32")
    y = np.argmax(x[:, :3] @ rng.standard_normal((3, 3)), axis=1)
    regularizer = LkRegularizer(k=k, alpha=1e-3, proximal=True)
    model = keras.Sequential([
        keras.Input((20,)),
        keras.layers.Dense(64, "relu", kernel_regularizer=regularizer),
        keras.layers.Dense(3, kernel_regularizer=regularizer)])
    model.set_weights([rng.standard_normal(w.shape).astype("float32") * 0.3
                       for w in model.get_weights()])
    model.compile(keras_lk.ProximalOptimizer(keras.optimizers.SGD(
        0.1, gradient_accumulation_steps=2)),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = model.fit(x, y, batch_size=32, epochs=6, shuffle=False,
                        verbose=0, callbacks=[keras_lk.SparsityTarget(0.8)])
    assert history.history["sparsity_target"][-1] == pytest.approx(0.8)
    zeros = keras_lk.sparsity(model)["total"]
    assert round(0.8 * zeros["size"]) <= zeros["zeros"] <= round(
        0.805 * zeros["size"])


def test_every_step_is_recorded_once_and_jax_calls_the_host_once_a_step(
        tmp_path, monkeypatch):
    # Each recorder counts every train and validation step exactly once,
    # with the penalty of that step's weights. On JAX the recorders of
    # all trainable weights share one host callback per step (a callback
    # costs about 0.35 ms; models have hundreds of weights); a frozen
    # regularized weight, which Keras's step does not call, adds none.
    from keras_lk.monitoring.recording import Recording
    calls = []
    if BACKEND == "jax":
        import jax
        callback = jax.debug.callback

        def counting(function, *args, **kwargs):
            calls.append(function)
            return callback(function, *args, **kwargs)
        monkeypatch.setattr(jax.debug, "callback", counting)
    regularizer = LkRegularizer(k=1, alpha=0.01)
    model = keras.Sequential([
        keras.Input((6,)),
        keras.layers.Dense(8, "relu", name="hidden",
                           kernel_regularizer=regularizer,
                           bias_regularizer=LkRegularizer(k=2, alpha=0.01)),
        keras.layers.Dense(4, "relu", name="frozen",
                           kernel_regularizer=regularizer),
        keras.layers.Dense(3, name="head", kernel_regularizer=regularizer)])
    model.get_layer("frozen").trainable = False
    model.compile(keras.optimizers.SGD(0.0), "mse")  # the weights stay
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((32, 6)), rng.standard_normal((32, 3))
    model.fit(x, y, batch_size=8, epochs=3, verbose=0,
              validation_data=(x[:16], y[:16]), callbacks=[
                  keras_lk.LkMonitor(tmp_path, step_stats=True)])
    recording = Recording.of(model)
    trained = [model.get_layer("hidden").kernel, model.get_layer("hidden").bias,
               model.get_layer("head").kernel]
    for variable in trained:
        recorder = recording.recorder(variable)
        np.testing.assert_array_equal(recorder.counts.numpy(), [12, 6])
        penalty = float(ops.convert_to_numpy(recorder.regularizer(variable)))
        np.testing.assert_allclose(recorder.sums.numpy(),
                                   [12 * penalty, 6 * penalty], rtol=1e-5)
    frozen = recording.recorder(model.get_layer("frozen").kernel)
    np.testing.assert_array_equal(frozen.counts.numpy(), [0, 0])
    if BACKEND == "jax":
        # One call per train step and per validation step, each traced
        # once: the host ran one callback per step.
        assert len(calls) == 2, calls
