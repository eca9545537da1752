"""Small models of every layer kind `unit_groups` and `shrink` know, each
with numpy inputs, for the structure tests (`test_shrink.py`). Built with
names that tests refer to."""

import keras
import numpy as np
from keras import layers as L

RNG = np.random.default_rng(0)


def lively(model, seed=0, kernels=False):
    """Gives BatchNormalization statistics, scales and offsets random
    values (and every float weight, with `kernels=True`), so that no unit
    is born equal to another and outputs are not all near zero."""
    rng = np.random.default_rng(seed)
    for variable in model.weights:
        if not str(variable.dtype).startswith("float"):
            continue
        shape, path = variable.shape, variable.path
        if path.endswith(("moving_variance", "gamma")):
            value = rng.uniform(0.5, 1.5, shape)
        elif path.endswith(("moving_mean", "beta")) or (
                kernels and path.endswith("bias")):
            value = rng.normal(0, 0.1, shape)
        elif kernels:
            fan_in = int(np.prod(shape[:-1])) if len(shape) > 1 else 1
            value = rng.normal(0, 1.0 / np.sqrt(max(fan_in, 1)), shape)
        else:
            continue
        variable.assign(value.astype(variable.dtype))
    return model


def mlp():
    model = keras.Sequential([
        keras.Input((10,)), L.Dense(16, "relu", name="hidden"),
        L.Dropout(0.1), L.Dense(12, "tanh", name="second"),
        L.Dense(3, name="head")], name="mlp")
    return model, RNG.normal(size=(4, 10)).astype("float32")


def residual_cnn():
    """conv-BN-relu, a residual Add, a Concatenate with a branch, pooling,
    padding, Flatten and Dense."""
    inputs = keras.Input((12, 12, 3), name="pixels")
    x = L.Conv2D(8, 3, padding="same", name="stem")(inputs)
    x = L.BatchNormalization(name="stem_bn")(x)
    x = L.Activation("relu", name="stem_relu")(x)
    y = L.Conv2D(8, 3, padding="same", name="body")(x)
    y = L.BatchNormalization(name="body_bn")(y)
    x = L.Add(name="residual")([x, y])
    branch = L.Conv2D(6, 1, activation="swish", name="branch")(x)
    x = L.Concatenate(name="concat")([x, branch])
    x = L.ZeroPadding2D(1)(x)
    x = L.AveragePooling2D(2, name="pool")(x)
    x = L.Cropping2D(1)(x)
    x = L.UpSampling2D()(x)
    x = L.MaxPooling2D(4)(x)
    x = L.Flatten(name="flatten")(x)
    x = L.Dense(10, "relu", name="fc")(x)
    model = keras.Model(inputs, L.Dense(3, name="head")(x), name="residual")
    return model, RNG.normal(size=(2, 12, 12, 3)).astype("float32")


def squeeze_excite():
    """A squeeze-and-excitation gate (GlobalAveragePooling, Reshape, two
    1x1 convolutions, Multiply), as EfficientNet's, and a `keras.ops`
    call written on a symbolic tensor (`x * 0.5`)."""
    inputs = keras.Input((8, 8, 3))
    x = L.Conv2D(12, 3, activation="relu", name="expand")(inputs)
    gate = L.GlobalAveragePooling2D()(x)
    gate = L.Reshape((1, 1, 12), name="reshape")(gate)
    gate = L.Conv2D(4, 1, activation="relu", name="reduce")(gate)
    gate = L.Conv2D(12, 1, activation="sigmoid", name="excite")(gate)
    x = L.Multiply(name="gate")([x, gate]) * 0.5
    x = L.Conv2D(5, 1, name="project")(x)
    x = L.GlobalMaxPooling2D()(x)
    model = keras.Model(inputs, L.Dense(2, name="head")(x), name="se")
    return model, RNG.normal(size=(2, 8, 8, 3)).astype("float32")


def convolutions():
    """Depthwise (multiplier 2), PReLU, separable, transposed, BN without
    offset, a Reshape that keeps the channels, Conv1D and Conv3D."""
    inputs = keras.Input((10, 10, 3))
    x = L.Conv2D(8, 3, padding="same", name="conv")(inputs)
    x = L.DepthwiseConv2D(3, depth_multiplier=2, padding="same",
                          name="depthwise")(x)
    x = L.PReLU(name="prelu")(x)
    x = L.SeparableConv2D(12, 3, depth_multiplier=2, name="separable")(x)
    x = L.Conv2DTranspose(6, 3, strides=2, name="transpose")(x)
    x = L.BatchNormalization(center=False, name="bn")(x)
    x = L.MaxPooling2D(2, name="pool")(x)
    x = L.Reshape((-1, 6), name="to_sequence")(x)
    x = L.Conv1D(5, 1, name="conv1d")(x)
    x = L.Reshape((4, 4, 4, 5), name="to_volume")(x)
    x = L.Conv3D(4, 2, name="conv3d")(x)
    x = L.GlobalAveragePooling3D()(x)
    model = keras.Model(inputs, L.Dense(3, name="head")(x), name="convs")
    return model, RNG.normal(size=(2, 10, 10, 3)).astype("float32")


