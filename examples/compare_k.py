"""Compare exponents k side by side: accuracy, zeros and the penalty's share.

Run: `python examples/compare_k.py [--k 0.5 1 2 3] [--alpha 0.05] [--quick]`

One classifier per k on 20 inputs of which 5 matter (data made with NumPy),
each with `LkRegularizer(k, alpha)` on its first kernel, from the same
initial weights, each logged to TensorBoard under `--logdir`. A table
shows what each k does: k <= 1 piles weights up near zero, k = 2 shrinks
them all, large k only pulls on the largest. Adapt `data` and `model` to
your own problem.
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


def main(ks=(0.5, 1.0, 2.0, 3.0), alpha=0.05, epochs=20, samples=4000,
         logdir="runs/compare_k"):
    x, y = data(samples)
    print(f"{'k':>5s} {'val acc':>8s} {'|w|<=1e-3':>10s} {'max|w|':>7s} "
          f"{'penalty share':>14s}")
    rows = {}
    for k in ks:
        keras.utils.set_random_seed(0)
        net = model(keras_lk.LkRegularizer(k=k, alpha=alpha))
        net.compile("adam", "sparse_categorical_crossentropy",
                    metrics=["accuracy"])
        # The monitor's `reg_share` also reaches the History.
        history = net.fit(x, y, epochs=epochs, validation_split=0.2,
                          verbose=0, callbacks=[keras_lk.LkMonitor(
                              os.path.join(logdir, f"k{k:g}"))])
        kernel = np.abs(keras.ops.convert_to_numpy(net.layers[0].kernel))
        rows[k] = (history.history["val_accuracy"][-1],
                   float(np.mean(kernel <= 1e-3)), float(kernel.max()),
                   history.history["reg_share"][-1])
        print(f"{k:5g} {rows[k][0]:8.3f} {rows[k][1]:10.1%} {rows[k][2]:7.3f} "
              f"{rows[k][3]:14.1%}")
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", type=float, nargs="+", default=[0.5, 1, 2, 3])
    parser.add_argument("--alpha", type=float, default=0.05)
    parser.add_argument("--logdir", default="runs/compare_k")
    parser.add_argument("--quick", action="store_true",
                        help="a few epochs on less data (a smoke run)")
    args = parser.parse_args()
    main(args.k, args.alpha, *((3, 1000) if args.quick else (20, 4000)),
         logdir=args.logdir)
