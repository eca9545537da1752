"""Penalties, monitors and proximal steps on models beyond Dense MLPs:
convolutions (plain, separable), embeddings, recurrent layers, a
keras.applications network, and a kernel larger than a statistics block."""

import keras
import numpy as np
import pytest
from keras import ops

import keras_lk
from keras_lk import LkRegularizer
from events import read, tags

ALPHA = 0.1


def sequence_model(regularizer):
    """Embedding -> Conv1D -> SeparableConv1D -> LSTM -> Dense, every
    kernel (embeddings, depthwise, pointwise, recurrent) regularized."""
    inputs = keras.Input((10,), dtype="int32")
    hidden = keras.layers.Embedding(50, 8, name="embed",
                                    embeddings_regularizer=regularizer)(inputs)
    hidden = keras.layers.Conv1D(6, 3, name="conv",
                                 kernel_regularizer=regularizer)(hidden)
    hidden = keras.layers.SeparableConv1D(
        5, 3, name="sep", depthwise_regularizer=regularizer,
        pointwise_regularizer=regularizer)(hidden)
    hidden = keras.layers.LSTM(4, name="lstm", kernel_regularizer=regularizer,
                               recurrent_regularizer=regularizer)(hidden)
    outputs = keras.layers.Dense(3, name="head",
                                 kernel_regularizer=regularizer)(hidden)
    return keras.Model(inputs, outputs)


# Layer paths: an RNN's kernels live in its cell, a sublayer.
KERNELS = {"embed": ["embeddings"], "conv": ["kernel"],
           "sep": ["depthwise_kernel", "pointwise_kernel"],
           "lstm/lstm_cell": ["kernel", "recurrent_kernel"],
           "head": ["kernel"]}


def kernels_of(model, layer):
    """The layer's kernels by name."""
    found = {v.path.split("/")[-1]: v.numpy() for v in model.weights
             if v.path.split("/")[0] == layer.split("/")[0]}
    return [found[name] for name in KERNELS[layer]]


def test_monitors_cover_every_kind_of_kernel_by_value(tmp_path):
    keras.utils.set_random_seed(0)
    model = sequence_model(LkRegularizer(k=1, alpha=ALPHA))
    # Some exact zeros and near zeros, in a conv kernel and an embedding.
    conv = model.get_layer("conv").kernel
    conv.assign(np.where(np.abs(conv.numpy()) < 0.1, 0.0, conv.numpy()))
    embed = model.get_layer("embed").embeddings
    embed.assign(embed.numpy() * np.where(np.arange(50)[:, None] < 10, 1e-4,
                                          1.0))
    model.compile(keras.optimizers.SGD(0.0), "mse")
    x = np.random.default_rng(0).integers(0, 50, (16, 10))
    history = model.fit(x, np.zeros((16, 3)), verbose=0, callbacks=[
        keras_lk.LkMonitor(tmp_path, tol=1e-3, step_stats=True)])
    events = read(tmp_path)
    assert {t for t in tags(events, "train")
            if t.startswith("abs_weights/")} == {
        f"abs_weights/{layer}/{name}" for layer, names in KERNELS.items()
        for name in names}
    penalty = 0.0
    for layer in KERNELS:
        weights = kernels_of(model, layer)
        size = sum(w.size for w in weights)
        assert events[("train", f"exact_zero_count/{layer}")][0] == sum(
            np.sum(w == 0) for w in weights), layer
        assert events[("train", f"zero_count/{layer}")][0] == sum(
            np.sum(np.abs(w) <= np.float32(1e-3)) for w in weights), layer
        assert events[("train", f"max_abs_weight/{layer}")][0] == (
            pytest.approx(max(np.abs(w).max() for w in weights)))
        layer_penalty = sum(ALPHA * np.mean(np.abs(w)) for w in weights)
        assert events[("train", f"reg_loss/{layer}")][0] == pytest.approx(
            layer_penalty, rel=1e-5), layer
        penalty += layer_penalty
        histogram = events[("train", f"abs_weights/{layer}/{KERNELS[layer][0]}")]
        assert histogram[0][:, 2].sum() == weights[0].size
        assert events[("train", f"zero_fraction/{layer}")][0] == (
            pytest.approx(sum(np.sum(np.abs(w) <= np.float32(1e-3))
                              for w in weights) / size)), layer
    assert events[("train", "exact_zero_count/conv")][0] > 0
    assert events[("train", "zero_count/embed")][0] >= 80
    assert history.history["reg_loss"][0] == pytest.approx(penalty, rel=1e-5)
    assert history.history["sign_flip_frac"] == [0.0]  # lr = 0


