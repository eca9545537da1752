import os

import keras
import numpy as np
import pytest

import keras_lk
from keras_lk import LkRegularizer
from events import read, tags
from helpers import (ALPHA, FailAt, by_hand_penalties,
                     regression_data as data, shared_and_frozen_model,
                     two_layer_model)

def test_lk_monitor_writes_exact_tags_and_steps(tmp_path):
    x, y = data()
    model = two_layer_model()
    model.fit(x, y, epochs=2, batch_size=16, validation_split=0.25, verbose=0,
              callbacks=[keras_lk.LkMonitor(tmp_path, step_stats=True)])
    events = read(tmp_path)
    layers = ("first", "second", "(all layers)")
    expected_train = (
        {f"{q}/{l}" for q in ("zero_fraction", "zero_count",
                              "exact_zero_fraction", "exact_zero_count",
                              "stable_zero_fraction", "stable_zero_count",
                              "sign_flip_fraction", "sign_flip_count",
                              "max_abs_weight")
         for l in layers}
        | {f"{q}/{l}/kernel" for q in ("abs_weights", "log10_abs_weights")
           for l in ("first", "second")}
        | {"reg_loss/first", "reg_loss/second", "reg_loss/total",
           "reg_share/first", "reg_share/second", "reg_share/total",
           "data_loss", "penalty_pull/first", "penalty_pull/second"})
    assert tags(events, "train") == expected_train
    assert tags(events, "validation") == {
        "reg_loss/first", "reg_loss/second", "reg_loss/total",
        "reg_share/first", "reg_share/second", "reg_share/total",
        "data_loss"}
    for tag in expected_train:
        assert set(events[("train", tag)]) == {0, 1}, tag


def test_share_with_zero_learning_rate_equals_hand_computation(tmp_path):
    x, y = data()
    model = two_layer_model(lr=0.0)
    history = model.fit(x, y, epochs=2, batch_size=16, validation_split=0.25,
                        verbose=0, callbacks=[keras_lk.LkMonitor(tmp_path)])
    first, second = by_hand_penalties(model)
    penalty = first + second
    x_train, y_train = x[:48], y[:48]
    x_val, y_val = x[48:], y[48:]
    data_loss = np.mean((model.predict(x_train, verbose=0) - y_train) ** 2)
    val_data_loss = np.mean((model.predict(x_val, verbose=0) - y_val) ** 2)
    for epoch in range(2):
        assert history.history["reg_loss"][epoch] == pytest.approx(penalty,
                                                                   rel=1e-5)
        assert history.history["reg_share"][epoch] == pytest.approx(
            penalty / (data_loss + penalty), rel=1e-5)
        assert history.history["val_reg_share"][epoch] == pytest.approx(
            penalty / (val_data_loss + penalty), rel=1e-5)
        assert history.history["val_reg_loss"][epoch] == pytest.approx(
            penalty, rel=1e-5)
    events = read(tmp_path)
    assert events[("train", "reg_loss/first")][1] == pytest.approx(first, rel=1e-5)
    assert events[("train", "reg_share/second")][1] == pytest.approx(
        second / (data_loss + penalty), rel=1e-5)
    assert events[("train", "data_loss")][0] == pytest.approx(data_loss, rel=1e-4)
    assert events[("validation", "reg_share/total")][0] == pytest.approx(
        penalty / (val_data_loss + penalty), rel=1e-5)


class PenaltyTrace(keras.callbacks.Callback):
    """Records, before each step, the penalty the step will add to its loss."""

    def __init__(self):
        super().__init__()
        self.penalties = []

    def on_train_batch_begin(self, batch, logs=None):
        self.penalties.append(sum(float(l) for l in self.model.losses))


def test_epoch_share_is_mean_penalty_over_mean_loss_while_training(tmp_path):
    x, y = data()
    model = two_layer_model(lr=0.05)
    trace = PenaltyTrace()
    history = model.fit(x, y, epochs=2, batch_size=16, verbose=0,
                        callbacks=[trace, keras_lk.RegularizationShare(tmp_path)])
    for epoch in range(2):
        steps = trace.penalties[epoch * 4:(epoch + 1) * 4]
        assert history.history["reg_loss"][epoch] == pytest.approx(
            np.mean(steps), rel=1e-5)
        assert history.history["reg_share"][epoch] == pytest.approx(
            np.mean(steps) / history.history["loss"][epoch], rel=1e-5)


