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
