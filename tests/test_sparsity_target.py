"""`SparsityTarget` reaches the requested sparsity, locks the pattern, and
refuses what it cannot do."""

import keras
import numpy as np
import pytest

import keras_lk
from events import read, tags
from helpers import sparse_regression_data


def mlp(k=1.0, alpha=0.05, hidden_k=None):
    reg = keras_lk.LkRegularizer(k=k, alpha=alpha, proximal=True)
    hidden = reg if hidden_k is None else keras_lk.LkRegularizer(
        k=hidden_k, alpha=alpha, proximal=True)
    model = keras.Sequential([
        keras.Input((30,)),
        keras.layers.Dense(16, name="hidden", activation="tanh",
                           kernel_regularizer=hidden),
        keras.layers.Dense(1, name="out", kernel_regularizer=reg)])
    model.compile(keras_lk.ProximalOptimizer(keras.optimizers.SGD(0.05)),
                  "mse")
    return model


class ZeroHistory(keras.callbacks.Callback):
    """Each step's exact-zero masks and the scheduled target in logs."""

    def __init__(self):
        super().__init__()
        self.masks = []

    def on_train_batch_end(self, batch, logs=None):
        self.masks.append(np.concatenate([
            self.model.get_layer(name).kernel.numpy().ravel() == 0
            for name in ("hidden", "out")]))


def fit(model, callbacks, epochs=8):
    x, y = sparse_regression_data(n=256, features=30, informative=5, noise=0.1)
    return model.fit(x, y, epochs=epochs, batch_size=16, shuffle=False,
                     verbose=0, callbacks=callbacks)


@pytest.mark.slow
@pytest.mark.parametrize("k, target", [(1.0, 0.5), (0.5, 0.9), (1.0, 0.95)])
def test_reaches_the_target_and_locks_the_pattern(k, target):
    model = mlp(k=k)
    history_cb = ZeroHistory()
    history = fit(model, [keras_lk.SparsityTarget(target, end_step=80),
                          history_cb])
    size = 30 * 16 + 16
    counts = keras_lk.sparsity(model)["total"]
    assert round(target * size) <= counts["zeros"] <= round(
        (target + 0.01) * size)
    assert history.history["sparsity"][-1] == pytest.approx(
        counts["fraction"])
    assert history.history["sparsity_target"][-1] == pytest.approx(target)
    # Before the lock the controller tracks the schedule; after it (step
    # 80; zeros beyond the target are released then and regrow at step 81)
    # the zeros are exactly the locked ones, step after step.
    locked = history_cb.masks[80]
    assert locked.sum() == round(target * size)
    assert history_cb.masks[79].sum() >= locked.sum()
    for mask in history_cb.masks[81:]:
        np.testing.assert_array_equal(mask, locked)
    # Step 64 ends epoch 3: the schedule is at 0.99 of the way by then.
    assert abs(history_cb.masks[63].mean()
               - history.history["sparsity_target"][3]) < 0.06


def assert_hidden_zeros(model, count):
    """Exactly `count` zeros in the hidden kernel, but for the inputs of the
    units whose output weight is zero: they get no gradient at all, so
    zeros released there at the lock stay zero."""
    hidden = model.get_layer("hidden").kernel.numpy()
    dead = model.get_layer("out").kernel.numpy()[:, 0] == 0
    zeros = keras_lk.sparsity(model)["layers"]["hidden"]["zeros"]
    assert count <= zeros <= count + np.sum(hidden[:, dead] == 0)


@pytest.mark.slow
def test_per_layer_targets():
    model = mlp()
    fit(model, [keras_lk.SparsityTarget({"hidden": 0.8, "out": 0.25},
                                        end_step=60)])
    assert keras_lk.sparsity(model)["layers"]["out"]["zeros"] == 4
    assert_hidden_zeros(model, round(0.8 * 480))
    model = mlp()
    fit(model, [keras_lk.SparsityTarget(0.5, end_step=60, per_layer=True)])
    assert keras_lk.sparsity(model)["layers"]["out"]["zeros"] == 8
    assert_hidden_zeros(model, 240)


