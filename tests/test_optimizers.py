import math

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_lk
from keras_lk import LkRegularizer, ProximalOptimizer, prox
from helpers import linear_data as data, sparse_regression_data

MISUSE = ("no keras_lk.ProximalOptimizer applies it: without one the weight "
          "would train unregularized")


def linear_model(regularizer, features=5):
    model = keras.Sequential([keras.Input((features,)), keras.layers.Dense(
        1, name="linear", kernel_regularizer=regularizer)])
    return model


@pytest.mark.parametrize("inner, k, reduction", [
    (keras.optimizers.SGD, k, reduction)
    for k in (0.0, 0.5, 1.0, 1.5, 2.0, math.inf)
    for reduction in ("mean", "sum")
] + [(keras.optimizers.Adam, 0.5, "mean"), (keras.optimizers.Adam, 1.0, "sum"),
     (keras.optimizers.Adam, 2.0, "mean"), (keras.optimizers.Adam, math.inf,
                                            "mean")])
def test_one_step_is_inner_step_then_prox(inner, k, reduction):
    # With Adam too the proximal step is decoupled: `t` uses the raw
    # learning rate, not Adam's per-weight step size.
    x, y = data(n=8)
    reg = LkRegularizer(k=k, alpha=0.3, reduction=reduction, proximal=True)
    proximal = linear_model(reg)
    plain = linear_model(None)
    plain.set_weights(proximal.get_weights())
    lr = 0.05
    proximal.compile(ProximalOptimizer(inner(lr)), "mse")
    plain.compile(inner(lr), "mse")
    proximal.fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False)
    plain.fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False)
    kernel = plain.get_layer("linear").kernel.numpy()
    n = 1 if reduction == "sum" or math.isinf(k) else kernel.size
    expected = np.asarray(prox(kernel, lr * 0.3 / n, k))
    np.testing.assert_allclose(proximal.get_layer("linear").kernel.numpy(),
                               expected, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(proximal.get_layer("linear").bias.numpy(),
                               plain.get_layer("linear").bias.numpy(),
                               rtol=1e-5)


def test_penalty_value_is_in_the_loss_but_its_gradient_is_not():
    x, y = data(n=8)
    lr, alpha = 0.05, 0.5
    reg = LkRegularizer(k=1, alpha=alpha, proximal=True)
    model = linear_model(reg)
    model.compile(ProximalOptimizer(keras.optimizers.SGD(lr)), "mse")
    kernel, bias = (w.copy() for w in model.get_weights())
    prediction = x @ kernel + bias
    data_loss = np.mean((prediction - y) ** 2)
    penalty = alpha * np.mean(np.abs(kernel))
    history = model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    assert history.history["loss"][0] == pytest.approx(data_loss + penalty,
                                                       rel=1e-5)
    # The step: the data gradient only, then the soft threshold. A penalty
    # gradient on top would move every weight by lr * alpha / 5 more.
    gradient = 2 * x.T @ (prediction - y) / len(x)
    expected = np.asarray(prox(kernel - lr * gradient, lr * alpha / 5, 1))
    np.testing.assert_allclose(model.get_layer("linear").kernel.numpy(),
                               expected, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("k", [0.5, 1.0])
def test_a_custom_training_loop_as_the_readme_documents(k):
    x, y = data(n=8)
    lr, alpha = 0.05, 0.5
    model = linear_model(LkRegularizer(k=k, alpha=alpha, proximal=True))
    optimizer = ProximalOptimizer(keras.optimizers.SGD(lr))
    optimizer.build(model.trainable_variables)
    kernel, bias = (w.copy() for w in model.get_weights())
    for _ in range(3):
        with tf.GradientTape() as tape:
            prediction = model(x, training=True)
            loss = (keras.losses.MeanSquaredError()(y, prediction)
                    + sum(model.losses))
        gradients = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(gradients, model.trainable_variables))
        residual = x @ kernel + bias - y
        kernel = np.asarray(prox(
            kernel - lr * 2 * x.T @ residual / len(x), lr * alpha / 5, k))
        bias = bias - lr * 2 * residual.mean(axis=0)
    np.testing.assert_allclose(model.get_layer("linear").kernel.numpy(),
                               kernel, rtol=1e-4, atol=1e-6)
    assert int(optimizer.iterations) == 3


def test_schedules_are_honoured_with_the_rate_of_each_step():
    x, y = data(n=8)
    # 0.1 at iteration 0, then 0.
    schedule = keras.optimizers.schedules.PiecewiseConstantDecay([0], [0.1, 0.0])
    reg = LkRegularizer(k=1, alpha=1.0, reduction="sum", proximal=True)
    model = linear_model(reg)
    plain = linear_model(None)
    plain.set_weights(model.get_weights())
    model.compile(ProximalOptimizer(keras.optimizers.SGD(schedule)), "mse")
    plain.compile(keras.optimizers.SGD(0.1), "mse")
    model.fit(x, y, batch_size=8, verbose=0)
    plain.fit(x, y, batch_size=8, verbose=0)
    after_one = model.get_layer("linear").kernel.numpy()
    expected = np.asarray(prox(plain.get_layer("linear").kernel.numpy(), 0.1, 1))
    np.testing.assert_allclose(after_one, expected, rtol=1e-6)
    model.fit(x, y, batch_size=8, epochs=2, verbose=0)  # steps at rate 0
    np.testing.assert_array_equal(model.get_layer("linear").kernel.numpy(),
                                  after_one)


def test_plain_optimizer_with_proximal_regularizer_fails_loudly():
    x, y = data()
    model = linear_model(LkRegularizer(k=1, alpha=0.1, proximal=True))
    model.compile(keras.optimizers.SGD(0.1), "mse")
    with pytest.raises(ValueError, match=MISUSE):
        model.fit(x, y, verbose=0)
    model.evaluate(x, y, verbose=0)  # evaluation alone is fine


def test_another_models_unbuilt_proximal_optimizer_lets_no_misuse_through():
    # Model A: a ProximalOptimizer under a LossScaleOptimizer, never fit
    # (so never built). Model B, with plain SGD, must still be refused: the
    # check asks B's own optimizer, not state shared between models.
    keras.config.set_dtype_policy("mixed_float16")
    first = linear_model(LkRegularizer(k=1, alpha=0.1, proximal=True))
    first.compile(ProximalOptimizer(keras.optimizers.SGD(0.1)), "mse")
    assert isinstance(first.optimizer, keras.optimizers.LossScaleOptimizer)
    second = linear_model(LkRegularizer(k=1, alpha=0.1, proximal=True))
    second.compile(keras.optimizers.SGD(0.1), "mse")
    x, y = data()
    with pytest.raises(ValueError, match=MISUSE):
        second.fit(x, y, verbose=0)
    first.fit(x, y, verbose=0)  # A itself trains


def test_a_layer_shared_by_a_proximal_and_a_plain_model():
    # One layer in two models: A trains it with a ProximalOptimizer (built,
    # so the weight is known to be handled), B with plain SGD. B must still
    # be refused: whether a step is proximal depends on the model in
    # training, not on the weight.
    x, y = data()
    shared = keras.layers.Dense(1, kernel_regularizer=LkRegularizer(
        k=1, alpha=0.1, proximal=True), name="shared")
    first = keras.Sequential([keras.Input((5,)), shared])
    second = keras.Sequential([keras.Input((5,)), shared])
    first.compile(ProximalOptimizer(keras.optimizers.SGD(0.1)), "mse")
    first.fit(x, y, verbose=0)
    second.compile(keras.optimizers.SGD(0.1), "mse")
    before = shared.kernel.numpy().copy()
    with pytest.raises(ValueError, match=MISUSE):
        second.fit(x, y, verbose=0)
    np.testing.assert_array_equal(shared.kernel.numpy(), before)
    first.fit(x, y, verbose=0)  # A still trains it


def test_recompiling_without_the_proximal_optimizer_is_refused():
    x, y = data()
    model = linear_model(LkRegularizer(k=0.5, alpha=0.1, proximal=True))
    model.compile(ProximalOptimizer(keras.optimizers.SGD(0.1)), "mse")
    model.fit(x, y, verbose=0)
    model.compile(keras.optimizers.Adam(0.1), "mse")
    with pytest.raises(ValueError, match=MISUSE):
        model.fit(x, y, verbose=0)


def test_a_custom_loop_without_build_is_refused():
    x, y = data()
    model = linear_model(LkRegularizer(k=1, alpha=0.1, proximal=True))
    optimizer = ProximalOptimizer(keras.optimizers.SGD(0.1))

    def gradients():
        with tf.GradientTape() as tape:
            loss = (keras.losses.MeanSquaredError()(y, model(x))
                    + sum(model.losses))
        return tape.gradient(loss, model.trainable_variables)

    with pytest.raises(ValueError, match=MISUSE):
        gradients()
    # Built, as the docs ask, the same loop trains.
    optimizer.build(model.trainable_variables)
    optimizer.apply_gradients(zip(gradients(), model.trainable_variables))
    assert int(optimizer.iterations.numpy()) == 1


@pytest.mark.parametrize("inner", [keras.optimizers.SGD, keras.optimizers.Adam])
def test_save_load_and_continue_training(inner, tmp_path):
    x, y = data()
    model = linear_model(LkRegularizer(k=0.5, alpha=0.2, proximal=True))
    model.compile(ProximalOptimizer(inner(0.05)), "mse")
    model.fit(x, y, epochs=2, verbose=0)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded.optimizer, ProximalOptimizer)
    assert isinstance(loaded.optimizer.inner_optimizer, inner)
    assert int(loaded.optimizer.iterations) == int(model.optimizer.iterations)
    np.testing.assert_array_equal(loaded.get_weights()[0],
                                  model.get_weights()[0])
    model.fit(x, y, epochs=1, verbose=0, shuffle=False)
    loaded.fit(x, y, epochs=1, verbose=0, shuffle=False)
    np.testing.assert_allclose(loaded.get_weights()[0], model.get_weights()[0],
                               rtol=1e-5, atol=1e-7)


