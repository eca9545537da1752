"""Set up a local virtual environment and run the main job or the tests.

Usage (needs only python3):
    python3 dev.py demo [ARGS...]   # set up, then run `keras-lk demo ARGS`
    python3 dev.py test [ARGS...]   # set up, then run the tests and docs build
    python3 dev.py docs             # set up, then serve the docs locally
    python3 dev.py setup            # only set up .venv for the tests

The environment lives in .venv and is reused. The demo installs only what
it needs (TensorFlow for the CPU, keras-lk and its `study` extra); the
tests add JAX, PyTorch, the test tools and the docs tools. It is
reinstalled when pyproject.toml changes.
"""

import hashlib
import os
import platform
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
STAMP = VENV / "keras-lk-installed"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PYTHON = BIN / ("python.exe" if os.name == "nt" else "python")


def tensorflow_extra():
    # tensorflow-cpu publishes x86_64 wheels only; elsewhere the full
    # `tensorflow` wheel is the CPU build.
    return "cpu" if platform.machine().lower() in ("x86_64", "amd64") else "gpu"


def extras(command):
    """The extras `command` needs."""
    needed = {tensorflow_extra(), "study"}
    if command != "demo":
        needed |= {"test", "docs", "jax", "torch", "peers", KERAS_HUB_NAME}
    return needed


# keras_hub, for the tests that shrink its backbones. Its own requirements
# include tensorflow-text, which pulls the full `tensorflow` wheel in beside
# `tensorflow-cpu`; keras_hub imports without it, so it is installed
# without its requirements and with those it imports.
KERAS_HUB_NAME = "keras_hub"
KERAS_HUB = ["keras-hub==0.32.0", "kagglehub==1.0.3", "kagglesdk==0.1.38",
             "tqdm", "huggingface_hub==2.4.0", "tokenizers==0.23.3", "regex",
             "rich"]


# The PyTorch the tests were run with. Pinned: pip would otherwise take the
# newest release, on Linux a CUDA build of several GB; where pip finds a
# CPU build of this version (in its find-links), it takes that one.
TORCH = "torch==2.13.0"


def setup(command):
    """Installs what `command` needs, unless .venv already has it."""
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    installed = set()
    if STAMP.exists() and PYTHON.exists():
        stamp_digest, _, names = STAMP.read_text().partition(" ")
        if stamp_digest == digest:
            installed = set(names.split(","))
    wanted = extras(command) | installed
    if wanted == installed:
        return
    if not PYTHON.exists():
        print(f"Creating {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    pip = [str(PYTHON), "-m", "pip", "install", "--disable-pip-version-check"]
    subprocess.run(pip + ["--upgrade", "pip"], check=True)
    pins = [TORCH] if {"torch", "peers"} & wanted else []
    names = sorted(wanted - {KERAS_HUB_NAME})
    subprocess.run(pip + ["-e", f"{ROOT}[{','.join(names)}]"] + pins,
                   check=True)
    if KERAS_HUB_NAME in wanted:
        subprocess.run(pip + ["--no-deps"] + KERAS_HUB, check=True)
    STAMP.write_text(f"{digest} {','.join(sorted(wanted))}")


def workers(rest):
    """pytest-xdist's options: one test process per core, up to 4 (each
    test's TensorFlow also uses every core, but much of a test's time is
    Python tracing a model, one core), unless the arguments choose."""
    if any(arg.startswith(("-n", "--numprocesses", "--dist")) or
           arg == "no:xdist" for arg in rest):
        return []
    count = min(4, os.cpu_count() or 1)
    return ["-n", str(count), "--dist", "worksteal"] if count > 1 else []


def run(command):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run(command, cwd=ROOT, env=env).returncode


def main(argv):
    if not argv or argv[0] not in ("demo", "test", "docs", "setup"):
        print(__doc__.strip())
        return 2
    command, rest = argv[0], argv[1:]
    setup(command)
    if command == "demo":
        return run([str(BIN / "keras-lk"), "demo"] + rest)
    if command == "docs":
        return run([str(PYTHON), "-m", "mkdocs", "serve", "-a",
                    "127.0.0.1:8000"] + rest)
    if command == "test":
        return run([str(PYTHON), "-m", "pytest", "tests", "keras_lk",
                    "--doctest-modules"] + workers(rest) + rest)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
