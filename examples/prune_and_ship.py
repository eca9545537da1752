"""Prune a model to 90% exact zeros, strip it and save a plain Keras file.

Run: `python examples/prune_and_ship.py [--out pruned.keras] [--quick]`

A small conv net on 8x8 images made with NumPy, trained with a k = 0
proximal penalty (gradual magnitude pruning) under `SparsityTarget(0.9)`.
It prints the zeros per layer, saves `strip(model)` and loads the file back
without any custom object, and compares the gzip sizes of the dense and the
pruned file.
"""

import argparse
import gzip
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_lk  # noqa: E402


def data(samples, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(samples, 8, 8, 1)).astype("float32")
    y = (x[:, 2:6, 2:6, 0].mean(axis=(1, 2)) > 0).astype("int32")
    return x, y


def model(regularizer=None):
    return keras.Sequential([
        keras.Input((8, 8, 1)),
        keras.layers.Conv2D(16, 3, activation="relu",
                            kernel_regularizer=regularizer),
        keras.layers.Flatten(),
        keras.layers.Dense(64, activation="relu",
                           kernel_regularizer=regularizer),
        keras.layers.Dense(2, activation="softmax",
                           kernel_regularizer=regularizer),
    ])


def gzip_size(path):
    with open(path, "rb") as file:
        return len(gzip.compress(file.read()))


def main(out="pruned.keras", epochs=20, samples=4000, target=0.9):
    x, y = data(samples)
    keras.utils.set_random_seed(0)
    net = model(keras_lk.LkRegularizer(k=0, proximal=True))
    net.compile(keras_lk.ProximalOptimizer(keras.optimizers.SGD(0.05)),
                "sparse_categorical_crossentropy", metrics=["accuracy"])
    net.fit(x, y, epochs=epochs, batch_size=32, verbose=0,
            callbacks=[keras_lk.SparsityTarget(target)])
    counts = keras_lk.sparsity(net)
    for path, layer in counts["layers"].items():
        print(f"{path:10s} {layer['zeros']:6d} of {layer['size']:6d} zero "
              f"({layer['fraction']:.1%})")
    print(f"total      {counts['total']['fraction']:.1%} exact zeros")

    keras_lk.strip(net).save(out)
    loaded = keras.saving.load_model(out)  # plain Keras, no custom objects
    same = np.allclose(loaded.predict(x[:64], verbose=0),
                       net.predict(x[:64], verbose=0), atol=1e-6)
    dense_path = out.replace(".keras", "_dense.keras")
    keras.utils.set_random_seed(0)
    model().save(dense_path)  # the same architecture, dense
    accuracy = net.evaluate(x, y, verbose=0)[1]
    print(f"accuracy {accuracy:.3f}; reloaded predictions equal: {same}")
    print(f"gzip size: dense {gzip_size(dense_path) / 1e3:.0f} kB, "
          f"pruned {gzip_size(out) / 1e3:.0f} kB")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="pruned.keras")
    parser.add_argument("--quick", action="store_true",
                        help="a few epochs on less data (a smoke run)")
    args = parser.parse_args()
    main(args.out, *((4, 1000) if args.quick else (20, 4000)))