class BatchLosses(keras.callbacks.Callback):
    """Keeps Keras's batch-level (running mean) losses."""

    def __init__(self):
        super().__init__()
        self.running = []

    def on_train_batch_end(self, batch, logs=None):
        self.running.append(float(logs["loss"]))


def test_batch_windows_undo_the_running_mean(tmp_path):
    x, y = data()
    model = two_layer_model(lr=0.05)
    trace = PenaltyTrace()
    losses = BatchLosses()
    window = 2
    monitor = keras_lk.LkMonitor(tmp_path, update_freq=window)
    model.fit(x, y, epochs=2, batch_size=16, verbose=0,
              callbacks=[trace, monitor, losses])
    per_step = []
    for epoch in range(2):
        running = losses.running[epoch * 4:(epoch + 1) * 4]
        sums = np.array(running) * np.arange(1, 5)
        per_step.extend(np.diff(np.concatenate([[0.0], sums])))
    events = read(tmp_path)
    shares = events[("train", "reg_share/total")]
    assert sorted(shares) == [2, 4, 6, 8]  # optimizer iterations
    for step, share in shares.items():
        steps = slice(step - window, step)
        expected = np.mean(trace.penalties[steps]) / np.mean(per_step[steps])
        assert share == pytest.approx(expected, rel=1e-4), step


def test_logs_keys_reach_history_and_csv_logger(tmp_path):
    x, y = data()
    model = two_layer_model()
    csv_path = tmp_path / "log.csv"
    history = model.fit(
        x, y, epochs=1, validation_split=0.25, verbose=0,
        callbacks=[keras_lk.LkMonitor(tmp_path / "tb", step_stats=True),
                   keras.callbacks.CSVLogger(str(csv_path))])
    assert {"reg_loss", "reg_share", "zero_frac", "stable_zero_frac",
            "val_reg_loss", "val_reg_share"} <= set(history.history)
    header = csv_path.read_text().splitlines()[0].split(",")
    assert {"reg_loss", "reg_share", "zero_frac", "val_reg_share"} <= set(header)


def test_zero_counts_exact_and_near_and_relative(tmp_path):
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(
        3, name="d", use_bias=False)])
    model.get_layer("d").kernel.assign(
        np.array([[0.0, 1e-4, 0.5], [0.0, -2.0, 0.002]], "float32"))
    model.compile(keras.optimizers.SGD(0.0), "mse")
    fit = dict(x=np.zeros((4, 2)), y=np.zeros((4, 3)), verbose=0)
    history = model.fit(**fit, callbacks=[keras_lk.ZeroCounts(tmp_path / "a")])
    assert history.history["zero_frac"] == [pytest.approx(3 / 6)]
    events = read(tmp_path / "a")
    assert events[("train", "exact_zero_count/d")] == {0: 2.0}
    assert events[("train", "zero_count/d")] == {0: 3.0}
    assert events[("train", "exact_zero_fraction/(all layers)")] == {
        0: pytest.approx(2 / 6)}
    history = model.fit(**fit, callbacks=[keras_lk.ZeroCounts(
        tmp_path / "b", tol=1e-2, relative_tol=True)])  # |w| <= 0.02
    assert history.history["zero_frac"] == [pytest.approx(4 / 6)]


def test_histograms_are_exact_counts_adding_up(tmp_path):
    model = keras.Sequential([keras.Input((50,)), keras.layers.Dense(
        40, name="d")])
    kernel = np.random.default_rng(0).standard_normal((50, 40)).astype("float32")
    kernel[:10] = 0.0
    model.get_layer("d").kernel.assign(kernel)
    model.compile(keras.optimizers.SGD(0.0), "mse")
    model.fit(np.zeros((4, 50)), np.zeros((4, 40)), verbose=0,
              callbacks=[keras_lk.AbsWeightHistograms(tmp_path, buckets=20)])
    events = read(tmp_path)
    assert tags(events, "train") == {"abs_weights/d/kernel",
                                     "log10_abs_weights/d/kernel"}
    linear = events[("train", "abs_weights/d/kernel")][0]
    assert linear.shape == (20, 3)
    assert linear[:, 2].sum() == 2000
    np.testing.assert_array_equal(linear[:, 2], np.round(linear[:, 2]))
    edges = np.linspace(0, np.abs(kernel).max(), 21)
    expected, _ = np.histogram(np.abs(kernel), bins=edges)
    np.testing.assert_array_equal(linear[:, 2], expected)
    logs = events[("train", "log10_abs_weights/d/kernel")][0]
    assert logs.shape == (21, 3)
    assert logs[0, 2] == 400  # the exact zeros' own bucket
    assert logs[0, 1] == logs[1, 0]  # which sits just below the decades
    assert logs[:, 2].sum() == 2000
    nonzero = np.log10(np.abs(kernel[kernel != 0]))
    expected, _ = np.histogram(nonzero, bins=np.linspace(logs[1, 0],
                                                         logs[-1, 1], 21))
    np.testing.assert_array_equal(logs[1:, 2], expected)


