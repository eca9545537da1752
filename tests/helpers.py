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


def sparse_regression_data(n=256, features=30, informative=3, seed=0):
    """`(x, y)` where only the first `informative` features matter."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, features)).astype("float32")
    y = x[:, :informative].sum(axis=1, keepdims=True)
    return x, y.astype("float32")


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