def test_learning_rate_and_iterations_are_the_inner_optimizers():
    inner = keras.optimizers.Adam(0.25)
    wrapper = ProximalOptimizer(inner)
    assert float(wrapper.learning_rate) == 0.25
    wrapper.learning_rate = 0.5
    assert float(inner.learning_rate) == 0.5
    assert wrapper.iterations is inner.iterations
    assert wrapper.get_config()["optimizer"]["class_name"] == "Adam"


def test_bad_arguments():
    with pytest.raises(ValueError, match="Invalid value for argument "
                       "`optimizer`. Expected a keras.optimizers.Optimizer "
                       "instance"):
        ProximalOptimizer("sgd")
    with pytest.raises(ValueError, match="Received: proximal='yes'"):
        LkRegularizer(proximal="yes")


def fit_sparse(reg, optimizer, epochs=60):
    keras.utils.set_random_seed(0)
    x, y = sparse_regression_data(n=400, features=200, informative=20,
                                  noise=0.5)
    model = linear_model(reg, features=200)
    model.compile(optimizer, "mse", steps_per_execution=10)  # fewer Python round trips
    model.fit(x, y, batch_size=40, epochs=epochs, verbose=0)
    return model.get_layer("linear").kernel.numpy().ravel()


@pytest.mark.slow
def test_proximal_steps_give_exact_zeros_where_gradients_do_not():
    alpha = 40.0  # mean reduction over 200 weights: 0.2 per weight
    half = fit_sparse(LkRegularizer(k=0.5, alpha=alpha, proximal=True),
                      ProximalOptimizer(keras.optimizers.SGD(0.01)))
    assert np.mean(half[20:] == 0) > 0.8      # most noise features zeroed
    assert np.all(half[:20] != 0)            # informative ones kept
    l1 = fit_sparse(LkRegularizer(k=1, alpha=alpha, proximal=True),
                    ProximalOptimizer(keras.optimizers.SGD(0.01)))
    assert np.mean(l1[20:] == 0) > 0.3
    assert np.all(l1[:20] != 0)
    for k in (0.5, 1.0):
        gradient = fit_sparse(LkRegularizer(k=k, alpha=alpha),
                              keras.optimizers.SGD(0.01))
        assert np.sum(gradient == 0) == 0


