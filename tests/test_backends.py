"""The backend-neutral tests (`test_on_every_backend.py`) again, under
KERAS_BACKEND=jax in a fresh process (a backend is chosen once per
process). jax comes with the development set-up (`keras-lk[jax]`)."""

import os
import re
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))


def run_on(backend, *selection):
    """Runs test_on_every_backend.py (or the tests `-k` selects) under
    `backend` in a fresh process; returns pytest's last line."""
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="2")
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:xdist",
         "-p", "no:cacheprovider", "-rs",
         os.path.join(HERE, "test_on_every_backend.py"), *selection],
        cwd=os.path.dirname(HERE), env=env, capture_output=True, text=True,
        check=False)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    summary = result.stdout.strip().splitlines()[-1]
    assert not re.search(r"skipped|xfail|error", summary), summary
    return summary


@pytest.mark.slow
def test_the_backend_neutral_tests_pass_on_jax():
    import importlib.util
    assert importlib.util.find_spec("jax") is not None, (
        "jax is not installed: `pip install -e '.[jax]'` (python3 dev.py "
        "setup installs it)")
    summary = run_on("jax")
    # Every test ran (none skipped or deselected), the backend check too.
    passed = re.search(r"(\d+) passed", summary)
    assert passed and int(passed.group(1)) >= 27, summary
    assert "deselected" not in summary, summary


@pytest.mark.slow
def test_another_backend_gets_the_clear_error_not_a_failure_in_fit():
    # Keras's inference-only "numpy" backend stands in for the backends
    # keras_lk does not train on (PyTorch is not in the set-up): the
    # forward math works, and every TensorFlow-only entry point raises the
    # error that names the backend.
    summary = run_on("numpy", "-k", "says_so or penalty_is_numpys or "
                     "backend_is or prox_minimizes or sparsity_counts")
    assert re.match(r"21 passed, 6 deselected", summary), summary