def test_nan_and_inf_weights_are_counted_not_fatal(tmp_path):
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(
        2, name="d", use_bias=False)])
    model.get_layer("d").kernel.assign(
        np.array([[np.nan, np.inf], [1.0, 0.0]], "float32"))
    monitor = keras_lk.LkMonitor(tmp_path)
    monitor.set_model(model)
    monitor.on_train_begin()
    monitor.on_epoch_begin(0)
    logs = {}
    monitor.on_epoch_end(0, logs)
    monitor.on_train_end()
    assert logs["zero_frac"] == 0.25
    events = read(tmp_path)
    assert events[("train", "nonfinite_count/d")] == {0: 2.0}
    assert events[("train", "exact_zero_count/d")] == {0: 1.0}
    assert events[("train", "abs_weights/d/kernel")][0][:, 2].sum() == 2
    assert events[("train", "log10_abs_weights/d/kernel")][0][:, 2].sum() == 2


def test_nested_shared_and_frozen_layers(tmp_path):
    x, y = data()
    model = shared_and_frozen_model()
    model.fit(x, y, epochs=1, verbose=0, callbacks=[keras_lk.LkMonitor(tmp_path)])
    train = tags(read(tmp_path), "train")
    assert {t for t in train if t.startswith("zero_count/")} == {
        "zero_count/encoder/enc", "zero_count/shared", "zero_count/frozen",
        "zero_count/head", "zero_count/(all layers)"}
    assert {t for t in train if t.startswith("reg_loss/")} == {
        "reg_loss/encoder/enc", "reg_loss/total"}
    events = read(tmp_path)
    assert events[("train", "exact_zero_count/(all layers)")][0] == 0.0
    # By value: the shared layer's kernel is counted once, the frozen one's
    # too, and the total is the sum of the layers' kernels.
    sizes = {"encoder/enc": 16, "shared": 16, "frozen": 8, "head": 2}
    for layer, size in sizes.items():
        kernel = (model.get_layer("encoder").get_layer("enc") if "/" in layer
                  else model.get_layer(layer)).kernel.numpy()
        assert kernel.size == size
        histogram = events[("train", f"abs_weights/{layer}/kernel")][0]
        assert histogram[:, 2].sum() == size, layer
        assert events[("train", f"max_abs_weight/{layer}")][0] == (
            pytest.approx(np.abs(kernel).max())), layer
        assert events[("train", f"zero_count/{layer}")][0] == np.sum(
            np.abs(kernel) <= np.float32(1e-3)), layer
    assert events[("train", "zero_fraction/(all layers)")][0] == pytest.approx(
        sum(events[("train", f"zero_count/{layer}")][0] for layer in sizes)
        / sum(sizes.values()))


class Subclassed(keras.Model):
    def __init__(self):
        super().__init__()
        self.hidden = keras.layers.Dense(
            3, kernel_regularizer=LkRegularizer(k=1.5, alpha=0.1))
        self.out = keras.layers.Dense(1)

    def call(self, x):
        return self.out(self.hidden(x))


def test_subclassed_model(tmp_path):
    x, y = data()
    model = Subclassed()
    model.compile(keras.optimizers.SGD(0.0), "mse")
    history = model.fit(x, y, epochs=1, verbose=0,
                        callbacks=[keras_lk.LkMonitor(tmp_path)])
    penalty = 0.1 * np.mean(np.abs(model.hidden.kernel.numpy()) ** 1.5)
    assert history.history["reg_loss"][0] == pytest.approx(penalty, rel=1e-5)
    train = tags(read(tmp_path), "train")
    assert {"abs_weights/dense/kernel", "abs_weights/dense_1/kernel"} <= train


