"""Data and models shared by the tests (fixtures in conftest.py use them)."""

import keras
import numpy as np

from keras_lk import LkRegularizer

ALPHA = 0.1


def regression_data(n=64, features=4, seed=0):
    """`(x, y)`: standard normal features and targets, float32."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, features)).astype("float32")
    y = rng.standard_normal((n, 1)).astype("float32")
    return x, y


def linear_data(n=64, features=5, seed=0):
    """`(x, y)` with `y = 2 * x[:, 0]`, float32."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, features)).astype("float32")
    return x, (x[:, :1] * 2.0).astype("float32")


def sparse_regression_data(n=256, features=30, informative=3, noise=0.0,
                           seed=0):
    """`(x, y)` where only the first `informative` features matter.

    Their coefficients are 1 to 2 in size, of either sign; `noise` is the
    standard deviation of the Gaussian noise added to y.
    """
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, features)).astype("float32")
    coef = np.zeros(features, "float32")
    coef[:informative] = (rng.uniform(1.0, 2.0, informative)
                          * rng.choice([-1, 1], informative))
    y = x @ coef + noise * rng.standard_normal(n)
    return x, y.astype("float32")[:, None]


def two_layer_model(lr=0.0, optimizer=None, **compile_kwargs):
    """Dense(3) with an L1 `LkRegularizer`, then Dense(1) with Keras's L2."""
    model = keras.Sequential([
        keras.Input((4,)),
        keras.layers.Dense(3, name="first",
                           kernel_regularizer=LkRegularizer(k=1, alpha=ALPHA)),
        keras.layers.Dense(1, name="second",
                           kernel_regularizer=keras.regularizers.L2(ALPHA)),
    ])
    model.compile(optimizer or keras.optimizers.SGD(lr), "mse",
                  **compile_kwargs)
    return model


def by_hand_penalties(model):
    """The two penalties of `two_layer_model`, from its weights."""
    first = ALPHA * np.mean(np.abs(model.get_layer("first").kernel.numpy()))
    second = ALPHA * np.sum(np.square(
        model.get_layer("second").kernel.numpy()))
    return first, second


def proximal_model(k=0.5, alpha=2.0, features=30):
    """One Dense unit whose kernel has a proximal `LkRegularizer`."""
    return keras.Sequential([keras.Input((features,)), keras.layers.Dense(
        1, name="d", kernel_regularizer=LkRegularizer(k=k, alpha=alpha,
                                                      proximal=True))])


def regularizers_of(model):
    """`{variable path: regularizer object}` of every regularized weight."""
    return {v.path: v.regularizer for v in model.weights
            if v.regularizer is not None}


def nested_model():
    """An encoder model (Dense, BatchNormalization) inside a Functional one."""
    encoder = keras.Sequential([
        keras.Input((6,)), keras.layers.Dense(5, name="enc_dense"),
        keras.layers.BatchNormalization(name="enc_bn")], name="encoder")
    inputs = keras.Input((6,))
    hidden = keras.layers.Dropout(0.1)(encoder(inputs))
    outputs = keras.layers.Dense(1, name="head")(hidden)
    return keras.Model(inputs, outputs, name="outer")


def shared_and_frozen_model():
    """A nested encoder (L0.5 on its kernel), a layer applied twice and a
    frozen one, compiled with SGD."""
    shared = keras.layers.Dense(4, name="shared")
    encoder = keras.Sequential([keras.Input((4,)), keras.layers.Dense(
        4, name="enc", kernel_regularizer=LkRegularizer(k=0.5, alpha=0.1))],
        name="encoder")
    inputs = keras.Input((4,))
    hidden = shared(encoder(inputs))
    hidden = shared(hidden)  # a shared layer, counted once
    frozen = keras.layers.Dense(2, name="frozen")
    frozen.trainable = False
    outputs = keras.layers.Dense(1, name="head")(
        keras.layers.Dropout(0.1)(frozen(hidden)))
    model = keras.Model(inputs, outputs)
    model.compile(keras.optimizers.SGD(0.01), "mse")
    return model


class PenaltyTrace(keras.callbacks.Callback):
    """Records, before every training batch, the optimizer's iteration
    count and the by-hand penalty of `two_layer_model` (what the step about
    to run adds to its loss)."""

    def __init__(self):
        super().__init__()
        self.steps = []  # [(iterations, penalty)]

    def on_train_begin(self, logs=None):
        self.steps = []

    def on_train_batch_begin(self, batch, logs=None):
        self.steps.append((int(self.model.optimizer.iterations.numpy()),
                           float(sum(by_hand_penalties(self.model)))))

    def window_means(self, batches_per_window):
        """The mean penalty of each window of `batches_per_window` batches."""
        values = [penalty for _, penalty in self.steps]
        return [float(np.mean(values[i:i + batches_per_window]))
                for i in range(0, len(values), batches_per_window)]


class FailAt(keras.callbacks.Callback):
    """Raises `RuntimeError("boom")` at the end of epoch `epoch`: a fit that
    raises, as a callback error or Ctrl-C would."""

    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.epoch:
            raise RuntimeError("boom")
