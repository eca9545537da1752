"""keras-lk on the JAX backend: proximal training to a target, monitored.

Run: `python examples/jax_backend.py [--logdir runs/jax] [--quick]`
(needs `pip install '.[cpu,jax]'`; PyTorch works the same way with
`KERAS_BACKEND=torch`).

The backend is chosen before Keras is imported. Everything else is the
same code as on TensorFlow: a proximal L0.5 penalty, `ProximalOptimizer`,
`SparsityTarget(0.8)` and `LkMonitor`. TensorFlow, installed beside JAX,
only writes the event files.
"""

import argparse
import os

os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_lk  # noqa: E402


def main(logdir="runs/jax", epochs=10, samples=2000):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(samples, 20)).astype("float32")
    y = (x[:, :5].sum(axis=1) > 0).astype("int32")
    keras.utils.set_random_seed(0)
    reg = keras_lk.LkRegularizer(k=0.5, alpha=0.1, proximal=True)
    model = keras.Sequential([
        keras.Input((20,)),
        keras.layers.Dense(64, activation="relu", kernel_regularizer=reg),
        keras.layers.Dense(2, activation="softmax", kernel_regularizer=reg),
    ])
    model.compile(keras_lk.ProximalOptimizer(keras.optimizers.SGD(0.1)),
                  "sparse_categorical_crossentropy", metrics=["accuracy"])
    history = model.fit(x, y, epochs=epochs, verbose=0, callbacks=[
        keras_lk.SparsityTarget(0.8), keras_lk.LkMonitor(logdir)])
    print(f"backend {keras.backend.backend()}: accuracy "
          f"{history.history['accuracy'][-1]:.3f}, exact zeros "
          f"{keras_lk.sparsity(model)['total']['fraction']:.1%}")
    print(f"tensorboard --logdir {logdir} --host 127.0.0.1")
    return model


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--logdir", default="runs/jax")
    parser.add_argument("--quick", action="store_true",
                        help="a few epochs on less data (a smoke run)")
    args = parser.parse_args()
    main(args.logdir, *((3, 500) if args.quick else (10, 2000)))