def test_the_proximal_step_on_conv_kernels_and_sparse_embedding_gradients():
    # An Embedding's gradient is sparse (the rows of the tokens seen); the
    # proximal step still acts on every row, after the inner step.
    lr, k, alpha = 0.1, 0.5, 4.0

    def build(regularizer):
        keras.utils.set_random_seed(1)
        inputs = keras.Input((6,), dtype="int32")
        hidden = keras.layers.Embedding(
            20, 4, name="embed", embeddings_regularizer=regularizer)(inputs)
        hidden = keras.layers.Conv1D(3, 2, name="conv",
                                     kernel_regularizer=regularizer)(hidden)
        hidden = keras.layers.GlobalAveragePooling1D()(hidden)
        return keras.Model(inputs, keras.layers.Dense(1, name="head")(hidden))

    proximal = build(LkRegularizer(k=k, alpha=alpha, proximal=True))
    plain = build(None)
    plain.set_weights(proximal.get_weights())
    proximal.compile(keras_lk.ProximalOptimizer(keras.optimizers.SGD(lr)),
                     "mse")
    plain.compile(keras.optimizers.SGD(lr), "mse")
    x = np.random.default_rng(0).integers(0, 10, (8, 6))  # rows 10-19 unseen
    y = np.ones((8, 1))
    proximal.fit(x, y, batch_size=8, verbose=0)
    plain.fit(x, y, batch_size=8, verbose=0)
    for layer, weight in (("embed", "embeddings"), ("conv", "kernel")):
        stepped = getattr(plain.get_layer(layer), weight).numpy()
        expected = np.asarray(keras_lk.prox(stepped, lr * alpha / stepped.size,
                                            k))
        got = getattr(proximal.get_layer(layer), weight).numpy()
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)
        assert np.any(got == 0), layer
    embeddings = proximal.get_layer("embed").embeddings.numpy()
    # Unseen rows moved by the proximal step alone.
    assert not np.allclose(embeddings[10:],
                           plain.get_layer("embed").embeddings.numpy()[10:])


def mobilenet():
    return keras.applications.MobileNetV3Small(
        weights=None, input_shape=(32, 32, 3), classes=4,
        include_preprocessing=False)


def test_attach_and_detach_on_a_keras_applications_model_by_value():
    model = mobilenet()
    convolutions = keras_lk.attach(model, LkRegularizer(k=1, alpha=1e-2),
                                   layer_types=keras.layers.Conv2D)
    depthwise = keras_lk.attach(model, LkRegularizer(k=2, alpha=1e-2),
                                layer_types=keras.layers.DepthwiseConv2D)
    expected = sum(1e-2 * np.mean(np.abs(layer.kernel.numpy()))
                   for layer in convolutions) + sum(
        1e-2 * np.mean(layer.kernel.numpy() ** 2) for layer in depthwise)
    assert float(sum(model.losses)) == pytest.approx(expected, rel=1e-5)
    # The README's example: detach by type removes exactly those.
    removed = keras_lk.detach(model, layer_types=keras.layers.Conv2D)
    assert removed == convolutions
    assert all(layer.kernel_regularizer is None for layer in convolutions)
    assert all(isinstance(layer.depthwise_regularizer, LkRegularizer)
               for layer in depthwise)
    assert float(sum(model.losses)) == pytest.approx(
        sum(1e-2 * np.mean(layer.kernel.numpy() ** 2) for layer in depthwise),
        rel=1e-5)


def test_separable_conv_depthwise_regularizer_saves_and_loads(tmp_path):
    model = keras.Sequential([keras.Input((6, 6, 2)), keras.layers.SeparableConv2D(
        3, 3, name="sep")])
    keras_lk.attach(model, LkRegularizer(k=0.5, alpha=0.3),
                    weight="depthwise_kernel")
    layer = model.get_layer("sep")
    assert layer.pointwise_regularizer is None
    config = layer.get_config()["depthwise_regularizer"]
    assert config["class_name"] == "LkRegularizer"
    expected = 0.3 * np.mean(np.sqrt(np.abs(layer.depthwise_kernel.numpy())))
    assert float(sum(model.losses)) == pytest.approx(expected, rel=1e-5)
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras").get_layer("sep")
    assert loaded.depthwise_regularizer.get_config() == (
        layer.depthwise_regularizer.get_config())
    assert float(sum(loaded.losses)) == pytest.approx(expected, rel=1e-5)


