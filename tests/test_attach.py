import warnings

import keras
import numpy as np
import pytest

import keras_lk
from keras_lk import LkRegularizer
from helpers import nested_model
from keras_lk.attach.walk import iter_layers


def test_attach_to_every_kernel_and_fit_includes_penalty():
    model = nested_model()
    model.compile("sgd", "mse")
    x = np.ones((8, 6), "float32")
    y = np.zeros((8, 1), "float32")
    before = model.evaluate(x, y, verbose=0)
    reg = LkRegularizer(k=1, alpha=10.0)
    layers = keras_lk.attach(model, reg)
    assert [layer.name for layer in layers] == ["enc_dense", "head"]
    assert len(model.losses) == 2
    after = model.evaluate(x, y, verbose=0)
    assert after == pytest.approx(before + sum(float(l) for l in model.losses),
                                  rel=1e-5)
    history = model.fit(x, y, epochs=1, verbose=0)
    assert history.history["loss"][0] > before


def test_attach_by_type_name_path_and_predicate():
    model = nested_model()
    reg = LkRegularizer(k=0.5)
    assert [l.name for l in keras_lk.attach(model, reg, names="head")] == ["head"]
    assert [l.name for l in keras_lk.attach(
        model, reg, names=["encoder/enc_dense"])] == ["enc_dense"]
    assert [l.name for l in keras_lk.attach(
        model, reg, predicate=lambda l: l.name.startswith("enc"))] == ["enc_dense"]
    chosen = keras_lk.attach(model, reg, layer_types=keras.layers.Dense,
                             predicate=lambda l: l.units == 1)
    assert [l.name for l in chosen] == ["head"]


def test_attached_model_saves_with_the_regularizer(tmp_path):
    model = nested_model()
    keras_lk.attach(model, LkRegularizer(k=3, alpha=0.2), names="head")
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    head = loaded.get_layer("head")
    assert isinstance(head.kernel_regularizer, LkRegularizer)
    assert head.kernel_regularizer.k == 3.0
    np.testing.assert_allclose([float(l) for l in loaded.losses],
                               [float(l) for l in model.losses], rtol=1e-6)


def test_detach_removes_what_attach_added():
    model = nested_model()
    keras_lk.attach(model, LkRegularizer())
    removed = keras_lk.detach(model, names="head")
    assert [l.name for l in removed] == ["head"]
    assert len(model.losses) == 1
    assert model.get_layer("head").kernel_regularizer is None
    assert [l.name for l in keras_lk.detach(model)] == ["enc_dense"]
    assert model.losses == []


def test_attach_after_fit_retraces_the_train_step():
    model = nested_model()
    model.compile(keras.optimizers.SGD(0.0), "mse")
    x = np.ones((8, 6), "float32")
    y = np.zeros((8, 1), "float32")
    plain = model.fit(x, y, epochs=1, verbose=0).history["loss"][0]
    keras_lk.attach(model, LkRegularizer(k=2, alpha=5.0))
    penalised = model.fit(x, y, epochs=1, verbose=0).history["loss"][0]
    assert penalised == pytest.approx(
        plain + sum(float(l) for l in model.losses), rel=1e-5)


def test_attach_refuses_when_nothing_matches():
    model = nested_model()
    with pytest.raises(ValueError, match="No layer of model 'outer' matches"):
        keras_lk.attach(model, LkRegularizer(), layer_types=keras.layers.Conv2D)
    with pytest.raises(ValueError, match=r"No layer named \['nope'\]"):
        keras_lk.attach(model, LkRegularizer(), names="nope")


def test_attach_checks_its_arguments():
    model = nested_model()
    with pytest.raises(ValueError, match="Invalid value for argument `regularizer`"):
        keras_lk.attach(model, "l2")
    with pytest.raises(ValueError, match="Invalid value for argument `predicate`"):
        keras_lk.attach(model, LkRegularizer(), predicate=3)
    with pytest.raises(ValueError, match="Invalid value for argument `layer_types`"):
        keras_lk.attach(model, LkRegularizer(), layer_types="Dense")


def test_attach_to_a_model_loaded_from_disk(tmp_path):
    model = nested_model()
    model.compile("sgd", "mse")
    path = tmp_path / "plain.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    x = np.ones((8, 6), "float32")
    y = np.zeros((8, 1), "float32")
    before = loaded.evaluate(x, y, verbose=0)
    keras_lk.attach(loaded, LkRegularizer(k=0.5, alpha=1.0))
    assert loaded.evaluate(x, y, verbose=0) == pytest.approx(
        before + sum(float(l) for l in loaded.losses), rel=1e-5)


def test_attach_to_a_keras_applications_model():
    model = keras.applications.MobileNetV3Small(
        weights=None, input_shape=(32, 32, 3), classes=4,
        include_preprocessing=False)
    convolutions = [layer for layer in model.layers
                    if isinstance(layer, keras.layers.Conv2D)]
    chosen = keras_lk.attach(model, LkRegularizer(k=1, alpha=1e-4),
                             layer_types=keras.layers.Conv2D)
    assert chosen == convolutions
    assert len(model.losses) == len(convolutions)
    depthwise = keras_lk.attach(model, LkRegularizer(k=2, alpha=1e-4),
                                layer_types=keras.layers.DepthwiseConv2D)
    assert depthwise and len(model.losses) == len(convolutions) + len(depthwise)
    # DepthwiseConv2D saves its kernel's regularizer as depthwise_regularizer.
    config = depthwise[0].get_config()["depthwise_regularizer"]
    assert config["class_name"] == "LkRegularizer"


