import json
import math
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

from keras_lk import LkRegularizer
from helpers import linear_data


@pytest.mark.parametrize("k, keras_cls", [(1, keras.regularizers.L1),
                                           (2, keras.regularizers.L2)])
def test_sum_reduction_equals_keras_l1_l2(k, keras_cls):
    w = np.random.default_rng(0).standard_normal((7, 5)).astype("float32")
    ours = LkRegularizer(k=k, alpha=0.03, reduction="sum")(w)
    theirs = keras_cls(0.03)(w)
    np.testing.assert_allclose(float(ours), float(theirs), rtol=1e-6)


def test_mean_alpha_converts_to_sum_alpha_by_dividing_by_n():
    w = np.random.default_rng(0).standard_normal((7, 5)).astype("float32")
    mean = LkRegularizer(k=0.5, alpha=0.35)(w)
    total = LkRegularizer(k=0.5, alpha=0.35 / w.size, reduction="sum")(w)
    np.testing.assert_allclose(float(mean), float(total), rtol=1e-6)


@pytest.mark.parametrize("k", [0.5, 0.3, 1.0, 1.5])
def test_zero_initialised_fit_stays_finite(k):
    x, y = linear_data(features=6)
    model = keras.Sequential([
        keras.Input((6,)),
        keras.layers.Dense(8, kernel_initializer="zeros",
                           kernel_regularizer=LkRegularizer(k=k, alpha=0.1)),
        keras.layers.Dense(1, kernel_initializer="zeros",
                           kernel_regularizer=LkRegularizer(k=k, alpha=0.1)),
    ])
    model.compile(keras.optimizers.SGD(0.05), "mse")
    history = model.fit(x, y, epochs=3, batch_size=16, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    for weight in model.weights:
        assert np.all(np.isfinite(keras.ops.convert_to_numpy(weight)))


@pytest.mark.parametrize("policy", ["mixed_float16", "float16", "bfloat16"])
def test_fit_under_half_precision_policies(policy):
    keras.config.set_dtype_policy(policy)
    x, y = linear_data(features=6)
    model = keras.Sequential([
        keras.Input((6,)),
        keras.layers.Dense(8, kernel_regularizer=LkRegularizer(k=10,
                                                               alpha=1e-3)),
        keras.layers.Dense(1, kernel_regularizer=LkRegularizer(k=0.5,
                                                               alpha=1e-3)),
    ])
    model.compile(keras.optimizers.SGD(0.01), "mse")
    history = model.fit(x, y, epochs=1, batch_size=16, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    assert all(loss.dtype == "float32" for loss in model.losses)


def test_large_weights_of_float16_do_not_overflow_the_penalty():
    keras.config.set_dtype_policy("float16")
    layer = keras.layers.Dense(2, kernel_initializer=keras.initializers.Constant(
        4.0), kernel_regularizer=LkRegularizer(k=10, alpha=1.0, reduction="sum"))
    layer.build((None, 3))
    assert layer.kernel.dtype == "float16"
    (penalty,) = layer.losses
    np.testing.assert_allclose(float(penalty), 6 * 4.0 ** 10, rtol=1e-6)


def test_losses_enter_model_losses():
    model = keras.Sequential([
        keras.Input((3,)),
        keras.layers.Dense(2, kernel_initializer="ones",
                           kernel_regularizer=LkRegularizer(k=3, alpha=0.5))])
    (penalty,) = model.losses
    assert float(penalty) == pytest.approx(0.5)


def test_get_config_is_plain_python_and_round_trips():
    reg = LkRegularizer(k=np.float32(1.5), alpha=2, reduction="sum")
    config = reg.get_config()
    assert config == {"k": 1.5, "alpha": 2.0, "reduction": "sum",
                      "proximal": False}
    assert all(type(v) in (float, str, bool) for v in config.values())
    clone = LkRegularizer.from_config(config)
    assert clone.get_config() == config
    restored = keras.regularizers.deserialize(
        json.loads(json.dumps(keras.regularizers.serialize(reg))))
    assert isinstance(restored, LkRegularizer)
    assert restored.get_config() == config


def test_repr_names_every_argument():
    assert repr(LkRegularizer(k=math.inf, alpha=0.5)) == (
        "LkRegularizer(k=float(\"inf\"), alpha=0.5, reduction='mean')")


@pytest.mark.slow
def test_keras_file_round_trip_in_a_new_process(tmp_path):
    x, y = linear_data(features=6)
    model = keras.Sequential([
        keras.Input((6,)),
        keras.layers.Dense(8, kernel_regularizer=LkRegularizer(k=0.5, alpha=0.1)),
        keras.layers.Dense(4, kernel_regularizer=LkRegularizer(
            k=math.inf, alpha=0.2, reduction="sum")),
        keras.layers.Dense(1, kernel_regularizer=LkRegularizer(k=3, alpha=0.3)),
    ])
    model.compile("adam", "mse")
    model.fit(x, y, epochs=1, verbose=0)
    path = tmp_path / "model.keras"
    model.save(path)
    expected = [float(loss) for loss in model.losses]
    script = textwrap.dedent(f"""
        import json, keras, keras_lk
        model = keras.saving.load_model({str(path)!r})
        regs = [l.kernel_regularizer for l in model.layers]
        assert all(isinstance(r, keras_lk.LkRegularizer) for r in regs), regs
        print(json.dumps([float(loss) for loss in model.losses]))
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True,
                            text=True, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    np.testing.assert_allclose(loaded, expected, rtol=1e-6)


@pytest.mark.parametrize("kwargs, message", [
    ({"k": -1}, 'Invalid value for argument `k`. Expected a number > 0, '
                'float("inf"), or 0 with proximal=True. Received: k=-1'),
    ({"k": 0}, "Received: k=0"),
    ({"k": math.nan}, "Received: k=nan"),
    ({"k": -math.inf}, "Received: k=-inf"),
    ({"k": True}, "Received: k=True"),
    ({"k": "2"}, "Received: k='2'"),
    ({"k": None}, "Received: k=None"),
    ({"alpha": -0.1}, "Invalid value for argument `alpha`. Expected a finite "
                      "number >= 0. Received: alpha=-0.1"),
    ({"alpha": math.nan}, "Received: alpha=nan"),
    ({"alpha": math.inf}, "Received: alpha=inf"),
    ({"alpha": "big"}, "Received: alpha='big'"),
    ({"reduction": "max"}, "Invalid value for argument `reduction`. Expected "
                           "one of 'mean', 'sum'. Received: reduction='max'"),
])
def test_bad_arguments_raise_value_error_naming_them(kwargs, message):
    with pytest.raises(ValueError) as info:
        LkRegularizer(**kwargs)
    assert message in str(info.value)


def test_import_without_tensorflow_says_what_to_install(tmp_path):
    # A `tensorflow` that cannot be found, as on a machine without it.
    script = textwrap.dedent("""
        import importlib.util, sys
        real = importlib.util.find_spec
        importlib.util.find_spec = (
            lambda name, *a: None if name == "tensorflow" else real(name, *a))
        try:
            import keras_lk
        except ImportError as error:
            print(error)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True,
                            text=True, check=False)
    assert "pip install 'keras-lk[cpu]'" in result.stdout
    assert "keras_lk needs TensorFlow" in result.stdout


def test_k_zero_counts_nonzeros_and_needs_the_proximal_step():
    w = keras.ops.convert_to_tensor([[0.0, 2.0], [-0.5, 0.0], [0.0, 0.0]])
    mean = LkRegularizer(k=0, alpha=0.6, proximal=True)
    assert float(mean(w)) == pytest.approx(0.6 * 2 / 6)
    assert float(LkRegularizer(k=0, alpha=0.6, reduction="sum",
                               proximal=True)(w)) == pytest.approx(1.2)
    assert LkRegularizer.from_config(mean.get_config()).k == 0.0
    with pytest.raises(ValueError, match=(
            r"LkRegularizer\(k=0\) counts nonzero weights, whose gradient is "
            r"0 everywhere.*Received: k=0, proximal=False")):
        LkRegularizer(k=0)