def test_a_kernel_larger_than_a_block_is_counted_exactly(tmp_path):
    # 600 x 1000 = 600,000 weights: one full block of 2^19 goes through the
    # XLA-fused pass, the rest unfused; the counts must be NumPy's.
    model = keras.Sequential([keras.Input((600,)), keras.layers.Dense(
        1000, name="wide", use_bias=False)])
    rng = np.random.default_rng(0)
    kernel = (rng.standard_normal((600, 1000))
              * rng.choice([1.0, 1e-5], (600, 1000))).astype("float32")
    kernel[rng.random((600, 1000)) < 0.1] = 0.0
    model.get_layer("wide").kernel.assign(kernel)
    model.compile(keras.optimizers.SGD(0.0), "mse")
    model.fit(np.zeros((2, 600)), np.zeros((2, 1000)), verbose=0,
              callbacks=[keras_lk.LkMonitor(tmp_path, tol=1e-3, buckets=10)])
    events = read(tmp_path)
    magnitude = np.abs(kernel)
    assert events[("train", "exact_zero_count/wide")][0] == np.sum(kernel == 0)
    assert events[("train", "zero_count/wide")][0] == np.sum(
        magnitude <= np.float32(1e-3))
    assert events[("train", "max_abs_weight/wide")][0] == magnitude.max()
    buckets = np.minimum((magnitude * np.float32(10 / magnitude.max()))
                         .astype("int32"), 9)
    histogram = events[("train", "abs_weights/wide/kernel")][0]
    np.testing.assert_array_equal(histogram[:, 2],
                                  np.bincount(buckets.ravel(), minlength=10))
    log_histogram = events[("train", "log10_abs_weights/wide/kernel")][0]
    assert log_histogram[0, 2] == np.sum(kernel == 0)
    assert log_histogram[:, 2].sum() == kernel.size


def test_no_two_weights_share_a_tag_in_a_transformer(tmp_path):
    # The suite's Transformer block: MultiHeadAttention's four kernels are
    # four layers of their own (mha/query, ...), not one "mha".
    from keras_lk.study import suite
    model = suite.MODELS["transformer"].build(
        LkRegularizer(k=1, alpha=1e-3), 0)
    x, y, _, _ = suite.MODELS["transformer"].data(0)
    model.fit(x[:64], y[:64], verbose=0, callbacks=[
        keras_lk.LkMonitor(tmp_path)])
    written = tags(read(tmp_path), "train")
    histograms = {t for t in written if t.startswith("abs_weights/")}
    kernels = [v for v in model.weights
               if v.path.split("/")[-1] in ("kernel", "embeddings",
                                            "position_embeddings")]
    assert len(histograms) == len(kernels) == 9
    assert {"abs_weights/mha/query/kernel", "abs_weights/mha/key/kernel",
            "abs_weights/mha/value/kernel",
            "abs_weights/mha/attention_output/kernel"} <= histograms
    for layer in ("mha/query", "mha/key", "mha/value",
                  "mha/attention_output"):
        assert f"zero_fraction/{layer}" in written
        assert f"reg_share/{layer}" in written
    assert "zero_fraction/mha" not in written
    # sparsity() and SparsityTarget's dict keys use the same paths.
    assert {"mha/query", "mha/attention_output"} <= set(
        keras_lk.sparsity(model)["layers"])


class TwoKernels(keras.layers.Layer):
    """A custom layer whose two weights Keras lets share one name."""

    def build(self, input_shape):
        self.first = self.add_weight(shape=(input_shape[-1], 2),
                                     name="kernel")
        self.second = self.add_weight(shape=(input_shape[-1], 2),
                                      name="kernel")

    def call(self, x):
        return ops.matmul(x, self.first) + ops.matmul(x, self.second)


def test_two_weights_with_one_name_get_two_tags(tmp_path):
    model = keras.Sequential([keras.Input((3,)), TwoKernels(name="two")])
    model.layers[0].first.assign(np.zeros((3, 2)))
    model.compile(keras.optimizers.SGD(0.0), "mse")
    model.fit(np.ones((4, 3)), np.zeros((4, 2)), verbose=0,
              callbacks=[keras_lk.LkMonitor(tmp_path)])
    events = read(tmp_path)
    assert {t for t in tags(events, "train")
            if t.startswith("abs_weights/")} == {
        "abs_weights/two/kernel", "abs_weights/two/kernel_1"}
    assert events[("train", "exact_zero_count/two")][0] == 6
