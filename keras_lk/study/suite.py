"""The sparsity suite: six small models of different shapes, their data.

Each entry builds a compiled model (every prunable weight given the same
`regularizer`, or none) and its seeded data, so that every method of
`keras-lk sweep` prunes exactly the same weights of exactly the same model:

- `digits_mlp`: the demo's MLP 64-64-10 on scikit-learn's digits;
- `small_output_mlp`: a 3-class MLP 20-128-64-3 whose output kernel (192
  weights) is small against its hidden ones (10,752), on numpy data from a
  random teacher network with label noise;
- `digits_conv`: two 3x3 convolutions, pooling and a dense head on the
  digits as 8x8x1 images;
- `digits_resnet`: a small ResNet on the digits as 8x8x1 images: a 16-channel
  stem, a residual block at 16 channels and a strided one at 32 (with a
  1x1 projection), every convolution followed by BatchNormalization, then
  global pooling and a dense head;
- `embedding`: an Embedding (500 tokens x 16) averaged over the sequence,
  then a 32-unit layer and a 2-class head, on numpy token sequences whose
  class is which of two token sets occurs more often;
- `transformer`: token and position embeddings, one Transformer block
  (`MultiHeadAttention` with 2 heads, its query/key/value/output kernels
  pruned, a 64-unit feed-forward net, LayerNorms) and a 6-class head, on
  numpy sequences whose class is the order in which tokens 1, 2 and 3
  occur.

Nothing is downloaded: the data are made with numpy or ship with
scikit-learn.
"""

from dataclasses import dataclass

import keras

from keras_lk.penalties.optimizer import ProximalOptimizer
from keras_lk.study.suite_data import (LENGTH, SEQUENCE, TOKENS, VOCAB,
                                      digit_images, load_digits, order_data,
                                      teacher_data, token_counts_data)

# The variables a method prunes: kernels and embeddings, not biases,
# normalizations or position embeddings.
PRUNABLE_SUFFIXES = ("kernel", "embeddings")


@dataclass(frozen=True)
class Entry:
    name: str
    build: object       # (regularizer, seed) -> compiled keras.Model
    data: object        # seed -> (x_train, y_train, x_test, y_test)
    epochs: int
    batch_size: int = 32


def prunable(model):
    """The variables every method prunes (the same list for every run)."""
    return [v for v in model.trainable_weights
            if v.path.split("/")[-1] in PRUNABLE_SUFFIXES
            and "position" not in v.path]