def test_two_fits_and_initial_epoch_continue_the_step_axis(tmp_path):
    x, y = data()
    model = two_layer_model(lr=0.01)
    monitor = keras_lk.LkMonitor(tmp_path)
    model.fit(x, y, epochs=2, verbose=0, callbacks=[monitor])
    history = model.fit(x, y, epochs=4, initial_epoch=2, verbose=0,
                        callbacks=[monitor])
    assert len(history.history["reg_share"]) == 2
    events = read(tmp_path)
    assert set(events[("train", "reg_share/total")]) == {0, 1, 2, 3}
    assert set(events[("train", "abs_weights/first/kernel")]) == {0, 1, 2, 3}


def test_a_fresh_callback_on_a_trained_model_still_sees_penalties(tmp_path):
    x, y = data()
    model = two_layer_model(lr=0.0)
    model.fit(x, y, epochs=1, verbose=0)
    model.evaluate(x, y, verbose=0)
    history = model.fit(x, y, epochs=1, validation_data=(x, y), verbose=0,
                        callbacks=[keras_lk.RegularizationShare(tmp_path)])
    penalty = sum(by_hand_penalties(model))
    assert history.history["reg_loss"][0] == pytest.approx(penalty, rel=1e-5)
    assert history.history["val_reg_loss"][0] == pytest.approx(penalty, rel=1e-5)


def test_batch_frequency_writes_at_optimizer_iterations(tmp_path):
    x, y = data()
    model = two_layer_model(lr=0.01)
    model.fit(x, y, epochs=2, batch_size=16, verbose=0,
              callbacks=[keras_lk.ZeroCounts(tmp_path, update_freq=3)])
    events = read(tmp_path)
    assert set(events[("train", "zero_fraction/first")]) == {3, 6}


KILLED_MID_FIT = """
import os, signal, sys
import keras, keras_lk
sys.path.insert(0, "tests")
from helpers import regression_data as data, two_layer_model


class Kill(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        if epoch == 1:  # no cleanup, no writer freed: only flushed events
            os.kill(os.getpid(), signal.SIGKILL)


x, y = data()
model = two_layer_model(lr=0.01)
# Four histograms a log: fewer than the writer's queue holds before it
# writes on its own, so only the flush at every log puts them on disk.
model.fit(x, y, epochs=4, verbose=0,
          callbacks=[keras_lk.AbsWeightHistograms(sys.argv[1]), Kill()])
"""


@pytest.mark.slow
def test_events_are_on_disk_when_the_process_is_killed_mid_fit(tmp_path):
    import signal
    import subprocess
    import sys
    result = subprocess.run(
        [sys.executable, "-c", KILLED_MID_FIT, str(tmp_path)],
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
        capture_output=True, text=True, check=False)
    assert result.returncode == -signal.SIGKILL, result.stderr[-2000:]
    events = read(tmp_path)
    assert set(events[("train", "abs_weights/first/kernel")]) == {0}
    assert set(events[("train", "log10_abs_weights/second/kernel")]) == {0}


def test_events_are_on_disk_when_fit_raises(tmp_path):
    x, y = data()
    model = two_layer_model(lr=0.01)
    with pytest.raises(RuntimeError, match="boom"):
        model.fit(x, y, epochs=3, verbose=0,
                  callbacks=[keras_lk.LkMonitor(tmp_path), FailAt(1)])
    events = read(tmp_path)
    assert set(events[("train", "reg_share/total")]) == {0, 1}


def test_coexists_with_keras_tensorboard_on_one_log_dir(tmp_path):
    x, y = data()
    model = two_layer_model(lr=0.01)
    model.fit(x, y, epochs=2, validation_split=0.25, verbose=0, callbacks=[
        keras_lk.LkMonitor(tmp_path),
        keras.callbacks.TensorBoard(str(tmp_path), histogram_freq=1)])
    events = read(tmp_path)
    for run in ("train", "validation"):
        assert {"epoch_loss", "epoch_reg_share", "reg_share/total"} <= tags(
            events, run)
        assert set(events[(run, "epoch_loss")]) == set(
            events[(run, "reg_share/total")]) == {0, 1}


