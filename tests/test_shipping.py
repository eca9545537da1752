"""`sparsity` counts exact zeros; `strip` makes a model that loads without
keras_lk."""

import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

import keras_lk
from helpers import nested_model, sparse_regression_data


def test_sparsity_counts_exact_zeros_per_layer_and_in_total():
    model = nested_model()
    kernel = model.get_layer("head").kernel
    value = kernel.numpy()
    value[:3] = 0.0
    kernel.assign(value)
    counts = keras_lk.sparsity(model)
    assert counts["layers"]["head"] == {"zeros": 3, "size": 5,
                                        "fraction": 0.6}
    assert counts["layers"]["encoder/enc_dense"]["zeros"] == 0
    assert counts["total"] == {"zeros": 3, "size": 35, "fraction": 3 / 35}
    biases = keras_lk.sparsity(model, weights="all")["layers"]["head"]
    assert biases == {"zeros": 4, "size": 6, "fraction": 4 / 6}  # bias is 0


def test_sparsity_bad_input():
    with pytest.raises(ValueError, match="Received: weights='biases'"):
        keras_lk.sparsity(nested_model(), weights="biases")
    with pytest.raises(ValueError, match="Expected a built keras.Model"):
        keras_lk.sparsity("model")


def proximal_trained_model(log_dir):
    """Trained with a proximal L0.5 and monitored (recorders came and went)."""
    x, y = sparse_regression_data(features=12)
    model = keras.Sequential([
        keras.Input((12,)),
        keras.layers.Dense(8, name="hidden", kernel_regularizer=(
            keras_lk.LkRegularizer(k=0.5, alpha=1.0, proximal=True))),
        keras.layers.Dense(1, name="out",
                           kernel_regularizer=keras.regularizers.L2(1e-3))])
    model.compile(keras_lk.ProximalOptimizer(keras.optimizers.SGD(0.1)), "mse")
    model.fit(x, y, epochs=5, batch_size=32, verbose=0,
              callbacks=[keras_lk.LkMonitor(log_dir, step_stats=True)])
    return model, x


STRIPPED_LOADS = textwrap.dedent("""
    import sys
    sys.modules["keras_lk"] = None  # `import keras_lk` now fails
    import numpy as np
    import keras
    try:
        import keras_lk
    except ImportError:
        pass
    else:
        raise SystemExit("keras_lk was importable")
    model = keras.saving.load_model(sys.argv[1])
    x = np.load(sys.argv[2])
    np.save(sys.argv[3], model.predict(x, verbose=0))
    print(getattr(model, "optimizer", None), [type(l.kernel_regularizer).__name__
                            for l in model.layers])
""")


@pytest.mark.slow
def test_a_stripped_model_loads_where_keras_lk_is_not_installed(tmp_path):
    model, x = proximal_trained_model(tmp_path / "logs")
    zeros = keras_lk.sparsity(model)["total"]["zeros"]
    assert zeros > 0
    plain = keras_lk.strip(model)
    assert keras_lk.sparsity(plain)["total"]["zeros"] == zeros
    for ours, theirs in zip(model.get_weights(), plain.get_weights()):
        np.testing.assert_array_equal(ours, theirs)
    assert plain.get_layer("hidden").kernel_regularizer is None
    assert isinstance(plain.get_layer("out").kernel_regularizer,
                      keras.regularizers.L2)
    plain.save(tmp_path / "plain.keras")
    np.save(tmp_path / "x.npy", x)
    result = subprocess.run(
        [sys.executable, "-c", STRIPPED_LOADS, str(tmp_path / "plain.keras"),
         str(tmp_path / "x.npy"), str(tmp_path / "y.npy")],
        capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "None ['NoneType', 'L2']"
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"),
                               model.predict(x, verbose=0), rtol=1e-6)


def test_strip_keeps_nested_models_and_drops_every_lk_regularizer():
    model = nested_model()
    keras_lk.attach(model, keras_lk.LkRegularizer(k=1, alpha=0.1))
    plain = keras_lk.strip(model)
    assert plain.get_layer("encoder").get_layer("enc_dense").kernel_regularizer is None
    assert plain.get_layer("head").kernel_regularizer is None
    assert [w.shape for w in plain.weights] == [w.shape for w in model.weights]
    x = np.random.default_rng(0).standard_normal((4, 6)).astype("float32")
    np.testing.assert_allclose(plain.predict(x, verbose=0),
                               model.predict(x, verbose=0), rtol=1e-6)


class Subclassed(keras.Model):
    def __init__(self):
        super().__init__()
        self.dense = keras.layers.Dense(
            1, kernel_regularizer=keras_lk.LkRegularizer(k=1))

    def call(self, x):
        return self.dense(x)


def test_strip_bad_input():
    with pytest.raises(ValueError, match="Expected a built keras.Model"):
        keras_lk.strip(None)
    model = Subclassed()
    model(np.ones((1, 3)))
    with pytest.raises(ValueError, match="strip\\(\\) copies a model from "
                       "its config"):
        keras_lk.strip(model)
