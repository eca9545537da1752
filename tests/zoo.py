"""The model zoo of the tests: small versions of the models users
regularize, each with numpy data and a loss.

keras_hub is not used here: keras-hub 0.32 requires tensorflow-text, which
pulls in the full `tensorflow` wheel beside the project's `tensorflow-cpu`
(two TensorFlow distributions in one environment). `dev.py` installs it
without its requirements, with those it imports (tokenizers,
huggingface_hub, kagglehub, ...), for the tests that shrink its backbones
(`test_applications.py`). The BERT-like
encoder and GPT-like decoder are built from `keras.layers` the way
keras_hub builds them: a backbone model nested in a task model, and
Transformer blocks that are custom layers holding their sublayers
(attention, feed-forward, normalizations), so that the projections sit at
paths such as `bert_backbone/block_0/mha/query`.
"""

import collections

import keras
import numpy as np
from keras import ops

Entry = collections.namedtuple(
    "Entry", "build data loss weights tiny")
"""`build()` -> model; `data(rng)` -> (x, y); `weights`: the weight
attributes to regularize (each one reaches at least one layer); `tiny`:
whether it is fast enough for the fast tests."""


@keras.saving.register_keras_serializable(package="zoo")
class PositionEmbedding(keras.layers.Layer):
    """Adds a learned embedding of each position (keras_hub's
    PositionEmbedding, in short)."""

    def __init__(self, length, **kwargs):
        super().__init__(**kwargs)
        self.length = length

    def build(self, input_shape):
        self.position_embeddings = self.add_weight(
            shape=(self.length, input_shape[-1]), name="position_embeddings")

    def call(self, x):
        return x + self.position_embeddings[: ops.shape(x)[1]]

    def get_config(self):
        return {**super().get_config(), "length": self.length}


@keras.saving.register_keras_serializable(package="zoo")
class TransformerBlock(keras.layers.Layer):
    """Self-attention and a feed-forward net, each with a residual and a
    LayerNorm (post-norm, as BERT; `causal=True` masks the future, as
    GPT). Its config records no regularizer, as keras_hub's blocks."""

    def __init__(self, heads, width, hidden, causal=False, **kwargs):
        super().__init__(**kwargs)
        self.heads, self.width, self.hidden = heads, width, hidden
        self.causal = causal
        self.mha = keras.layers.MultiHeadAttention(heads, width // heads,
                                                   name="mha")
        self.attention_norm = keras.layers.LayerNormalization(
            name="attention_norm")
        self.ffn = [keras.layers.Dense(hidden, "gelu", name="ffn_in"),
                    keras.layers.Dense(width, name="ffn_out")]
        self.ffn_norm = keras.layers.LayerNormalization(name="ffn_norm")

    def build(self, input_shape):
        self.mha.build(input_shape, input_shape)
        self.attention_norm.build(input_shape)
        self.ffn[0].build(input_shape)
        self.ffn[1].build(tuple(input_shape[:-1]) + (self.hidden,))
        self.ffn_norm.build(input_shape)

    def call(self, x):
        x = self.attention_norm(
            x + self.mha(x, x, use_causal_mask=self.causal))
        return self.ffn_norm(x + self.ffn[1](self.ffn[0](x)))

    def get_config(self):
        return {**super().get_config(), "heads": self.heads,
                "width": self.width, "hidden": self.hidden,
                "causal": self.causal}


VOCAB, LENGTH, WIDTH = 40, 12, 32


def _backbone(name, causal):
    tokens = keras.Input((LENGTH,), dtype="int32", name="tokens")
    x = keras.layers.Embedding(VOCAB, WIDTH, name="token_embedding")(tokens)
    x = PositionEmbedding(LENGTH, name="position_embedding")(x)
    for index in range(2):
        x = TransformerBlock(2, WIDTH, 64, causal, name=f"block_{index}")(x)
    return keras.Model(tokens, x, name=name)


def bert_like():
    """A BERT-like classifier: the encoder backbone nested in a task model
    that classifies from the first token."""
    backbone = _backbone("bert_backbone", causal=False)
    tokens = keras.Input((LENGTH,), dtype="int32", name="tokens")
    first = backbone(tokens)[:, 0]
    outputs = keras.layers.Dense(3, name="classifier")(first)
    return keras.Model(tokens, outputs, name="bert_classifier")


def _classes_of_tokens(rng, classes=3):
    """Token sequences whose class is which of tokens 1..classes occurs
    most often."""
    x = rng.integers(0, VOCAB, (64, LENGTH))
    counts = np.stack([(x == c + 1).sum(axis=1) for c in range(classes)], 1)
    return x, counts.argmax(axis=1)


def gpt_like():
    """A GPT-like language model: the causal decoder backbone nested in a
    model that predicts the next token at every position."""
    backbone = _backbone("gpt_backbone", causal=True)
    tokens = keras.Input((LENGTH,), dtype="int32", name="tokens")
    outputs = keras.layers.Dense(VOCAB, name="lm_head")(backbone(tokens))
    return keras.Model(tokens, outputs, name="gpt_lm")


def _next_tokens(rng):
    """Sequences counting up modulo VOCAB from a random start: the next
    token is the previous one plus 1."""
    start = rng.integers(0, VOCAB, (64, 1))
    x = (start + np.arange(LENGTH + 1)) % VOCAB
    return x[:, :-1], x[:, 1:]


def resnet50():
    return keras.applications.ResNet50(weights=None, input_shape=(32, 32, 3),
                                       classes=4)


def mobilenet_v3_small():
    return keras.applications.MobileNetV3Small(
        weights=None, input_shape=(32, 32, 3), classes=4,
        include_preprocessing=False)


def _images(rng):
    x = rng.standard_normal((16, 32, 32, 3)).astype("float32")
    return x, keras.utils.to_categorical(np.arange(16) % 4, 4)


def recurrent():
    """Embedding -> Bidirectional(LSTM) -> GRU -> Dense."""
    tokens = keras.Input((LENGTH,), dtype="int32")
    x = keras.layers.Embedding(VOCAB, 8, name="embed")(tokens)
    x = keras.layers.Bidirectional(
        keras.layers.LSTM(8, return_sequences=True), name="bilstm")(x)
    x = keras.layers.GRU(8, name="gru")(x)
    return keras.Model(tokens, keras.layers.Dense(3, name="head")(x))


def embedding_bag():
    """Embedding -> average over tokens -> Dense -> Dense."""
    return keras.Sequential([
        keras.Input((LENGTH,), dtype="int32"),
        keras.layers.Embedding(VOCAB, 16, name="embed"),
        keras.layers.GlobalAveragePooling1D(),
        keras.layers.Dense(16, "relu", name="hidden"),
        keras.layers.Dense(3, name="head")], name="bag")


_SPARSE = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

ZOO = {
    "bert_like": Entry(bert_like, _classes_of_tokens, _SPARSE,
                       ("kernel", "embeddings", "position_embeddings"),
                       False),
    "gpt_like": Entry(gpt_like, _next_tokens, _SPARSE,
                      ("kernel", "embeddings", "position_embeddings"), False),
    "resnet50": Entry(resnet50, _images, "categorical_crossentropy",
                      ("kernel",), False),
    "mobilenet_v3_small": Entry(mobilenet_v3_small, _images,
                                "categorical_crossentropy", ("kernel",),
                                False),
    "recurrent": Entry(recurrent, _classes_of_tokens, _SPARSE,
                       ("kernel", "recurrent_kernel", "embeddings"), False),
    "embedding_bag": Entry(embedding_bag, _classes_of_tokens, _SPARSE,
                           ("kernel", "embeddings"), True),
}