def test_no_event_file_without_writing(tmp_path):
    monitor = keras_lk.LkMonitor(tmp_path / "never")
    assert not (tmp_path / "never").exists()
    del monitor


@pytest.mark.parametrize("cls", [keras_lk.LkMonitor, keras_lk.ZeroCounts,
                                 keras_lk.AbsWeightHistograms,
                                 keras_lk.RegularizationShare])
@pytest.mark.parametrize("update_freq", [0, -3, "step", 1.5, True])
def test_bad_update_freq(cls, update_freq, tmp_path):
    with pytest.raises(ValueError) as info:
        cls(tmp_path, update_freq=update_freq)
    assert str(info.value) == (
        'Invalid value for argument `update_freq`. Expected "epoch", "batch" '
        f"or an integer >= 1 (every N batches). Received: update_freq="
        f"{update_freq!r}")


@pytest.mark.parametrize("kwargs, message", [
    ({"tol": -1e-3}, "Invalid value for argument `tol`. Expected a finite "
                     "number >= 0. Received: tol=-0.001"),
    ({"tol": float("nan")}, "Received: tol=nan"),
    ({"relative_tol": "yes"}, "Received: relative_tol='yes'"),
    ({"weights": "biases"}, "Expected one of 'kernels', 'all'. "
                            "Received: weights='biases'"),
    ({"buckets": 0}, "Received: buckets=0"),
])
def test_bad_weight_options(kwargs, message, tmp_path):
    with pytest.raises(ValueError) as info:
        keras_lk.LkMonitor(tmp_path, **kwargs)
    assert message in str(info.value)


def test_bad_log_dir_type():
    with pytest.raises(ValueError, match="Received: log_dir=None"):
        keras_lk.LkMonitor(None)