def test_logs_and_tensorboard(tmp_path):
    model = mlp()
    history = fit(model, [keras_lk.SparsityTarget(0.6, per_layer=True,
                                                  log_dir=tmp_path)], epochs=4)
    assert set(history.history) >= {"sparsity", "sparsity_target"}
    # The default schedule ends after 3/4 of the fit: 48 of 64 steps.
    assert history.history["sparsity_target"][-1] == pytest.approx(0.6)
    events = read(tmp_path)
    assert tags(events, "train") == {
        f"{q}/{layer}" for q in ("sparsity", "sparsity_target", "alpha")
        for layer in ("hidden", "out")}
    assert set(events[("train", "alpha/hidden")]) == {0, 1, 2, 3}
    assert events[("train", "alpha/hidden")][3] == 0.0  # locked: no penalty
    assert events[("train", "alpha/hidden")][0] > 0.0


def test_a_later_fit_without_it_trains_as_before():
    model = mlp()
    fit(model, [keras_lk.SparsityTarget(0.7, end_step=40)], epochs=3)
    fit(model, [], epochs=1)  # the plain proximal step again, no error
    assert 0 < keras_lk.sparsity(model)["total"]["fraction"] < 1


@pytest.mark.parametrize("kwargs, message", [
    ({"target": 0}, "Invalid value for argument `target`. Expected a number "
                    "strictly between 0 and 1. Received: target=0"),
    ({"target": 1.0}, "Received: target=1.0"),
    ({"target": -0.2}, "Received: target=-0.2"),
    ({"target": True}, "Received: target=True"),
    ({"target": "0.5"}, "Received: target='0.5'"),
    ({"target": {}}, "Received: target={}"),
    ({"target": {"d": 2}}, "Received: target['d']=2"),
    ({"target": 0.5, "end_step": -1}, "Received: end_step=-1"),
    ({"target": 0.5, "begin_step": 10, "end_step": 10},
     "Expected an integer > begin_step=10. Received: end_step=10"),
    ({"target": 0.5, "per_layer": "yes"}, "Received: per_layer='yes'"),
    ({"target": 0.5, "log_dir": 3}, "Received: log_dir=3"),
])
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError) as info:
        keras_lk.SparsityTarget(**kwargs)
    assert message in str(info.value)


def test_no_proximal_optimizer_is_an_error_at_the_start_of_fit():
    model = mlp()
    model.compile(keras.optimizers.SGD(0.05), "mse")
    with pytest.raises(ValueError, match="SparsityTarget needs a model "
                       "compiled with keras_lk.ProximalOptimizer"):
        fit(model, [keras_lk.SparsityTarget(0.5)])


def test_no_proximal_regularizer_is_an_error():
    model = keras.Sequential([keras.Input((30,)), keras.layers.Dense(
        1, kernel_regularizer=keras_lk.LkRegularizer(k=1, alpha=0.1))])
    model.compile(keras_lk.ProximalOptimizer(keras.optimizers.SGD(0.05)),
                  "mse")
    with pytest.raises(ValueError, match="found no weight with a proximal "
                       "LkRegularizer"):
        fit(model, [keras_lk.SparsityTarget(0.5)])


def test_a_proximal_regularizer_with_k_above_one_is_an_error():
    with pytest.raises(ValueError, match="a proximal step with k > 1 never "
                       "makes a weight exactly zero. Received: "
                       "LkRegularizer\\(k=2.0"):
        fit(mlp(hidden_k=2.0), [keras_lk.SparsityTarget(0.5)])


def test_a_target_for_an_unknown_layer_is_an_error():
    with pytest.raises(ValueError, match="targets for layers without a "
                       "proximal LkRegularizer \\(k <= 1\\): \\['nope'\\]"):
        fit(mlp(), [keras_lk.SparsityTarget({"nope": 0.5})])


@pytest.mark.slow
def test_works_under_mixed_float16():
    keras.config.set_dtype_policy("mixed_float16")
    model = mlp()
    fit(model, [keras_lk.SparsityTarget(0.75, end_step=60)], epochs=5)
    assert 0.75 <= keras_lk.sparsity(model)["total"]["fraction"] <= 0.76
