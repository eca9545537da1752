"""Penalties, monitors and proximal training in every Keras training setup:
jit_compile, mixed_float16, use_ema, gradient accumulation,
steps_per_execution (MirroredStrategy: test_distributed.py)."""

import math

import keras
import numpy as np
import pytest

import keras_lk
from events import read
from helpers import (PenaltyTrace, proximal_model, regression_data,
                     sparse_regression_data, two_layer_model)

KS = [0.3, 0.5, 2 / 3, 1.0, 1.5, 2.0, 3.0, 10.0, math.inf]


def zeros_after_fit(optimizer, policy="float32", epochs=5, **compile_kwargs):
    keras.config.set_dtype_policy(policy)
    keras.utils.set_random_seed(0)
    x, y = sparse_regression_data()
    model = proximal_model()
    model.compile(optimizer, "mse", **compile_kwargs)
    model.fit(x, y, epochs=epochs, batch_size=32, shuffle=False, verbose=0)
    return model, model.get_layer("d").kernel.numpy().astype("float32")


def sgd(**kwargs):
    return keras.optimizers.SGD(0.1, **kwargs)


def numpy_proximal_sgd(epochs=5, lr=0.1, alpha=2.0, batch=32):
    """`zeros_after_fit`'s training, by hand: minibatch SGD on the mean
    squared error, then half thresholding at `lr * alpha / 30`."""
    keras.utils.set_random_seed(0)
    kernel, bias = (w.astype("float64") for w in proximal_model().get_weights())
    x, y = sparse_regression_data()
    for _ in range(epochs):
        for start in range(0, len(x), batch):
            xb, yb = x[start:start + batch], y[start:start + batch]
            residual = xb @ kernel + bias - yb
            kernel = kernel - lr * 2 * xb.T @ residual / len(xb)
            bias = bias - lr * 2 * residual.mean(axis=0)
            kernel = np.asarray(keras_lk.prox(kernel, lr * alpha / 30, 0.5))
    return kernel


@pytest.fixture(scope="module")
def float32_kernel():
    """The reference: plain float32 training, anchored on a NumPy loop of
    the same training and on the data itself (3 informative features of
    30, see `sparse_regression_data`)."""
    kernel = zeros_after_fit(keras_lk.ProximalOptimizer(sgd()))[1]
    by_hand = numpy_proximal_sgd()
    np.testing.assert_allclose(kernel, by_hand, atol=1e-5)
    np.testing.assert_array_equal(kernel == 0, by_hand == 0)
    assert_zeros_on_noise(kernel, at_least=27)
    return kernel


def assert_zeros_on_noise(kernel, at_least):
    """The informative features kept, most of the 27 noise ones zeroed."""
    assert np.all(kernel[:3] != 0)
    assert np.sum(kernel[3:] == 0) >= at_least


def assert_same_kernel(kernel, reference, atol):
    """Another setup trains the same kernel: values close, and the zeros
    where the reference has them (up to one weight at the threshold)."""
    np.testing.assert_allclose(kernel, reference, atol=atol)
    assert np.sum((kernel == 0) != (reference == 0)) <= 1
    assert_zeros_on_noise(kernel, at_least=26)


@pytest.mark.slow
@pytest.mark.parametrize("k", KS)
def test_every_k_trains_the_same_under_jit_compile(k):
    x, y = regression_data()
    losses = []
    for jit in (False, True):
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(
            3, kernel_regularizer=keras_lk.LkRegularizer(k=k, alpha=0.1)),
            keras.layers.Dense(1)])
        model.compile(keras.optimizers.SGD(0.05), "mse", jit_compile=jit)
        history = model.fit(x, y, epochs=2, batch_size=16, shuffle=False,
                            verbose=0)
        losses.append(history.history["loss"])
    np.testing.assert_allclose(losses[1], losses[0], rtol=1e-5)


@pytest.mark.slow
def test_monitors_report_the_same_under_jit_compile(tmp_path):
    x, y = regression_data()
    for jit in (False, True):
        keras.utils.set_random_seed(0)
        model = two_layer_model(lr=0.05, jit_compile=jit)
        model.fit(x, y, epochs=2, batch_size=8, shuffle=False, verbose=0,
                  callbacks=[keras_lk.LkMonitor(tmp_path / str(jit),
                                                update_freq=3,
                                                step_stats=True)])
    plain, jitted = read(tmp_path / "False"), read(tmp_path / "True")
    assert plain.keys() == jitted.keys()
    for key in ("sign_flip_count/(all layers)", "reg_loss/total",
                "exact_zero_count/(all layers)"):
        assert jitted[("train", key)] == pytest.approx(plain[("train", key)],
                                                       rel=1e-5)


def test_proximal_zeros_under_jit_compile(float32_kernel):
    _, kernel = zeros_after_fit(keras_lk.ProximalOptimizer(sgd()),
                                jit_compile=True)
    assert_same_kernel(kernel, float32_kernel, atol=1e-5)
    np.testing.assert_array_equal(kernel == 0, float32_kernel == 0)


