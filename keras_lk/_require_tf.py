"""Fails early, with the exact install command, where TensorFlow is missing.

keras-lk does not depend on a TensorFlow distribution itself, so that a user
who has `tensorflow` or `tensorflow-cpu` keeps the one they have.
"""

import importlib.util

INSTALL_HINT = (
    "keras_lk needs TensorFlow, and none is importable in this Python "
    "environment. Install one of: `pip install 'keras-lk[cpu]'` "
    "(tensorflow-cpu), `pip install 'keras-lk[gpu]'` (tensorflow), or "
    "`pip install tensorflow` yourself."
)


def require_tensorflow():
    """Raises ImportError with the install command if TensorFlow is absent."""
    if importlib.util.find_spec("tensorflow") is None:
        raise ImportError(INSTALL_HINT)


EVERY_BACKEND = (
    "LkRegularizer (as a gradient penalty), prox, attach, detach, sparsity "
    "and strip")

# What works beyond EVERY_BACKEND, per backend keras_lk trains on.
ON_JAX = ("LkRegularizer (as a gradient penalty and proximal), "
          "ProximalOptimizer, SparsityTarget, LkMonitor, "
          "RegularizationShare, AbsWeightHistograms, ZeroCounts, prox, "
          "attach, detach, sparsity, strip and the keras-lk commands")

_NAMES = {"tensorflow": "TensorFlow", "jax": "JAX"}


def require_backend(what, backends=("tensorflow",)):
    """Raises NotImplementedError naming the backend if Keras does not run
    on one of `backends`: `what` needs their training steps (the monitors'
    recorders need TensorFlow's stateful ones; the proximal step and
    SparsityTarget's controller run on TensorFlow and JAX)."""
    import keras

    backend = keras.backend.backend()
    if backend in backends:
        return
    works = ON_JAX if backend == "jax" else EVERY_BACKEND
    needed = " or ".join(_NAMES.get(b, b) for b in backends)
    raise NotImplementedError(
        f"{what} needs the {needed} backend; this Keras runs on "
        f"{backend!r} (KERAS_BACKEND={backend}). On {backend}, "
        f"{works} work; set KERAS_BACKEND=tensorflow for the rest.")


def require_tensorflow_backend(what):
    """`require_backend(what)`: the TensorFlow backend only."""
    require_backend(what)
