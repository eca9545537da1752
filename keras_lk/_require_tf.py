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


def require_tensorflow_backend(what):
    """Raises NotImplementedError naming the backend if Keras does not run
    on TensorFlow: `what` needs TensorFlow's stateful training steps (the
    monitors' recorders, the proximal step, SparsityTarget's controller)."""
    import keras

    backend = keras.backend.backend()
    if backend != "tensorflow":
        raise NotImplementedError(
            f"{what} needs the TensorFlow backend; this Keras runs on "
            f"{backend!r} (KERAS_BACKEND={backend}). On {backend}, "
            f"{EVERY_BACKEND} work; set KERAS_BACKEND=tensorflow for the "
            "rest.")