def test_proximal_zeros_under_mixed_float16_auto_wrapped(float32_kernel):
    model, kernel = zeros_after_fit(keras_lk.ProximalOptimizer(sgd()),
                                    "mixed_float16")
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    # float16 activations: the weights (float32) agree to about 1e-3.
    assert_same_kernel(kernel, float32_kernel, atol=2e-3)


def test_proximal_zeros_under_an_explicit_loss_scale_optimizer(float32_kernel):
    _, kernel = zeros_after_fit(keras.optimizers.LossScaleOptimizer(
        keras_lk.ProximalOptimizer(sgd())), "mixed_float16")
    assert_same_kernel(kernel, float32_kernel, atol=2e-3)


def test_a_step_the_loss_scaler_skips_skips_the_proximal_step():
    keras.config.set_dtype_policy("mixed_float16")
    model = proximal_model(k=2.0, alpha=10.0, features=3)
    kernel = model.get_layer("d").kernel
    kernel.assign(np.ones((3, 1)))
    model.compile(keras_lk.ProximalOptimizer(keras.optimizers.SGD(0.1)), "mse")
    # Small inputs: the first step's scaled gradients are finite.
    x = np.full((4, 3), 0.01, "float32")
    model.fit(x, np.zeros((4, 1)), epochs=1, batch_size=4, verbose=0)
    after_one = kernel.numpy().copy()
    assert np.all(after_one < 1)  # a real step, with its proximal step
    x[0, 0] = np.inf  # non-finite gradients: the scaler skips the step
    model.fit(x, np.zeros((4, 1)), epochs=1, batch_size=4, verbose=0)
    np.testing.assert_array_equal(kernel.numpy(), after_one)


def test_proximal_around_a_loss_scale_optimizer_is_a_clear_error():
    with pytest.raises(ValueError, match=(
            r"ProximalOptimizer must be inside the LossScaleOptimizer, not "
            r"around it.*Use keras.optimizers.LossScaleOptimizer\(keras_lk."
            r"ProximalOptimizer\(optimizer\)\)")):
        keras_lk.ProximalOptimizer(keras.optimizers.LossScaleOptimizer(sgd()))


class LastStepWeights(keras.callbacks.Callback):
    """The kernel of layer `layer` after every training batch."""

    def __init__(self, layer="d"):
        super().__init__()
        self.layer = layer
        self.kernels = []

    def on_train_batch_end(self, batch, logs=None):
        self.kernels.append(
            self.model.get_layer(self.layer).kernel.numpy().copy())

    @property
    def kernel(self):
        return self.kernels[-1]


def test_use_ema_keeps_the_zeros_training_made():
    keras.utils.set_random_seed(0)
    x, y = sparse_regression_data()
    model = proximal_model()
    model.compile(keras_lk.ProximalOptimizer(sgd(use_ema=True)), "mse")
    last = LastStepWeights()
    model.fit(x, y, epochs=5, batch_size=32, verbose=0, callbacks=[last])
    final = model.get_layer("d").kernel.numpy()
    trained_zeros = last.kernel == 0
    assert trained_zeros.sum() > 10
    np.testing.assert_array_equal(final[trained_zeros], 0.0)
    # The averages did replace the other weights.
    assert not np.array_equal(final[~trained_zeros], last.kernel[~trained_zeros])


@pytest.mark.parametrize("accumulation", [None, 2, 4])
def test_gradient_accumulation_takes_one_proximal_step_per_update(
        accumulation):
    # Feature 0 is always 0: its weight has no data gradient, so only the
    # proximal step of k = 2, w <- w / (1 + 2t), moves it.
    lr, alpha, steps = 0.1, 1.5, 8
    model = proximal_model(k=2.0, alpha=alpha, features=3)
    kernel = model.get_layer("d").kernel
    kernel.assign(np.ones((3, 1)))
    model.compile(keras_lk.ProximalOptimizer(keras.optimizers.SGD(
        lr, gradient_accumulation_steps=accumulation)), "mse")
    x = np.random.default_rng(0).standard_normal((steps, 3)).astype("float32")
    x[:, 0] = 0.0
    model.fit(x, np.zeros((steps, 1)), batch_size=1, shuffle=False, verbose=0)
    updates = steps // (accumulation or 1)
    t = lr * alpha / 3
    assert kernel.numpy()[0, 0] == pytest.approx((1 + 2 * t) ** -updates,
                                                 rel=1e-5)


def test_proximal_zeros_with_steps_per_execution(float32_kernel):
    _, kernel = zeros_after_fit(keras_lk.ProximalOptimizer(sgd()),
                                steps_per_execution=3)
    assert_same_kernel(kernel, float32_kernel, atol=1e-5)
    np.testing.assert_array_equal(kernel == 0, float32_kernel == 0)