def test_unwritable_log_dir_is_an_os_error_at_train_start(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    x, y = data()
    model = two_layer_model()
    with pytest.raises(OSError, match="Cannot write TensorBoard logs to "
                       "log_dir="):
        model.fit(x, y, verbose=0,
                  callbacks=[keras_lk.LkMonitor(blocker / "logs")])


def test_all_weights_option_includes_biases(tmp_path):
    x, y = data()
    model = two_layer_model()
    model.fit(x, y, verbose=0, callbacks=[keras_lk.LkMonitor(
        tmp_path, weights="all")])
    events = read(tmp_path)
    assert "abs_weights/first/bias" in tags(events, "train")
    for layer in ("first", "second"):
        kernel = model.get_layer(layer).kernel.numpy()
        bias = model.get_layer(layer).bias.numpy()
        histogram = events[("train", f"abs_weights/{layer}/bias")][0]
        assert histogram[:, 2].sum() == bias.size, layer
        assert histogram[-1, 1] == pytest.approx(np.abs(bias).max()), layer
        # The layer's counts include its bias, by value.
        assert events[("train", f"zero_count/{layer}")][0] == np.sum(
            np.abs(kernel) <= np.float32(1e-3)) + np.sum(
            np.abs(bias) <= np.float32(1e-3)), layer


def test_importable_from_callbacks_module():
    from keras_lk.monitoring import callbacks
    assert set(callbacks.__all__) == {"AbsWeightHistograms", "LkMonitor",
                                      "RegularizationShare", "ZeroCounts"}
    assert callbacks.LkMonitor is keras_lk.LkMonitor


class _NonChiefExtended:
    should_checkpoint = False  # what multi-worker strategies say off chief

    def __init__(self, extended):
        self._extended = extended

    def __getattr__(self, name):
        return getattr(self._extended, name)


class _NonChiefStrategy:
    """The default strategy, as a non-chief worker's strategy answers."""

    def __init__(self, strategy):
        self._strategy = strategy
        self.extended = _NonChiefExtended(strategy.extended)

    def __getattr__(self, name):
        return getattr(self._strategy, name)


class NonChiefModel(keras.Sequential):
    @property
    def distribute_strategy(self):
        import tensorflow as tf
        return _NonChiefStrategy(tf.distribute.get_strategy())


def test_a_non_chief_worker_logs_but_writes_nothing(tmp_path):
    x, y = data()
    model = NonChiefModel([keras.Input((4,)), keras.layers.Dense(
        1, kernel_regularizer=LkRegularizer(k=1, alpha=ALPHA))])
    model.compile(keras.optimizers.SGD(0.0), "mse")
    history = model.fit(x, y, epochs=1, verbose=0,
                        callbacks=[keras_lk.LkMonitor(tmp_path / "logs")])
    penalty = ALPHA * np.mean(np.abs(model.layers[0].kernel.numpy()))
    loss = np.mean((model.predict(x, verbose=0) - y) ** 2) + penalty
    assert history.history["reg_loss"][0] == pytest.approx(penalty, rel=1e-5)
    assert history.history["reg_share"][0] == pytest.approx(penalty / loss,
                                                            rel=1e-4)
    assert history.history["zero_frac"] == [0.0]
    assert not any(files for _, _, files in os.walk(tmp_path / "logs"))


def test_the_chief_writes(tmp_path):
    x, y = data()
    two_layer_model().fit(x, y, epochs=1, verbose=0, callbacks=[
        keras_lk.LkMonitor(tmp_path / "logs")])
    assert {"reg_share/total", "zero_fraction/first"} <= tags(
        read(tmp_path / "logs"), "train")


class Flicker(keras.callbacks.Callback):
    """Makes kernel[1] nonzero for steps 1 and 2 of each epoch, else 0."""

    def on_train_batch_end(self, batch, logs=None):
        kernel = self.model.get_layer("d").kernel
        value = kernel.numpy()
        value[1, 0] = 0.5 if batch == 0 else 0.0
        kernel.assign(value)


@pytest.mark.parametrize("cls", [keras_lk.ZeroCounts, keras_lk.LkMonitor])
def test_stable_zeros_are_zero_at_every_step_since_the_last_log(cls, tmp_path):
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(
        1, name="d", use_bias=False,
        kernel_regularizer=LkRegularizer(k=2, alpha=0.0))])
    model.get_layer("d").kernel.assign(np.array([[0.0], [0.0], [1.0]]))
    model.compile(keras.optimizers.SGD(0.0), "mse")
    history = model.fit(np.ones((16, 3)), np.zeros((16, 1)), batch_size=4,
                        epochs=2, verbose=0,
                        callbacks=[Flicker(), cls(tmp_path, step_stats=True)])
    events = read(tmp_path)
    assert events[("train", "exact_zero_count/d")] == {0: 2.0, 1: 2.0}
    assert events[("train", "stable_zero_count/d")] == {0: 1.0, 1: 1.0}
    assert history.history["stable_zero_frac"] == [pytest.approx(1 / 3)] * 2


def test_stable_zeros_track_only_regularized_weights(tmp_path):
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(
        1, name="d", kernel_initializer="zeros")])
    model.compile(keras.optimizers.SGD(0.0), "mse")
    history = model.fit(np.ones((4, 3)), np.zeros((4, 1)), verbose=0,
                        callbacks=[keras_lk.ZeroCounts(tmp_path,
                                                       step_stats=True)])
    assert history.history["stable_zero_frac"] == [0.0]
    assert "stable_zero_count/d" not in tags(read(tmp_path), "train")


class SignFlipper(keras.callbacks.Callback):
    """kernel[0] flips sign after step 0 and back after step 1; kernel[1]
    goes from positive to zero; kernel[2] stays put."""

    def on_train_batch_end(self, batch, logs=None):
        kernel = self.model.get_layer("d").kernel
        value = kernel.numpy()
        if batch == 0:
            value[0, 0], value[1, 0] = -0.3, 0.0
        elif batch == 1:
            value[0, 0] = 0.3
        kernel.assign(value)


def test_sign_flips_count_changes_within_the_window(tmp_path):
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(
        1, name="d", use_bias=False,
        kernel_regularizer=LkRegularizer(k=1, alpha=0.0))])
    model.get_layer("d").kernel.assign(np.array([[0.3], [0.5], [-1.0]]))
    model.compile(keras.optimizers.SGD(0.0), "mse")
    history = model.fit(np.ones((16, 3)), np.zeros((16, 1)), batch_size=4,
                        epochs=2, verbose=0,
                        callbacks=[SignFlipper(),
                                   keras_lk.LkMonitor(tmp_path, step_stats=True)])
    events = read(tmp_path)
    # Epoch 0: kernel[0] was +, -, + (a flip, though + again at the log);
    # epoch 1 repeats it. A move to zero is not a flip.
    assert events[("train", "sign_flip_count/d")] == {0: 1.0, 1: 1.0}
    assert history.history["sign_flip_frac"] == [pytest.approx(1 / 3)] * 2
    assert events[("train", "max_abs_weight/(all layers)")][1] == 1.0