def recurrent():
    """Embedding, LSTM, GRU (both reset modes), SimpleRNN, Bidirectional
    (concatenated and summed)."""
    tokens = keras.Input((9,), dtype="int32")
    x = L.Embedding(30, 16, name="embed")(tokens)
    x = L.LSTM(10, return_sequences=True, name="lstm")(x)
    x = L.Bidirectional(L.GRU(6, return_sequences=True), name="bigru")(x)
    x = L.Bidirectional(L.LSTM(5, return_sequences=True), merge_mode="sum",
                        name="bilstm")(x)
    x = L.GRU(8, reset_after=False, return_sequences=True, name="gru")(x)
    x = L.SimpleRNN(6, name="rnn")(x)
    model = keras.Model(tokens, L.Dense(2, name="head")(x), name="rnns")
    return model, RNG.integers(0, 30, (3, 9))


def encoder(blocks=2, width=32, heads=4, length=16, vocab=50, causal=False):
    """A Transformer encoder (or, causal, a decoder) written with the
    Functional API: heads, FFN units, residuals and LayerNorms."""
    tokens = keras.Input((length,), dtype="int32")
    x = L.Embedding(vocab, width, name="embed")(tokens)
    for b in range(blocks):
        a = L.MultiHeadAttention(heads, width // heads, name=f"mha{b}")(
            x, x, use_causal_mask=causal)
        x = L.LayerNormalization(name=f"norm{b}a")(L.Add()([x, a]))
        h = L.Dense(4 * width, "gelu", name=f"ffn{b}_in")(x)
        h = L.Dense(width, name=f"ffn{b}_out")(h)
        x = L.LayerNormalization(name=f"norm{b}b")(L.Add()([x, h]))
    x = L.GlobalAveragePooling1D()(x)
    model = keras.Model(tokens, L.Dense(3, name="head")(x), name="encoder")
    return model, RNG.integers(0, vocab, (3, length))


def embedding_flatten():
    """Embedding dimensions consumed by units: Embedding, Flatten, Dense."""
    model = keras.Sequential([
        keras.Input((6,), dtype="int32"), L.Embedding(20, 8, name="embed"),
        L.Flatten(), L.Dense(7, "relu", name="hidden"),
        L.Dense(2, name="head")], name="embedding_flatten")
    return model, RNG.integers(0, 20, (4, 6))


def nested():
    """A Sequential feature extractor called inside a Functional model, as
    a `keras.applications` backbone is in transfer learning."""
    base = keras.Sequential([
        keras.Input((8, 8, 3)), L.Conv2D(8, 3, name="c1"),
        L.BatchNormalization(name="bn1"), L.ReLU(),
        L.Conv2D(6, 3, name="c2")], name="base")
    inputs = keras.Input((8, 8, 3))
    x = L.GlobalAveragePooling2D()(base(inputs))
    x = L.Dense(9, "relu", name="fc")(x)
    model = keras.Model(inputs, L.Dense(2, name="head")(x), name="nested")
    return model, RNG.normal(size=(2, 8, 8, 3)).astype("float32")


MODELS = {
    "mlp": mlp, "residual_cnn": residual_cnn,
    "squeeze_excite": squeeze_excite, "convolutions": convolutions,
    "recurrent": recurrent, "encoder": encoder,
    "decoder": lambda: encoder(causal=True),
    "embedding_flatten": embedding_flatten, "nested": nested,
}


def concat_residual():
    """InceptionResNetV2's residual: a stream made by a Concatenate, added
    to one convolution's output (its units then follow the stream's)."""
    inputs = keras.Input((8, 8, 3))
    a = L.Conv2D(4, 1, activation="relu", name="branch_a")(inputs)
    b = L.Conv2D(6, 3, padding="same", activation="relu",
                 name="branch_b")(inputs)
    stream = L.Concatenate(name="stream")([a, b])
    mixed = L.Conv2D(5, 1, activation="relu", name="mixed")(stream)
    up = L.Conv2D(10, 1, name="up")(mixed)
    x = L.Add(name="residual")([stream, up])
    x = L.BatchNormalization(name="bn")(x)
    up2 = L.Conv2D(10, 1, name="up2")(L.Activation("relu")(x))
    x = L.Add(name="residual2")([up2, x])
    x = L.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, L.Dense(2, name="head")(x),
                        name="concat_residual")
    return model, RNG.normal(size=(2, 8, 8, 3)).astype("float32")


MODELS["concat_residual"] = concat_residual
