"""The backend-neutral tests (`test_on_every_backend.py`) again, under
KERAS_BACKEND=jax in a fresh process (a backend is chosen once per
process). jax comes with the development set-up (`keras-lk[jax]`)."""

import os
import re
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.mark.slow
def test_the_backend_neutral_tests_pass_on_jax():
    import importlib.util
    assert importlib.util.find_spec("jax") is not None, (
        "jax is not installed: `pip install -e '.[jax]'` (python3 dev.py "
        "setup installs it)")
    env = dict(os.environ, KERAS_BACKEND="jax", TF_CPP_MIN_LOG_LEVEL="2")
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:xdist",
         "-p", "no:cacheprovider", "-rs",
         os.path.join(HERE, "test_on_every_backend.py")],
        cwd=os.path.dirname(HERE), env=env, capture_output=True, text=True,
        check=False)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    summary = result.stdout.strip().splitlines()[-1]
    passed = re.search(r"(\d+) passed", summary)
    # Every test ran (none skipped or deselected), the backend check too.
    assert passed and int(passed.group(1)) >= 27, summary
    assert not re.search(r"skipped|deselected|xfail", summary), summary