def regression_zeros(optimizer, alpha=2.0, seed=0):
    """The README's Adam-vs-SGD setting: 30 features, 3 informative, L0.5
    proximal, batch 32, 20 epochs. Returns (noise zeros, informative kept)."""
    keras.utils.set_random_seed(seed)
    x, y = sparse_regression_data(n=256, features=30, informative=3,
                                  noise=0.1, seed=seed)
    model = linear_model(LkRegularizer(k=0.5, alpha=alpha, proximal=True),
                         features=30)
    model.compile(ProximalOptimizer(optimizer), "mse")
    model.fit(x, y, batch_size=32, epochs=20, verbose=0)
    kernel = model.get_layer("linear").kernel.numpy().ravel()
    return int(np.sum(kernel[3:] == 0)), int(np.sum(kernel[:3] != 0))


@pytest.mark.slow
def test_adam_at_its_usual_rate_makes_fewer_zeros_than_sgd():
    # The README's advice: the threshold uses the raw learning rate, so
    # Adam at 0.01 zeroes fewer noise weights than SGD at 0.1; Adam at a
    # rate like SGD's does as well as SGD.
    sgd = regression_zeros(keras.optimizers.SGD(0.1))
    adam_small = regression_zeros(keras.optimizers.Adam(0.01))
    adam_large = regression_zeros(keras.optimizers.Adam(0.1))
    assert sgd[1] == 3 and adam_large[1] == 3
    assert sgd[0] == adam_large[0] == 27  # every noise weight zeroed
    # Adam at 0.01: fewer zeros, and an informative weight lost (the
    # README's 68% and 2/3 are means over 3 seeds).
    assert adam_small[0] < sgd[0] and adam_small[1] < 3


