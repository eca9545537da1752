"""`LkMonitor(units=True)`: live units per removable group and the live
fraction of the multiply-accumulates, in TensorBoard and in `logs`."""

import keras
import numpy as np
import pytest

import keras_lk
import structure_models
from events import read


class ZeroAUnit(keras.callbacks.Callback):
    """After epoch `epoch`, zeroes unit 0 of `hidden` in every slice."""

    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch != self.epoch:
            return
        hidden, second = (self.model.get_layer(n) for n in ("hidden",
                                                             "second"))
        for variable, index in ((hidden.kernel, np.s_[:, 0]),
                                (hidden.bias, np.s_[0]),
                                (second.kernel, np.s_[0])):
            value = np.array(variable.numpy())
            value[index] = 0
            variable.assign(value)


def test_live_units_and_macs_follow_the_zeros(tmp_path):
    model, x = structure_models.mlp()
    keras_lk.prune_units(model, 0.5)
    model.compile(keras.optimizers.SGD(0.0), "mse")
    y = np.zeros((len(x), 3))
    # The monitor logs before ZeroAUnit runs at the end of epoch 0.
    history = model.fit(x, y, epochs=2, verbose=0, callbacks=[
        keras_lk.LkMonitor(tmp_path, units=True), ZeroAUnit(0)])
    events = read(tmp_path)
    hidden = events[("train", "live_units/hidden")]
    assert hidden == {0: 8.0, 1: 7.0}
    assert events[("train", "live_units/second")] == {0: 6.0, 1: 6.0}
    fractions = events[("train", "live_macs_fraction/(all layers)")]
    dense = 10 * 16 + 16 * 12 + 12 * 3
    assert fractions[0] == pytest.approx((10 * 8 + 8 * 6 + 6 * 3) / dense)
    assert fractions[1] == pytest.approx((10 * 7 + 7 * 6 + 6 * 3) / dense)
    assert fractions[1] == pytest.approx(
        keras_lk.macs(model, live=True) / dense)
    assert history.history["live_macs_frac"] == pytest.approx(
        [fractions[0], fractions[1]])
    # The histogram of the unit norms: 16 units, 8 of them at norm 0 at
    # the first log, then 9; the buckets end at the largest norm.
    norms = events[("train", "unit_norms/hidden")]
    assert norms[0][:, 2].sum() == 16 and norms[0][0, 2] == 8
    assert norms[1][0, 2] == 9
    group = next(g for g in keras_lk.unit_groups(model) if g.name == "hidden")
    assert norms[1][-1, 1] == pytest.approx(group.norms(2).max())


def test_units_are_off_by_default_and_refused_when_not_a_bool(tmp_path):
    model, x = structure_models.mlp()
    model.compile("sgd", "mse")
    history = model.fit(x, np.zeros((len(x), 3)), verbose=0,
                        callbacks=[keras_lk.LkMonitor(tmp_path)])
    assert "live_macs_frac" not in history.history
    with pytest.raises(ValueError, match="units='yes'"):
        keras_lk.LkMonitor(tmp_path, units="yes")


class Subclassed(keras.Model):
    def __init__(self):
        super().__init__()
        self.dense = keras.layers.Dense(3)

    def call(self, x):
        return self.dense(x)


def test_a_model_without_a_graph_is_refused_and_left_as_it_was(tmp_path):
    model = Subclassed()
    model.compile("sgd", "mse")
    x, y = np.ones((4, 2)), np.ones((4, 3))
    model.fit(x, y, verbose=0)
    step = model.train_function
    with pytest.raises(ValueError, match="subclassed"):
        model.fit(x, y, verbose=0,
                  callbacks=[keras_lk.LkMonitor(tmp_path, units=True)])
    assert model.train_function is step  # nothing installed
    model.fit(x, y, verbose=0)


def test_a_new_monitor_per_fit_under_jit_compile(tmp_path):
    """As users train: a fresh LkMonitor(units=True) for each fit in a
    loop, on a model compiled with jit_compile=True."""
    model, x = structure_models.mlp()
    keras_lk.prune_units(model, 0.5)
    model.compile(keras.optimizers.SGD(0.0), "mse", jit_compile=True)
    y = np.zeros((len(x), 3))
    expected = keras_lk.macs(model, live=True) / keras_lk.macs(model)
    for run in range(2):
        history = model.fit(x, y, epochs=1, verbose=0, callbacks=[
            keras_lk.LkMonitor(tmp_path / str(run), units=True)])
        assert history.history["live_macs_frac"] == pytest.approx(
            [expected])
        assert read(tmp_path / str(run))[
            ("train", "live_units/hidden")] == {0: 8.0}
