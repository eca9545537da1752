"""A proximal fit on whatever backend KERAS_BACKEND names, for the
cross-backend tests (`test_backends.py`): every number comes from NumPy
(data, initial weights), so TensorFlow and JAX start from the same state.

    python tests/proximal_run.py OUT.npz [--data-parallel]

Writes, per k in KS (and per (k, target) in TARGETED, with
SparsityTarget), the kernels after the fit, the per-epoch losses, the
penalty in `model.losses`, the zero fractions ZeroCounts logged, the
penalty and share RegularizationShare recorded, and the event files the
monitors wrote. With --data-parallel (JAX, several devices)
it trains once on one device and once under keras.distribution's
DataParallel over every CPU device, and writes both.
"""

import os
import sys
import tempfile

import keras
import numpy as np

import keras_lk

KS = (0.0, 0.5, 1.0)
# SparsityTarget runs: (k, target).
TARGETED = ((0.0, 0.8), (0.5, 0.8))
# Every run's key prefix.
RUNS = tuple(str(k) for k in KS) + tuple(f"{k}_target{t}"
                                          for k, t in TARGETED)
ALPHAS = {0.0: 0.25, 0.5: 0.05, 1.0: 0.1}


def data(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((256, 20)).astype("float32")
    teacher = rng.standard_normal((20, 3)).astype("float32")
    y = np.argmax(x @ teacher, axis=1)
    return x, y


def fit(k, seed=0, target=None):
    rng = np.random.default_rng(seed + 1)
    regularizer = keras_lk.LkRegularizer(k=k, alpha=ALPHAS[k], reduction="sum",
                                         proximal=True)
    model = keras.Sequential([
        keras.Input((20,)),
        keras.layers.Dense(32, "relu", kernel_regularizer=regularizer),
        keras.layers.Dense(16, "relu", kernel_regularizer=regularizer),
        # A tiny output layer: 48 weights.
        keras.layers.Dense(3, kernel_regularizer=regularizer)])
    model.set_weights([rng.standard_normal(w.shape).astype("float32") * 0.3
                       for w in model.get_weights()])
    model.compile(keras_lk.ProximalOptimizer(keras.optimizers.Adam(0.02)),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x, y = data(seed)
    log_dir = tempfile.mkdtemp()
    history = model.fit(x, y, batch_size=32, epochs=4, shuffle=False,
                        verbose=0, callbacks=[
                            keras_lk.ZeroCounts(log_dir, update_freq=4),
                            keras_lk.AbsWeightHistograms(log_dir),
                            keras_lk.RegularizationShare(log_dir)] + (
                            [] if target is None else
                            [keras_lk.SparsityTarget(target)]))
    k = k if target is None else f"{k}_target{target}"
    results = {f"k{k}_kernel{i}": layer.kernel.numpy()
               for i, layer in enumerate(model.layers)} | {
        f"k{k}_loss": np.asarray(history.history["loss"]),
        f"k{k}_penalty": np.asarray(float(sum(model.losses))),
        # The monitors: zero fractions every 4 steps, histograms per epoch.
        f"k{k}_zero_frac": np.asarray(history.history["zero_frac"]),
        # The penalty each epoch's steps added, and its share of the loss.
        f"k{k}_reg_loss": np.asarray(history.history["reg_loss"]),
        f"k{k}_reg_share": np.asarray(history.history["reg_share"]),
        f"k{k}_events": np.asarray(sorted(
            os.path.relpath(os.path.join(root, name), log_dir)
            for root, _, names in os.walk(log_dir) for name in names))}
    if keras.backend.backend() == "jax":  # the devices holding the kernel
        results[f"k{k}_devices"] = np.asarray(len(
            model.layers[0].kernel.value.sharding.device_set))
    return results


def main(out, data_parallel=False):
    results = {"backend": np.asarray(keras.backend.backend())}
    for k in KS:
        results |= fit(k)
    for k, target in TARGETED:
        results |= fit(k, target=target)
    if data_parallel:
        devices = keras.distribution.list_devices("cpu")
        results["devices"] = np.asarray(len(devices))
        keras.distribution.set_distribution(
            keras.distribution.DataParallel(devices=devices))
        for k in KS:
            results |= {f"parallel_{key}": value
                        for key, value in fit(k).items()}
        for k, target in TARGETED:
            results |= {f"parallel_{key}": value for key, value in
                        fit(k, target=target).items()}
    np.savez(out, **results)


if __name__ == "__main__":
    main(sys.argv[1], "--data-parallel" in sys.argv[2:])