def test_k_zero_proximal_training_is_reported_as_a_fraction_of_nonzeros(
        tmp_path):
    import keras_lk
    x, y = sparse_regression_data(n=64, features=30, informative=3)
    model = linear_model(LkRegularizer(k=0, alpha=3.0, proximal=True),
                         features=30)
    model.compile(ProximalOptimizer(keras.optimizers.SGD(0.05)), "mse")
    before = []

    class Kernels(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            before.append(model.get_layer("linear").kernel.numpy().copy())

    history = model.fit(x, y, batch_size=64, epochs=3, verbose=0, callbacks=[
        keras_lk.RegularizationShare(tmp_path), Kernels()])
    kernel = model.get_layer("linear").kernel.numpy()
    # Threshold sqrt(2 * 0.05 * 3 / 30) = 0.1: small weights zeroed, the
    # informative ones kept.
    assert 0 < np.sum(kernel == 0) < 30 and np.all(kernel[:3] != 0)
    # One step per epoch: its penalty is alpha times the fraction of
    # nonzeros of the weights it started from.
    expected = [3.0 * np.mean(k != 0) for k in before]
    np.testing.assert_allclose(history.history["reg_loss"], expected,
                               rtol=1e-6)
    assert expected[0] == 3.0 and expected[-1] < 3.0


def late_model():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)),
                              keras.layers.Dense(3, name="dense")])
    model.compile(ProximalOptimizer(keras.optimizers.SGD(0.1)), "mse")
    x, y = np.ones((8, 4)), np.zeros((8, 3))
    model.fit(x, y, batch_size=8, verbose=0)  # the optimizer is built
    return model, x, y


def test_a_regularizer_attached_after_the_optimizer_was_built_is_applied():
    # attach after compile and fit (or after loading a model, where the
    # README says to attach again): the proximal step covers the weight.
    model, x, y = late_model()
    assert model.optimizer.built
    kernel = model.get_layer("dense").kernel
    kernel.assign(np.full((4, 3), 0.5))
    keras_lk.attach(model, LkRegularizer(k=1, alpha=120.0, proximal=True))
    model.fit(x, y, batch_size=8, verbose=0)
    # One SGD step, then soft thresholding at t = 0.1 * 120 / 12 = 1 > |w|.
    np.testing.assert_array_equal(kernel.numpy(), np.zeros((4, 3)))


