"""Monitors leave the model as they found it, as users really train:
a fresh callback per fit, a fit that raises, several callbacks at once."""

import json
import logging
import zipfile

import keras
import numpy as np
import pytest

import keras_lk
from events import read
from helpers import (FailAt, PenaltyTrace, by_hand_penalties,
                     regression_data, regularizers_of, two_layer_model)

# These tests also run under JAX (test_backends.py).
ON_TENSORFLOW = keras.backend.backend() == "tensorflow"
STEP_STATS = True


CALLBACKS = [
    lambda d: keras_lk.LkMonitor(d, step_stats=STEP_STATS),
    lambda d: keras_lk.LkMonitor(d, update_freq=2, pull_batch=regression_data(
        16)),
    lambda d: keras_lk.ZeroCounts(d, step_stats=STEP_STATS),
    lambda d: keras_lk.RegularizationShare(d),
    lambda d: keras_lk.AbsWeightHistograms(d),
]


class RegularizerProbe(keras.callbacks.Callback):
    """Records, during fit, how deep each weight's regularizer is wrapped."""

    def __init__(self, users):
        super().__init__()
        self.users = users
        self.depths = []

    def on_train_batch_end(self, batch, logs=None):
        depths = {}
        for variable in self.model.weights:
            if variable.regularizer is None:
                continue
            regularizer, depth = variable.regularizer, 0
            while regularizer is not self.users[variable.path]:
                regularizer, depth = regularizer.regularizer, depth + 1
            depths[variable.path] = depth
        self.depths.append(depths)


def saved_config(model, path):
    model.save(path)
    with zipfile.ZipFile(path) as archive:
        return json.loads(archive.read("config.json"))


@pytest.mark.slow
@pytest.mark.parametrize("make", CALLBACKS)
def test_after_fit_every_regularizer_is_the_users_own_object(make, tmp_path):
    x, y = regression_data()
    model = two_layer_model(lr=0.0)
    users = regularizers_of(model)
    config = saved_config(model, tmp_path / "before.keras")
    model.fit(x, y, epochs=2, batch_size=16, validation_split=0.25,
              verbose=0, callbacks=[make(tmp_path / "logs")])
    after = regularizers_of(model)
    assert all(after[path] is users[path] for path in users)
    assert model.get_layer("first").kernel_regularizer is users[
        model.get_layer("first").kernel.path]
    assert saved_config(model, tmp_path / "after.keras") == config


def test_a_raising_fit_leaves_an_inert_model_and_the_next_fit_restores(
        tmp_path):
    x, y = regression_data()
    model = two_layer_model(lr=0.05)
    users = regularizers_of(model)
    config = saved_config(model, tmp_path / "before.keras")
    with pytest.raises(RuntimeError, match="boom"):
        model.fit(x, y, epochs=3, verbose=0, callbacks=[
            keras_lk.LkMonitor(tmp_path / "a", step_stats=STEP_STATS),
            FailAt(0)])
    # Inert: the same penalty, and the model saves exactly as before.
    assert sum(float(loss) for loss in model.losses) == pytest.approx(
        sum(by_hand_penalties(model)), rel=1e-6)
    assert saved_config(model, tmp_path / "raised.keras") == config
    loaded = keras.saving.load_model(tmp_path / "raised.keras")
    assert loaded.get_layer("first").kernel_regularizer.get_config() == (
        users[model.get_layer("first").kernel.path].get_config())
    probe, trace = RegularizerProbe(users), PenaltyTrace()
    history = model.fit(x, y, epochs=2, batch_size=8, verbose=0, callbacks=[
        keras_lk.RegularizationShare(tmp_path / "b"), probe, trace])
    # Each epoch's penalty is the mean over its own 8 steps (lr > 0: every
    # step's differs), nothing of the raised fit's steps mixed in.
    means = trace.window_means(8)
    assert len(set(np.round(means, 6))) == 2
    np.testing.assert_allclose(history.history["reg_loss"], means, rtol=1e-5)
    assert {depth for step in probe.depths for depth in step.values()} == {1}
    after = regularizers_of(model)
    assert all(after[path] is users[path] for path in users)


