"""Exact zeros from proximal steps, where gradient steps give none.

Run: `.venv/bin/python examples/proximal_sparsity.py [--logdir runs/sparsity]`

A linear regression on 200 features of which the first 20 are informative,
made with NumPy. The same L1 and L0.5 penalties (same alpha) are applied as
a (sub)gradient and as a proximal step (`ProximalOptimizer`); each run is
logged with `LkMonitor`, so TensorBoard shows exact, near and stable zeros
side by side. Under minibatch noise prox-SGD L1 zeros come and go, so stable
zeros (zero at every step since the last log) are reported too.
"""

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_lk  # noqa: E402

FEATURES = 200
INFORMATIVE = 20


def sparse_regression(seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((400, FEATURES)).astype("float32")
    coef = np.zeros(FEATURES, "float32")
    coef[:INFORMATIVE] = rng.uniform(1, 2, INFORMATIVE) * rng.choice(
        [-1, 1], INFORMATIVE)
    y = x @ coef + 0.5 * rng.standard_normal(400).astype("float32")
    return x, y[:, None]


def run(name, k, proximal, args, x, y):
    keras.utils.set_random_seed(args.seed)
    model = keras.Sequential([keras.Input((FEATURES,)), keras.layers.Dense(
        1, name="linear", kernel_regularizer=keras_lk.LkRegularizer(
            k=k, alpha=args.alpha, proximal=proximal))])
    optimizer = keras.optimizers.SGD(args.lr)
    model.compile(keras_lk.ProximalOptimizer(optimizer) if proximal
                  else optimizer, "mse")
    history = model.fit(x, y, batch_size=40, epochs=args.epochs, verbose=0,
                        callbacks=[keras_lk.LkMonitor(
                            os.path.join(args.logdir, name), step_stats=True)])
    kernel = model.get_layer("linear").kernel.numpy().ravel()
    noise = kernel[INFORMATIVE:]
    return (name, np.mean(noise == 0), history.history["stable_zero_frac"][-1],
            np.mean(np.abs(noise) <= 1e-3), np.sum(kernel[:INFORMATIVE] != 0),
            history.history["loss"][-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--logdir", default="runs/sparsity")
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--alpha", type=float, default=40.0)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    x, y = sparse_regression(args.seed)
    rows = [run(name, k, proximal, args, x, y) for name, k, proximal in [
        ("L1_gradient", 1.0, False), ("L1_proximal", 1.0, True),
        ("L0.5_gradient", 0.5, False), ("L0.5_proximal", 0.5, True)]]
    print(f"{'run':<15}{'noise w==0':>11}{'stable 0':>10}{'noise|w|<=1e-3':>16}"
          f"{'informative kept':>18}{'loss':>9}")
    for name, exact, stable, near, kept, loss in rows:
        print(f"{name:<15}{exact:>11.0%}{stable:>10.0%}{near:>16.0%}"
              f"{kept:>13}/{INFORMATIVE}{loss:>9.3f}")
    print("(stable 0: share of all 200 weights zero at every step of the last "
          "epoch)")
    print("\nOpen the runs in TensorBoard (then http://127.0.0.1:6006):\n  "
          f"{sys.executable} -m tensorboard.main --logdir {args.logdir} "
          "--host 127.0.0.1")


if __name__ == "__main__":
    main()
