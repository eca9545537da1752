"""Fixtures shared by every test. Data and model builders shared by the
tests are in `helpers.py`, event-file reading in `events.py`."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _fresh_keras_state():
    """Each test starts with default dtype policy and cleared names.

    Without Python's full garbage collection (`free_memory=False`), which
    took half a second after every test.
    """
    keras.utils.set_random_seed(0)
    yield
    keras.config.set_dtype_policy("float32")
    keras.backend.clear_session(free_memory=False)
