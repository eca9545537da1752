"""MirroredStrategy over two logical CPU devices, in a fresh process
(logical devices must be set before TensorFlow starts)."""

import json
import subprocess
import sys
import textwrap
from types import SimpleNamespace

import pytest

from keras_lk.callbacks import _is_chief

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

    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    assert strategy.num_replicas_in_sync == 2
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 4)).astype("float32")
    y = rng.standard_normal((64, 1)).astype("float32")
    with strategy.scope():
        model = keras.Sequential([
            keras.Input((4,)),
            keras.layers.Dense(3, name="first", kernel_regularizer=(
                keras_lk.LkRegularizer(k=0.5, alpha=0.1))),
            keras.layers.Dense(1, name="second",
                               kernel_regularizer=keras.regularizers.L2(0.1)),
        ])
        model.compile(keras.optimizers.SGD(0.0), "mse")
    history = model.fit(x, y, epochs=2, batch_size=16, validation_split=0.25,
                        verbose=0,
                        callbacks=[keras_lk.LkMonitor(sys.argv[1],
                                                      step_stats=True)])
    events = read(sys.argv[1])
    print(json.dumps({
        "history": history.history,
        "penalty": sum(float(l) for l in model.losses),
        "share_steps": sorted(events[("train", "reg_share/total")]),
        "zero_count": events[("train", "zero_count/(all layers)")][1],
        "flips": history.history["sign_flip_frac"],
    }))
""")


@pytest.mark.slow
def test_mirrored_strategy_on_two_logical_cpus(tmp_path):
    result = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    history = out["history"]
    assert history["reg_loss"] == pytest.approx([out["penalty"]] * 2, rel=1e-5)
    assert history["val_reg_loss"] == pytest.approx([out["penalty"]] * 2,
                                                    rel=1e-5)
    assert all(0 < share < 1 for share in history["reg_share"])
    assert out["share_steps"] == [0, 1]
    assert out["zero_count"] >= 0
    assert out["flips"] == [0.0, 0.0]  # learning rate 0: no sign changes


def test_only_the_chief_writes():
    def model_with(should_checkpoint):
        extended = SimpleNamespace(should_checkpoint=should_checkpoint)
        return SimpleNamespace(
            distribute_strategy=SimpleNamespace(extended=extended))

    assert _is_chief(model_with(True))
    assert not _is_chief(model_with(False))
    assert _is_chief(SimpleNamespace())