def _compile(model, regularizer, optimizer):
    if regularizer is not None and regularizer.proximal:
        optimizer = ProximalOptimizer(optimizer)
    model.compile(optimizer, "sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    return model


def _digits_mlp(regularizer, seed):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([
        keras.Input((64,)),
        keras.layers.Dense(64, activation="relu", name="hidden",
                           kernel_regularizer=regularizer),
        keras.layers.Dense(10, activation="softmax", name="output",
                           kernel_regularizer=regularizer)],
        name="digits_mlp")
    return _compile(model, regularizer, keras.optimizers.SGD(0.1))


def _small_output_mlp(regularizer, seed):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([
        keras.Input((20,)),
        keras.layers.Dense(128, activation="relu", name="hidden_1",
                           kernel_regularizer=regularizer),
        keras.layers.Dense(64, activation="relu", name="hidden_2",
                           kernel_regularizer=regularizer),
        keras.layers.Dense(3, activation="softmax", name="output",
                           kernel_regularizer=regularizer)],
        name="small_output_mlp")
    return _compile(model, regularizer, keras.optimizers.SGD(0.05))


def _digits_conv(regularizer, seed):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([
        keras.Input((8, 8, 1)),
        keras.layers.Conv2D(16, 3, padding="same", activation="relu",
                            name="conv_1", kernel_regularizer=regularizer),
        keras.layers.Conv2D(32, 3, padding="same", activation="relu",
                            name="conv_2", kernel_regularizer=regularizer),
        keras.layers.MaxPooling2D(2),
        keras.layers.Flatten(),
        keras.layers.Dense(10, activation="softmax", name="output",
                           kernel_regularizer=regularizer)],
        name="digits_conv")
    return _compile(model, regularizer, keras.optimizers.SGD(0.05))


def _conv_bn(x, filters, name, regularizer, strides=1, size=3):
    x = keras.layers.Conv2D(filters, size, strides, padding="same",
                            use_bias=False, name=name,
                            kernel_regularizer=regularizer)(x)
    return keras.layers.BatchNormalization(name=f"{name}_bn")(x)


def _digits_resnet(regularizer, seed):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.ReLU()(_conv_bn(inputs, 16, "stem", regularizer))
    for block, (filters, strides) in enumerate(((16, 1), (32, 2)), 1):
        name = f"block_{block}"
        y = keras.layers.ReLU()(_conv_bn(x, filters, f"{name}_a",
                                         regularizer, strides))
        y = _conv_bn(y, filters, f"{name}_b", regularizer)
        if strides != 1:
            x = _conv_bn(x, filters, f"{name}_skip", regularizer, strides, 1)
        x = keras.layers.ReLU()(keras.layers.Add()([x, y]))
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(10, activation="softmax", name="output",
                                 kernel_regularizer=regularizer)(x)
    model = keras.Model(inputs, outputs, name="digits_resnet")
    return _compile(model, regularizer, keras.optimizers.SGD(0.05,
                                                             momentum=0.9))


def _embedding(regularizer, seed):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([
        keras.Input((LENGTH,), dtype="int32"),
        keras.layers.Embedding(VOCAB, 16, name="embedding",
                               embeddings_regularizer=regularizer),
        keras.layers.GlobalAveragePooling1D(),
        keras.layers.Dense(32, activation="relu", name="hidden",
                           kernel_regularizer=regularizer),
        keras.layers.Dense(2, activation="softmax", name="output",
                           kernel_regularizer=regularizer)],
        name="embedding")
    return _compile(model, regularizer, keras.optimizers.Adam(3e-3))


@keras.saving.register_keras_serializable(package="keras_lk_suite")
class _PositionEmbedding(keras.layers.Layer):
    """Adds a learned embedding of each position."""

    def build(self, input_shape):
        self.position = self.add_weight(
            shape=tuple(input_shape[1:]), initializer="random_normal",
            name="position_embeddings")

    def call(self, x):
        return x + self.position


def _transformer(regularizer, seed):
    keras.utils.set_random_seed(seed)
    tokens = keras.Input((SEQUENCE,), dtype="int32")
    x = keras.layers.Embedding(TOKENS, 32, name="tokens",
                               embeddings_regularizer=regularizer)(tokens)
    x = _PositionEmbedding(name="position")(x)
    attention = keras.layers.MultiHeadAttention(
        2, 16, name="mha", kernel_regularizer=regularizer)(x, x)
    x = keras.layers.LayerNormalization(name="norm_1")(x + attention)
    hidden = keras.layers.Dense(64, activation="relu", name="ffn_1",
                                kernel_regularizer=regularizer)(x)
    hidden = keras.layers.Dense(32, name="ffn_2",
                                kernel_regularizer=regularizer)(hidden)
    x = keras.layers.LayerNormalization(name="norm_2")(x + hidden)
    x = keras.layers.GlobalAveragePooling1D()(x)
    outputs = keras.layers.Dense(6, activation="softmax", name="output",
                                 kernel_regularizer=regularizer)(x)
    model = keras.Model(tokens, outputs, name="transformer")
    return _compile(model, regularizer, keras.optimizers.Adam(3e-3))


MODELS = {
    "digits_mlp": Entry("digits_mlp", _digits_mlp, load_digits, 20),
    "small_output_mlp": Entry("small_output_mlp", _small_output_mlp,
                              teacher_data, 30),
    "digits_conv": Entry("digits_conv", _digits_conv, digit_images, 20),
    "digits_resnet": Entry("digits_resnet", _digits_resnet, digit_images,
                           20),
    "embedding": Entry("embedding", _embedding, token_counts_data, 15),
    "transformer": Entry("transformer", _transformer, order_data, 15),
}
