"""The model zoo, end to end: attach, a monitored fit under
`SparsityTarget`, `strip`, save and load, on a BERT-like encoder, a
GPT-like decoder, ResNet50, MobileNetV3Small, a recurrent model and an
embedding model (tests/zoo.py)."""

import ast
import json
import warnings
import zipfile

import keras
import numpy as np
import pytest

import keras_lk
from keras_lk import LkRegularizer
from keras_lk.attach.walk import iter_layers
from events import read, tags
from zoo import ZOO

ALPHA = 1e-4
TARGET = 0.5
_KERNEL_NAMES = ("kernel", "embeddings")


def _attach_all(model, entry):
    """Attaches one proximal k = 0 regularizer to every weight the entry
    names; returns the variables it covers and those `attach` warned
    would not be saved."""
    regularizer = LkRegularizer(k=0, alpha=ALPHA, proximal=True)
    covered, unsaved = [], set()
    by_path = dict(iter_layers(model))
    for weight in entry.weights:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            layers = keras_lk.attach(model, regularizer, weight=weight)
        covered += [getattr(layer, weight) for layer in layers]
        for warning in caught:
            text = str(warning.message)
            assert text.startswith("attach: the regularizer on ["), text
            paths = ast.literal_eval(text[text.index("["):text.index("]") + 1])
            unsaved |= {id(getattr(by_path[path], weight)) for path in paths}
    return covered, unsaved


def _outputs(model, x):
    """The model's outputs on `x`, called eagerly (predict would trace a
    function for each model: seconds on ResNet50)."""
    return keras.ops.convert_to_numpy(model(x, training=False))


def _regularized(model):
    """Indices in `model.trainable_weights` of the weights carrying an
    LkRegularizer."""
    return {index for index, variable in enumerate(model.trainable_weights)
            if isinstance(getattr(variable, "regularizer", None),
                          LkRegularizer)}


@pytest.mark.parametrize("name", [
    pytest.param(name, marks=() if entry.tiny else pytest.mark.slow)
    for name, entry in ZOO.items()])
def test_a_zoo_model_end_to_end(name, tmp_path):
    entry = ZOO[name]
    keras.utils.set_random_seed(0)
    model = entry.build()
    x, y = entry.data(np.random.default_rng(0))

    # attach reaches every weight of those kinds, sublayers included, and
    # each enters model.losses (k = 0: alpha * fraction of nonzeros).
    covered, unsaved = _attach_all(model, entry)
    expected = {id(v) for v in model.trainable_weights
                if v.path.split("/")[-1] in entry.weights}
    assert {id(v) for v in covered} == expected
    assert len(covered) == len(expected)
    assert float(sum(model.losses)) == pytest.approx(ALPHA * len(covered),
                                                     rel=1e-5)

    # A monitored fit that steers to the target and locks the pattern.
    model.compile(keras_lk.ProximalOptimizer(keras.optimizers.Adam(1e-3)),
                  entry.loss)
    logs = tmp_path / "logs"
    history = model.fit(x, y, batch_size=16, epochs=2, verbose=0, callbacks=[
        keras_lk.LkMonitor(logs), keras_lk.SparsityTarget(TARGET)])
    assert np.isfinite(history.history["loss"]).all()
    reached = keras_lk.sparsity(model)
    assert reached["total"]["fraction"] == pytest.approx(TARGET, abs=2e-3)
    for variable in covered:
        value = np.asarray(variable)
        if value.ndim >= 2:   # every output unit keeps an input
            assert np.all(np.any(value.reshape(-1, value.shape[-1]) != 0,
                                 axis=0)), variable.path

    # No two weights share a tag: one histogram per monitored weight, one
    # set of scalars per layer path; sparsity() keys are the same paths.
    written = tags(read(logs), "train")
    histograms = {t for t in written if t.startswith("abs_weights/")}
    monitored = [v for v in model.weights
                 if v.path.split("/")[-1].endswith(_KERNEL_NAMES)]
    assert len(histograms) == len(monitored)
    layer_paths = {t[len("abs_weights/"):].rsplit("/", 1)[0]
                   for t in histograms}
    assert {f"zero_fraction/{p}" for p in layer_paths} <= written
    assert set(reached["layers"]) == layer_paths

    # strip: a plain Keras copy, same predictions, saved with no keras_lk.
    predictions = _outputs(model, x)
    plain = keras_lk.strip(model)
    np.testing.assert_allclose(_outputs(plain, x), predictions,
                               rtol=1e-5, atol=1e-6)
    plain.save(tmp_path / "plain.keras")
    with zipfile.ZipFile(tmp_path / "plain.keras") as archive:
        assert "keras_lk" not in archive.read("config.json").decode()
    loaded = keras.saving.load_model(tmp_path / "plain.keras")
    np.testing.assert_allclose(_outputs(loaded, x), predictions,
                               rtol=1e-5, atol=1e-6)
    assert keras_lk.sparsity(loaded)["total"] == reached["total"]

    # The model itself saves and loads; it keeps every regularizer attach
    # did not warn about, and loses exactly those it did.
    model.save(tmp_path / "model.keras")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = keras.saving.load_model(tmp_path / "model.keras")
    said = " ".join(str(w.message) for w in caught)
    # The optimizer's state loads (by path where weights lost their
    # regularizer, hence their SparsityTarget state): Adam's moments too.
    assert "Skipping variable loading" not in said
    assert ("variables by path" in said) == bool(unsaved)
    assert int(loaded.optimizer.iterations) == int(model.optimizer.iterations)
    if unsaved:   # fewer variables, each found by its path
        saved_state = {v.path: v for v in model.optimizer.variables}
        pairs = [(v, saved_state[v.path]) for v in loaded.optimizer.variables]
    else:         # by position, as Keras
        pairs = list(zip(loaded.optimizer.variables,
                         model.optimizer.variables))
        assert len(pairs) == len(model.optimizer.variables)
    for here, there in pairs:
        np.testing.assert_array_equal(np.asarray(here), np.asarray(there))
    np.testing.assert_allclose(_outputs(loaded, x), predictions,
                               rtol=1e-5, atol=1e-6)
    index = {id(v): i for i, v in enumerate(model.trainable_weights)}
    assert _regularized(model) == {index[id(v)] for v in covered}
    assert _regularized(loaded) == {index[id(v)] for v in covered
                                    if id(v) not in unsaved}
    config = json.loads(zipfile.ZipFile(tmp_path / "model.keras")
                        .read("config.json"))
    assert config["compile_config"]["optimizer"]["class_name"] == (
        "ProximalOptimizer")
