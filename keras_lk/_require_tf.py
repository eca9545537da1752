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

# The backends whose training steps keras_lk runs in: every feature works
# on each of them.
TRAINING_BACKENDS = ("tensorflow", "jax", "torch")

_NAMES = {"tensorflow": "TensorFlow", "jax": "JAX", "torch": "PyTorch"}


def backend_names(backends):
    """`("tensorflow", "jax", "torch")` -> "TensorFlow, JAX or PyTorch"."""
    names = [_NAMES.get(b, b) for b in backends]
    return " or ".join(names) if len(names) < 3 else (
        ", ".join(names[:-1]) + " or " + names[-1])


def require_backend(what, backends=TRAINING_BACKENDS):
    """Raises NotImplementedError naming the backend if Keras does not run
    on one of `backends`: `what` needs their training steps (the monitors'
    recorders, the proximal step and SparsityTarget's controller run
    inside them)."""
    import keras

    backend = keras.backend.backend()
    if backend in backends:
        return
    raise NotImplementedError(
        f"{what} needs the {backend_names(backends)} backend; this Keras "
        f"runs on {backend!r} (KERAS_BACKEND={backend}). On {backend}, "
        f"{EVERY_BACKEND} work; set KERAS_BACKEND=tensorflow (or jax, or "
        f"torch) for the rest.")