def test_attach_records_separable_and_embedding_regularizers(tmp_path):
    inputs = keras.Input((8,), dtype="int32")
    hidden = keras.layers.Embedding(20, 4, name="embed")(inputs)
    hidden = keras.layers.Reshape((8, 4, 1))(hidden)
    outputs = keras.layers.SeparableConv2D(2, 3, name="sep")(hidden)
    model = keras.Model(inputs, outputs)
    keras_lk.attach(model, LkRegularizer(k=1), weight="embeddings")
    keras_lk.attach(model, LkRegularizer(k=3), weight="pointwise_kernel")
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert loaded.get_layer("embed").embeddings_regularizer.k == 1.0
    assert loaded.get_layer("sep").pointwise_regularizer.k == 3.0
    assert len(loaded.losses) == 2


def attention_model():
    tokens = keras.Input((6,), dtype="int32")
    x = keras.layers.Embedding(20, 8, name="embed")(tokens)
    x = keras.layers.MultiHeadAttention(2, 4, name="mha")(x, x)
    x = keras.layers.GlobalAveragePooling1D()(x)
    return keras.Model(tokens, keras.layers.Dense(2, name="head")(x))


def test_attach_reaches_attention_projections_by_type_and_path():
    model = attention_model()
    reg = keras_lk.LkRegularizer(k=1, alpha=0.5)
    with pytest.warns(UserWarning, match=r"\['mha/query', 'mha/key', "
                      r"'mha/value', 'mha/attention_output'\] trains"):
        layers = keras_lk.attach(model, reg,
                                 layer_types=keras.layers.EinsumDense)
    assert [l.name for l in layers] == ["query", "key", "value",
                                        "attention_output"]
    # Each projection's penalty is in model.losses, by value.
    kernels = [model.get_layer("mha").weights[i] for i in (0, 2, 4, 6)]
    assert [k.path for k in kernels] == [
        f"mha/{n}/kernel" for n in ("query", "key", "value",
                                    "attention_output")]
    expected = sorted(0.5 * np.mean(np.abs(k.numpy())) for k in kernels)
    np.testing.assert_allclose(sorted(float(l) for l in model.losses),
                               expected, rtol=1e-6)
    # One projection by its path; the others stay without.
    keras_lk.detach(model, layer_types=keras.layers.EinsumDense)
    with pytest.warns(UserWarning, match=r"\['mha/value'\]"):
        keras_lk.attach(model, reg, names="mha/value")
    assert len(model.losses) == 1


def test_an_attached_attention_projection_trains_and_the_model_saves(
        tmp_path):
    model = attention_model()
    with pytest.warns(UserWarning):
        keras_lk.attach(model, keras_lk.LkRegularizer(k=1, alpha=0.5),
                        names=["query", "key"])
    keras_lk.attach(model, keras_lk.LkRegularizer(k=2, alpha=0.1),
                    names="head")
    model.compile(keras.optimizers.SGD(0.01), "mse")
    x = np.random.default_rng(0).integers(0, 20, (8, 6))
    model.fit(x, np.zeros((8, 2)), verbose=0)
    path = tmp_path / "attention.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    # The head's regularizer was saved; the projections', as warned, not.
    assert len(loaded.losses) == 1
    np.testing.assert_allclose(loaded.predict(x, verbose=0),
                               model.predict(x, verbose=0), rtol=1e-6)


def test_attach_to_a_bidirectional_layer_saves_with_it(tmp_path):
    # A wrapper's config holds its inner layer's: no warning, saved.
    inputs = keras.Input((5, 3))
    outputs = keras.layers.Bidirectional(keras.layers.LSTM(2), name="bi")(
        inputs)
    model = keras.Model(inputs, outputs)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        layers = keras_lk.attach(model, keras_lk.LkRegularizer(k=1),
                                 layer_types=keras.layers.LSTMCell)
    # The cells of the forward and the backward LSTM.
    assert [p for p, l in iter_layers(model) if l in layers] == ["bi/forward_lstm/lstm_cell",
                                "bi/backward_lstm/lstm_cell"]
    model.save(tmp_path / "bi.keras")
    loaded = keras.saving.load_model(tmp_path / "bi.keras")
    assert len(loaded.losses) == len(model.losses) == 2


def test_a_custom_layers_weight_its_config_cannot_save_is_warned(tmp_path):
    # A custom layer directly in the model whose get_config has no
    # regularizer for the weight: it trains with it, attach says it will
    # not be saved, and indeed it is not.
    from zoo import PositionEmbedding
    model = keras.Sequential([keras.Input((4, 3)),
                              PositionEmbedding(4, name="position")])
    reg = keras_lk.LkRegularizer(k=1, alpha=0.5)
    with pytest.warns(UserWarning, match=r"\['position'\] trains"):
        keras_lk.attach(model, reg, weight="position_embeddings")
    table = model.get_layer("position").position_embeddings.numpy()
    assert float(sum(model.losses)) == pytest.approx(
        0.5 * np.mean(np.abs(table)), rel=1e-6)
    model.save(tmp_path / "position.keras")
    assert keras.saving.load_model(tmp_path / "position.keras").losses == []