def test_a_detached_regularizer_is_no_longer_applied():
    model, x, y = late_model()
    keras_lk.attach(model, LkRegularizer(k=1, alpha=120.0, proximal=True))
    model.fit(x, y, batch_size=8, verbose=0)
    kernel = model.get_layer("dense").kernel
    assert np.all(kernel.numpy() == 0)
    keras_lk.detach(model)
    kernel.assign(np.full((4, 3), 0.5))
    plain = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    plain.set_weights(model.get_weights())
    plain.compile(keras.optimizers.SGD(0.1), "mse")
    model.fit(x, y, batch_size=8, verbose=0)
    plain.fit(x, y, batch_size=8, verbose=0)
    np.testing.assert_allclose(kernel.numpy(), plain.layers[0].kernel.numpy(),
                               rtol=1e-6)
    assert np.all(kernel.numpy() != 0)


def test_sparsity_target_names_weights_attached_after_the_build():
    model, x, y = late_model()
    keras_lk.attach(model, LkRegularizer(k=1, alpha=1e-3, proximal=True))
    with pytest.raises(ValueError, match=r"\['sequential/dense/kernel'\] got their "
                       r"proximal LkRegularizer after that"):
        model.fit(x, y, verbose=0, callbacks=[keras_lk.SparsityTarget(0.5)])


def test_optimizer_state_loads_by_path_when_a_regularizer_was_not_saved(
        tmp_path):
    # MultiHeadAttention's projections trained with a proximal regularizer
    # that their config cannot save: the loaded ProximalOptimizer has fewer
    # variables (no SparsityTarget state for them). Keras's loading by
    # position skipped every variable, Adam's moments too; by path, all but
    # those load, and a warning names them.
    import warnings
    tokens = keras.Input((6,), dtype="int32")
    x = keras.layers.Embedding(20, 8, name="embed")(tokens)
    x = keras.layers.MultiHeadAttention(2, 4, name="mha")(x, x)
    model = keras.Model(tokens, keras.layers.Dense(2, name="head")(
        keras.layers.GlobalAveragePooling1D()(x)))
    reg = LkRegularizer(k=1, alpha=1e-3, proximal=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        keras_lk.attach(model, reg, names="mha/query")
    keras_lk.attach(model, reg, names="head")
    model.compile(ProximalOptimizer(keras.optimizers.Adam(1e-2)), "mse")
    data = np.random.default_rng(0).integers(0, 20, (16, 6))
    model.fit(data, np.ones((16, 2)), verbose=0)
    model.save(tmp_path / "m.keras")
    with pytest.warns(UserWarning, match=r"loaded \d+ of its \d+ variables "
                      r"by path.*mha_query_kernel_sparsity_mask"):
        loaded = keras.saving.load_model(tmp_path / "m.keras")
    saved = {v.path: v.numpy() for v in model.optimizer.variables}
    here = loaded.optimizer.variables
    assert len(here) == len(saved) - 2   # query's mask and state
    for variable in here:
        np.testing.assert_array_equal(variable.numpy(), saved[variable.path],
                                      err_msg=variable.path)
    assert int(loaded.optimizer.iterations.numpy()) == 1
    moments = [v for v in here if "momentum" in v.path]
    assert moments and all(np.any(v.numpy() != 0) for v in moments
                           if "query" in v.path or "head" in v.path)


def test_the_registry_of_handled_weights_drops_them_with_their_weights():
    import gc
    import weakref

    from keras_lk.core.handled import HANDLED, mark_proximal_handled
    regularizer = LkRegularizer(k=1, alpha=0.1, proximal=True)
    variable = keras.Variable(np.ones((3, 2), "float32"))
    variable.regularizer = regularizer
    mark_proximal_handled(variable)
    assert variable in HANDLED and regularizer in HANDLED.regularizers
    key = id(variable)
    assert key in HANDLED.variables
    gone, gone_regularizer = weakref.ref(variable), weakref.ref(regularizer)
    del variable, regularizer
    gc.collect()
    assert gone() is None and gone_regularizer() is None
    assert key not in HANDLED.variables
