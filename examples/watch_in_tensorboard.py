"""Regularize a model with LkRegularizer and watch it in TensorBoard.

Run: `python examples/watch_in_tensorboard.py [--logdir runs/watch] [--quick]`
then `tensorboard --logdir runs/watch --host 127.0.0.1`.

A classifier on 20 inputs of which 5 matter (data made with NumPy), trained
twice: once with an L0.5 penalty on its first kernel, once without. Both runs
go to one log directory, so TensorBoard shows them side by side: the
penalty's share of the loss, the zero fractions and the histograms of |w|.
"""

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_lk  # noqa: E402


def data(samples, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(samples, 20)).astype("float32")
    y = (x[:, :5].sum(axis=1) > 0).astype("int32")
    return x, y


def model(regularizer):
    return keras.Sequential([
        keras.Input((20,)),
        keras.layers.Dense(32, activation="relu",
                           kernel_regularizer=regularizer),
        keras.layers.Dense(2, activation="softmax"),
    ])


def main(logdir="runs/watch", epochs=20, samples=4000):
    x, y = data(samples)
    for name, regularizer in (("l0.5", keras_lk.LkRegularizer(k=0.5, alpha=0.05)),
                              ("none", None)):
        keras.utils.set_random_seed(0)
        net = model(regularizer)
        net.compile("adam", "sparse_categorical_crossentropy",
                    metrics=["accuracy"])
        history = net.fit(x, y, epochs=epochs, validation_split=0.2, verbose=0,
                          callbacks=[keras_lk.LkMonitor(
                              os.path.join(logdir, name))])
        kernel = keras.ops.convert_to_numpy(net.layers[0].kernel)
        rows = np.abs(kernel).mean(axis=1)
        print(f"{name:5s} val accuracy {history.history['val_accuracy'][-1]:.3f}"
              f"  |w| <= 1e-3: {np.mean(np.abs(kernel) <= 1e-3):6.1%}"
              f"  mean |w| of the 5 inputs that matter / the 15 others: "
              f"{rows[:5].mean():.3f} / {rows[5:].mean():.3f}")
    print(f"tensorboard --logdir {logdir} --host 127.0.0.1")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--logdir", default="runs/watch")
    parser.add_argument("--quick", action="store_true",
                        help="a few epochs on less data (a smoke run)")
    args = parser.parse_args()
    main(args.logdir, *((3, 1000) if args.quick else (20, 4000)))