def test_monitors_under_mixed_float16(tmp_path):
    keras.config.set_dtype_policy("mixed_float16")
    x, y = regression_data()
    model = two_layer_model(lr=0.0)
    history = model.fit(x, y, epochs=1, verbose=0, callbacks=[
        keras_lk.LkMonitor(tmp_path, step_stats=True)])
    first = 0.1 * np.mean(np.abs(model.get_layer("first").kernel.numpy()))
    second = 0.1 * np.sum(model.get_layer("second").kernel.numpy() ** 2)
    assert history.history["reg_loss"][0] == pytest.approx(first + second,
                                                           rel=1e-5)
    assert history.history["sign_flip_frac"] == [0.0]


def decay_of_a_weight_without_data_gradient(optimizer, lr, alpha, steps):
    """Trains `proximal_model`'s shape with a gradient-mode L2 (mean) on a
    kernel whose feature 0 is always 0: only the penalty moves that weight,
    by `w <- w * (1 - 2 lr alpha / n)` per real update. Returns the
    training weight after each batch."""
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(
        1, name="d", kernel_regularizer=keras_lk.LkRegularizer(
            k=2.0, alpha=alpha))])
    kernel = model.get_layer("d").kernel
    kernel.assign(np.ones((3, 1)))
    model.compile(optimizer, "mse")
    x = np.random.default_rng(0).standard_normal((steps, 3)).astype("float32")
    x[:, 0] = 0.0
    last = LastStepWeights()
    model.fit(x, np.zeros((steps, 1)), batch_size=1, shuffle=False,
              verbose=0, callbacks=[last])
    return last.kernels, kernel.numpy()


@pytest.mark.parametrize("accumulation", [None, 2, 4])
def test_lk_regularizer_takes_one_penalty_step_per_accumulated_update(
        accumulation):
    lr, alpha, steps = 0.1, 1.5, 8
    kernels, _ = decay_of_a_weight_without_data_gradient(
        keras.optimizers.SGD(lr, gradient_accumulation_steps=accumulation),
        lr, alpha, steps)
    every = accumulation or 1
    for batch, kernel in enumerate(kernels):
        updates = (batch + 1) // every
        assert kernel[0, 0] == pytest.approx(
            (1 - 2 * lr * alpha / 3) ** updates, rel=1e-5), batch


def test_lk_regularizer_trains_the_weights_under_use_ema():
    lr, alpha, steps = 0.1, 1.5, 6
    kernels, final = decay_of_a_weight_without_data_gradient(
        keras.optimizers.SGD(lr, use_ema=True, ema_momentum=0.5),
        lr, alpha, steps)
    for batch, kernel in enumerate(kernels):
        assert kernel[0, 0] == pytest.approx(
            (1 - 2 * lr * alpha / 3) ** (batch + 1), rel=1e-5), batch
    # At the end of fit Keras swaps in the averages, which lag behind.
    assert final[0, 0] > kernels[-1][0, 0] * 1.01


def test_monitors_under_gradient_accumulation_log_updates(tmp_path):
    # 8 batches of 8, 2 batches per update: 4 updates. update_freq=2
    # counts batches, so each log covers one update; its step is the
    # optimizer's iteration count (updates) and its reg_loss the mean of
    # the penalty that entered the loss at each of its batches.
    x, y = regression_data()
    model = two_layer_model(optimizer=keras.optimizers.SGD(
        0.05, gradient_accumulation_steps=2))
    trace = PenaltyTrace()
    model.fit(x, y, epochs=1, batch_size=8, shuffle=False, verbose=0,
              callbacks=[keras_lk.LkMonitor(tmp_path, update_freq=2), trace])
    assert [it for it, _ in trace.steps] == [0, 0, 1, 1, 2, 2, 3, 3]
    logged = read(tmp_path)[("train", "reg_loss/total")]
    assert sorted(logged) == [1, 2, 3, 4]
    np.testing.assert_allclose([logged[s] for s in (1, 2, 3, 4)],
                               trace.window_means(2), rtol=1e-5)
    # The penalty did change between updates, so the windows are told apart.
    assert len(set(np.round(trace.window_means(2), 6))) == 4


def test_monitors_under_use_ema_report_the_training_weights(tmp_path):
    x, y = regression_data()
    model = two_layer_model(optimizer=keras.optimizers.SGD(
        0.05, use_ema=True, ema_momentum=0.9))
    trace = PenaltyTrace()
    last = LastStepWeights(layer="first")
    history = model.fit(x, y, epochs=2, batch_size=16, shuffle=False,
                        verbose=0, callbacks=[keras_lk.LkMonitor(
                            tmp_path, tol=0.05), trace, last])
    np.testing.assert_allclose(history.history["reg_loss"],
                               trace.window_means(4), rtol=1e-5)
    events = read(tmp_path)
    # The last epoch's log is of the weights training left (Keras swaps
    # the averages in only after it).
    trained = last.kernels[-1]
    assert events[("train", "max_abs_weight/first")][1] == pytest.approx(
        np.abs(trained).max(), rel=1e-6)
    assert events[("train", "zero_count/first")][1] == np.sum(
        np.abs(trained) <= 0.05)
    assert not np.allclose(model.get_layer("first").kernel.numpy(), trained)