def assert_logged_penalties_follow(log_dir, trace, every):
    """The run's `reg_loss/total` at each log is the mean of the penalties
    the trace saw in that window, at the optimizer's iteration count."""
    logged = read(log_dir)[("train", "reg_loss/total")]
    first = trace.steps[0][0]
    steps = [first + every * (i + 1) for i in range(len(trace.steps) // every)]
    assert sorted(logged) == steps
    np.testing.assert_allclose([logged[s] for s in steps],
                               trace.window_means(every), rtol=1e-5)


def test_three_fresh_monitors_each_log_their_own_fit(tmp_path):
    x, y = regression_data()
    model = two_layer_model(lr=0.05)
    trace = PenaltyTrace()
    for fit in range(3):
        model.fit(x, y, epochs=1, batch_size=8, shuffle=False, verbose=0,
                  callbacks=[keras_lk.RegularizationShare(
                      tmp_path / str(fit), update_freq=2), trace])
        assert_logged_penalties_follow(tmp_path / str(fit), trace, 2)
    assert trace.steps[0][0] == 16  # the third fit's step axis goes on


@pytest.mark.slow
def test_ten_fresh_monitors_grow_nothing_and_never_retrace(tmp_path, caplog):
    # Private on purpose: only tracing counts prove there is no retrace.
    from keras_lk.monitoring.measures import weights as measures
    x, y = regression_data()
    model = two_layer_model(lr=0.01)
    users = regularizers_of(model)
    probe, trace = RegularizerProbe(users), PenaltyTrace()
    functions, traced = set(), None
    with caplog.at_level(logging.WARNING, logger="tensorflow"):
        for fit in range(10):
            callbacks = [keras_lk.LkMonitor(
                tmp_path / str(fit), update_freq=3, step_stats=STEP_STATS,
                pull_batch=(x[:16], y[:16])), probe, trace]
            if fit % 2:
                callbacks.insert(0, keras_lk.ZeroCounts(tmp_path / f"z{fit}"))
            model.fit(x, y, epochs=2, batch_size=16, validation_split=0.25,
                      verbose=0, callbacks=callbacks)
            # Values, not only structure: this fit's logs are its own.
            assert_logged_penalties_follow(tmp_path / str(fit), trace, 3)
            functions.add((id(model.train_function), id(model.test_function)))
            if ON_TENSORFLOW:  # (jax.jit keeps no public trace count)
                count = (measures._compiled_statistics()
                         .experimental_get_tracing_count())
                if fit == 1:  # both settings of the statistics pass seen
                    traced = count
                assert fit < 2 or count == traced
            after = regularizers_of(model)
            assert all(after[path] is users[path] for path in users)
    # No chain: one recorder between the step and the user's object.
    assert {depth for step in probe.depths for depth in step.values()} == {1}
    assert len(functions) == 1  # the compiled steps were never remade
    assert not [r for r in caplog.records if "retracing" in r.getMessage()]


def fit_logs(callbacks, epochs=2, seed=0):
    keras.utils.set_random_seed(seed)
    x, y = regression_data(64)
    model = two_layer_model(lr=0.05)
    model.fit(x, y, epochs=epochs, batch_size=8, validation_split=0.25,
              shuffle=False, verbose=0, callbacks=callbacks)


def assert_same_events(alone, together):
    assert alone.keys() == together.keys()
    for key, steps in alone.items():
        assert steps.keys() == together[key].keys(), key
        for step, value in steps.items():
            np.testing.assert_allclose(together[key][step], value, rtol=1e-6,
                                       err_msg=str(key))


@pytest.mark.slow
def test_two_callbacks_in_one_fit_each_report_what_they_would_alone(tmp_path):
    fit_logs([keras_lk.RegularizationShare(tmp_path / "share_alone")])
    fit_logs([keras_lk.LkMonitor(tmp_path / "monitor_alone", update_freq=3,
                                 step_stats=STEP_STATS)])
    fit_logs([keras_lk.RegularizationShare(tmp_path / "share"),
              keras_lk.LkMonitor(tmp_path / "monitor", update_freq=3,
                                 step_stats=STEP_STATS)])
    assert_same_events(read(tmp_path / "share_alone"), read(tmp_path / "share"))
    monitor = read(tmp_path / "monitor")
    assert_same_events(read(tmp_path / "monitor_alone"), monitor)
    assert set(monitor[("train", "reg_loss/total")]) == {3, 6, 9, 12}
    if STEP_STATS:
        assert set(monitor[("train", "sign_flip_count/first")]) == {
            3, 6, 9, 12}


@pytest.mark.slow
def test_two_zero_counts_with_different_step_stats(tmp_path):
    fit_logs([keras_lk.ZeroCounts(tmp_path / "plain_alone")])
    fit_logs([keras_lk.ZeroCounts(tmp_path / "stats_alone", update_freq=2,
                                  step_stats=True)])
    fit_logs([keras_lk.ZeroCounts(tmp_path / "plain"),
              keras_lk.ZeroCounts(tmp_path / "stats", update_freq=2,
                                  step_stats=True)])
    assert_same_events(read(tmp_path / "plain_alone"), read(tmp_path / "plain"))
    assert_same_events(read(tmp_path / "stats_alone"), read(tmp_path / "stats"))


def test_update_freq_batch_logs_every_batch(tmp_path):
    x, y = regression_data()
    model = two_layer_model(lr=0.01)
    model.fit(x, y, epochs=1, batch_size=16, verbose=0, callbacks=[
        keras_lk.ZeroCounts(tmp_path, update_freq="batch")])
    assert set(read(tmp_path)[("train", "zero_fraction/first")]) == {
        1, 2, 3, 4}


def test_steps_per_execution_windows_and_step_axis(tmp_path):
    x, y = regression_data()
    model = two_layer_model(lr=0.0, steps_per_execution=2)
    history = model.fit(x, y, epochs=2, batch_size=8, shuffle=False,
                        verbose=0, callbacks=[keras_lk.RegularizationShare(
                            tmp_path, update_freq=3)])
    events = read(tmp_path)
    # Hooks fire every 2 steps; a window closes at the first hook at least
    # 3 steps after the last: steps 4 and 8 of each 8-step epoch.
    assert set(events[("train", "reg_loss/total")]) == {4, 8, 12, 16}
    penalty = sum(by_hand_penalties(model))
    for value in events[("train", "reg_loss/total")].values():
        assert value == pytest.approx(penalty, rel=1e-5)
    # The window's mean data loss: the first or the second half of x.
    errors = (model.predict(x, verbose=0) - y) ** 2
    halves = {4: errors[:32].mean(), 8: errors[32:].mean(),
              12: errors[:32].mean(), 16: errors[32:].mean()}
    for step, value in events[("train", "data_loss")].items():
        assert value == pytest.approx(halves[step], rel=1e-4)
    assert history.history["reg_loss"] == pytest.approx([penalty] * 2, rel=1e-5)


@pytest.mark.slow
def test_zero_counts_are_right_for_one_model_after_another(tmp_path):
    # One statistics graph serves every model: each must get its own counts.
    for units, features in ((1, 3), (2, 4), (2, 5), (2, 4)):
        model = keras.Sequential([keras.Input((features,)), keras.layers.Dense(
            units, kernel_initializer="zeros", use_bias=False)])
        model.compile(keras.optimizers.SGD(0.0), "mse")
        history = model.fit(np.ones((4, features)), np.ones((4, units)),
                            verbose=0, callbacks=[keras_lk.LkMonitor(
                                tmp_path / f"{units}x{features}")])
        assert history.history["zero_frac"] == [1.0]
        events = read(tmp_path / f"{units}x{features}")
        assert events[("train", "zero_count/(all layers)")] == {
            0: units * features}


class SignFlipper(keras.callbacks.Callback):
    """kernel[0] turns negative after step 0 of each epoch and positive
    after step 1: one sign flip per epoch, seen by any window that spans
    those steps."""

    def on_train_batch_end(self, batch, logs=None):
        kernel = self.model.get_layer("d").kernel
        value = kernel.numpy()
        if batch in (0, 1):
            value[0, 0] = -0.3 if batch == 0 else 0.3
            kernel.assign(value)


@pytest.mark.slow
@pytest.mark.parametrize("update_freq", ["epoch", 1, 3])
def test_epoch_sign_flips_whatever_other_windows_and_validation(update_freq,
                                                                tmp_path):
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(
        1, name="d", use_bias=False,
        kernel_regularizer=keras_lk.LkRegularizer(k=1, alpha=0.0))])
    model.get_layer("d").kernel.assign(np.array([[0.3], [0.5], [-1.0]]))
    model.compile(keras.optimizers.SGD(0.0), "mse")
    x, y = np.ones((16, 3)), np.zeros((16, 1))
    history = model.fit(x, y, batch_size=4, epochs=2, verbose=0,
                        validation_data=(x, y), callbacks=[
                            SignFlipper(), keras_lk.ZeroCounts(
                                tmp_path, update_freq=update_freq,
                                step_stats=True),
                            keras_lk.LkMonitor(tmp_path / "other",
                                               update_freq=2,
                                               step_stats=True)])
    assert history.history["sign_flip_frac"] == [pytest.approx(1 / 3)] * 2