def test_step_stats_are_off_by_default(tmp_path):
    x, y = data()
    history = two_layer_model().fit(x, y, verbose=0, callbacks=[
        keras_lk.LkMonitor(tmp_path)])
    assert "sign_flip_frac" not in history.history
    assert "stable_zero_frac" not in history.history
    assert not {t for t in tags(read(tmp_path), "train")
                if t.startswith(("sign_flip", "stable_zero"))}


def test_penalty_pull_and_its_ratio_to_the_data_loss(tmp_path):
    x, y = data()
    model = two_layer_model(lr=0.0)
    batch = (x[:16], y[:16])
    model.fit(x, y, verbose=0, callbacks=[
        keras_lk.RegularizationShare(tmp_path, pull_batch=batch)])
    events = read(tmp_path)
    first = model.get_layer("first").kernel.numpy()
    second = model.get_layer("second").kernel.numpy()
    # d/dw alpha mean|w| = alpha sign(w) / n; d/dw alpha sum w^2 = 2 alpha w.
    assert events[("train", "penalty_pull/first")][0] == pytest.approx(
        ALPHA / first.size, rel=1e-5)
    assert events[("train", "penalty_pull/second")][0] == pytest.approx(
        np.mean(np.abs(2 * ALPHA * second)), rel=1e-5)
    # d/dW1 of mean((x W1 + b1) W2 + b2 - y)^2, by hand (linear layers).
    bx, by = (np.asarray(part, "float64") for part in batch)
    b1 = model.get_layer("first").bias.numpy()
    b2 = model.get_layer("second").bias.numpy()
    residual = 2.0 * ((bx @ first + b1) @ second + b2 - by) / by.size
    data_pull = np.mean(np.abs(bx.T @ (residual @ second.T)))
    assert events[("train", "penalty_pull_ratio/first")][0] == pytest.approx(
        (ALPHA / first.size) / data_pull, rel=1e-4)


def test_proximal_penalty_pull_is_that_of_the_gradient_penalty(tmp_path):
    x, y = data()
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(
        2, name="d", kernel_regularizer=LkRegularizer(k=1, alpha=0.4,
                                                      proximal=True))])
    model.compile(keras_lk.ProximalOptimizer(keras.optimizers.SGD(0.0)), "mse")
    model.fit(x, y[:, [0, 0]], verbose=0,
              callbacks=[keras_lk.RegularizationShare(tmp_path)])
    assert read(tmp_path)[("train", "penalty_pull/d")][0] == pytest.approx(
        0.4 / 8, rel=1e-5)


@pytest.mark.parametrize("pull_batch", ["batch", (1, 2, 3)])
def test_bad_pull_batch(pull_batch, tmp_path):
    with pytest.raises(ValueError, match="Invalid value for argument "
                       "`pull_batch`. Expected None or a tuple"):
        keras_lk.LkMonitor(tmp_path, pull_batch=pull_batch)


def test_bad_step_stats(tmp_path):
    with pytest.raises(ValueError, match="Received: step_stats='no'"):
        keras_lk.ZeroCounts(tmp_path, step_stats="no")


def test_the_statistics_graph_is_traced_once_across_fits(tmp_path):
    x, y = data()
    model = two_layer_model(lr=0.01)
    monitor = keras_lk.LkMonitor(tmp_path, step_stats=True)
    for _ in range(3):
        model.fit(x, y, epochs=1, verbose=0, callbacks=[monitor])
    # Private on purpose: only the tracing count proves there is no retrace.
    from keras_lk.monitoring.measures import weights as measures
    traced = measures._compiled_statistics().experimental_get_tracing_count()
    for _ in range(3):
        model.fit(x, y, epochs=1, verbose=0, callbacks=[
            keras_lk.LkMonitor(tmp_path, step_stats=True)])
    assert measures._compiled_statistics().experimental_get_tracing_count() == traced
