"""Train a small model with LkRegularizer on data made offline.

Run from the repository root, after `python3 dev.py setup`:
`.venv/bin/python examples/quickstart.py`

A regression of 20 features of which 5 matter, fitted with an L0.5 penalty
on the first layer and L1 on the second; prints the loss, the penalty and
how many first-layer weights ended near zero.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_lk  # noqa: E402


def main(epochs=20, seed=0):
    keras.utils.set_random_seed(seed)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2000, 20)).astype("float32")
    true_w = np.zeros(20, "float32")
    true_w[:5] = rng.uniform(1, 2, 5)
    y = (x @ true_w + 0.1 * rng.standard_normal(2000)).astype("float32")

    model = keras.Sequential([
        keras.Input((20,)),
        keras.layers.Dense(16, activation="relu", kernel_regularizer=(
            keras_lk.LkRegularizer(k=0.5, alpha=1e-2))),
        keras.layers.Dense(1, kernel_regularizer=keras_lk.LkRegularizer(
            k=1, alpha=1e-3)),
    ])
    model.compile(keras.optimizers.Adam(1e-2), "mse")
    history = model.fit(x, y, epochs=epochs, batch_size=64,
                        validation_split=0.2, verbose=2)
    kernel = keras.ops.convert_to_numpy(model.layers[0].kernel)
    penalty = sum(float(loss) for loss in model.losses)
    print(f"final loss {history.history['loss'][-1]:.4f}, "
          f"val loss {history.history['val_loss'][-1]:.4f}, "
          f"penalty {penalty:.4f}")
    print(f"first-layer |w| <= 1e-3: {np.mean(np.abs(kernel) <= 1e-3):.1%} "
          f"of {kernel.size} weights; exact zeros: {np.sum(kernel == 0)}")
    print("input rows' mean |w| (5 informative features first):")
    print(np.round(np.abs(kernel).mean(axis=1), 3))


if __name__ == "__main__":
    main()
