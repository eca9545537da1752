"""MirroredStrategy over two logical CPU devices, in a fresh process
(logical devices must be set before TensorFlow starts)."""

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras, keras_lk
    sys.path.insert(0, "tests")
    from events import read
    from helpers import (proximal_model, regression_data,
                         sparse_regression_data, two_layer_model)

    mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    assert mirrored.num_replicas_in_sync == 2
    out = {}
    for name, strategy in (("single", tf.distribute.get_strategy()),
                           ("mirrored", mirrored)):
        x, y = regression_data()
        keras.utils.set_random_seed(0)
        with strategy.scope():
            model = two_layer_model(lr=0.05)
        log_dir = f"{sys.argv[1]}/{name}"
        history = model.fit(
            x, y, epochs=2, batch_size=16, validation_split=0.25,
            shuffle=False, verbose=0,
            callbacks=[keras_lk.LkMonitor(log_dir, step_stats=True,
                                          units=True)])
        events = read(log_dir)
        x, y = sparse_regression_data()
        keras.utils.set_random_seed(0)
        with strategy.scope():
            proximal = proximal_model()
            proximal.compile(keras_lk.ProximalOptimizer(
                keras.optimizers.SGD(0.1)), "mse")
        proximal.fit(x, y, epochs=5, batch_size=32, shuffle=False, verbose=0)
        # Structured pruning of the mirrored model's variables.
        keras_lk.prune_units(model, 0.5)
        small = keras_lk.strip(model, shrink=True)
        few = regression_data()[0][:8]
        # Training toward units: the group step and its controller.
        keras.utils.set_random_seed(0)
        x, y = regression_data()
        with strategy.scope():
            grouped = keras.Sequential([
                keras.Input((x.shape[1],)),
                keras.layers.Dense(16, activation="relu", name="hidden"),
                keras.layers.Dense(y.shape[1], name="head")])
            keras_lk.attach(grouped, keras_lk.LkRegularizer(
                0.5, 1e-3, proximal=True), structure="units")
            grouped.compile(keras_lk.ProximalOptimizer(
                keras.optimizers.SGD(0.05)), "mse")
        grouped.fit(x, y, epochs=3, batch_size=16, shuffle=False, verbose=0,
                    callbacks=[keras_lk.SparsityTarget(0.5,
                                                       structure="units")])
        # Units ranked across two groups toward a share of the MACs.
        keras.utils.set_random_seed(0)
        with strategy.scope():
            ranked = keras.Sequential([
                keras.Input((x.shape[1],)),
                keras.layers.Dense(16, activation="relu", name="a"),
                keras.layers.Dense(8, activation="relu", name="b"),
                keras.layers.Dense(y.shape[1], name="head")])
            keras_lk.attach(ranked, keras_lk.LkRegularizer(
                0, 1e-3, proximal=True), structure="units")
            ranked.compile(keras_lk.ProximalOptimizer(
                keras.optimizers.SGD(0.05)), "mse")
        ranked.fit(x, y, epochs=3, batch_size=16, shuffle=False, verbose=0,
                   callbacks=[keras_lk.SparsityTarget(
                       structure="units", target_macs=0.5,
                       allocation="adaptive")])
        out[name] = {
            "ranked_units": [g.live() for g in keras_lk.unit_groups(ranked)],
            "ranked_macs": keras_lk.macs(ranked, live=True)
                           / keras_lk.macs(ranked),
            "grouped_units": [g.live() for g in
                              keras_lk.unit_groups(grouped)],
            "grouped": grouped.get_layer("hidden").kernel.numpy().ravel(
                ).tolist(),
            "units": small.get_layer("first").units,
            "pruned": model.predict(few, verbose=0).ravel().tolist(),
            "shrunk": small.predict(few, verbose=0).ravel().tolist(),
            "history": history.history,
            "share_steps": sorted(events[("train", "reg_share/total")]),
            "flips": events[("train", "sign_flip_count/(all layers)")],
            "kernel": proximal.get_layer("d").kernel.numpy().ravel().tolist(),
            "monitored": [w.ravel().tolist() for w in model.get_weights()],
        }
    print(json.dumps(out))
""")


@pytest.mark.slow
def test_mirrored_strategy_on_two_logical_cpus(tmp_path):
    result = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    single, mirrored = out["single"], out["mirrored"]
    history = mirrored["history"]
    assert mirrored["share_steps"] == [0, 1]
    # Two replicas train as one device: the same numbers, within float noise.
    for key in ("loss", "val_loss", "reg_loss", "reg_share", "val_reg_loss",
                "sign_flip_frac", "zero_frac", "live_macs_frac"):
        assert history[key] == pytest.approx(single["history"][key],
                                             rel=1e-3, abs=1e-6), key
    assert mirrored["flips"] == single["flips"]
    # prune_units and strip(shrink=True) on mirrored variables.
    assert mirrored["units"] == single["units"] == 2
    np.testing.assert_allclose(mirrored["shrunk"], mirrored["pruned"],
                               rtol=1e-5, atol=1e-6)
    for got, expected in zip(mirrored["monitored"], single["monitored"]):
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)
    # Toward units: the same units left, the same weights.
    assert mirrored["grouped_units"] == single["grouped_units"]
    assert mirrored["grouped_units"][1] == 8
    assert mirrored["ranked_units"] == single["ranked_units"]
    assert mirrored["ranked_macs"] == single["ranked_macs"] <= 0.5
    np.testing.assert_allclose(mirrored["grouped"], single["grouped"],
                               rtol=1e-4, atol=1e-5)
    # The proximal kernel: anchored on the data (3 informative features of
    # 30, all noise zeroed on one device), and the same on two replicas.
    kernel, reference = np.array(mirrored["kernel"]), np.array(single["kernel"])
    assert np.all(reference[:3] != 0) and np.all(reference[3:] == 0)
    np.testing.assert_allclose(kernel, reference, atol=1e-5)
    assert np.sum((kernel == 0) != (reference == 0)) <= 1
