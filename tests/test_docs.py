"""The documentation: the site builds strictly (no broken link or
reference), the code it says runs does run, and no user page speaks of how
it was developed."""

import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
RUNS = "<!-- test: run -->"
USER_PAGES = [ROOT / "README.md"] + sorted((ROOT / "docs").rglob("*.md"))


def runnable_blocks(path):
    """The ```python blocks of `path` marked as running, in order."""
    text = path.read_text()
    return re.findall(re.escape(RUNS) + r"\s*```python\n(.*?)```", text,
                      re.S)


@pytest.mark.parametrize("page", [
    "README.md",
    # The same code as the README's: slow, so the fast subset runs it once.
    pytest.param("docs/getting-started.md", marks=pytest.mark.slow)])
def test_the_code_a_page_says_runs_runs(page, tmp_path, monkeypatch):
    import keras
    import keras_lk
    from events import read, tags
    blocks = runnable_blocks(ROOT / page)
    assert len(blocks) == 2, page  # the quick start, then prune and ship
    monkeypatch.chdir(tmp_path)
    namespace = {}
    for block in blocks:
        exec(compile(block, page, "exec"), namespace)
    written = tags(read(tmp_path / "runs" / "quickstart"), "train")
    assert {"reg_share/total", "zero_fraction/dense",
            "log10_abs_weights/dense/kernel"} <= written
    total = keras_lk.sparsity(namespace["model"])["total"]
    assert 0.89 <= total["fraction"] <= 0.95
    loaded = keras.saving.load_model(tmp_path / "pruned.keras")
    x = namespace["x"][:16]
    np.testing.assert_allclose(loaded.predict(x, verbose=0),
                               namespace["model"].predict(x, verbose=0),
                               atol=1e-6)


def test_every_block_marked_to_run_is_run():
    marked = {path.relative_to(ROOT).as_posix(): len(runnable_blocks(path))
              for path in USER_PAGES if runnable_blocks(path)}
    assert marked == {"README.md": 2, "docs/getting-started.md": 2,
                      "docs/guides/shrink.md": 3,
                      "docs/guides/keras-hub.md": 1}


def test_the_keras_hub_guide_runs_as_written(tmp_path, monkeypatch, capsys):
    pytest.importorskip("keras_hub")
    (block,) = runnable_blocks(ROOT / "docs/guides/keras-hub.md")
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(block, "keras-hub.md", "exec"), namespace)
    printed = capsys.readouterr().out
    assert "MistralCausalLM 3 128" in printed
    assert "same tokens: True" in printed
    assert type(namespace["again"]).__name__ == "MistralBackbone"


@pytest.mark.slow
def test_the_shrink_guide_runs_as_written(tmp_path, monkeypatch):
    import keras
    import keras_lk
    block, _, _ = runnable_blocks(ROOT / "docs/guides/shrink.md")
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(block, "shrink.md", "exec"), namespace)
    model, small = namespace["model"], namespace["small"]
    assert small.count_params() < 0.35 * model.count_params()
    assert keras_lk.macs(small) < 0.35 * keras_lk.macs(model)
    assert all(len(units) for units in namespace["removed"].values())
    loaded = keras.saving.load_model(tmp_path / "small.keras")
    x = namespace["x"][:4]
    np.testing.assert_allclose(loaded.predict(x, verbose=0),
                               small.predict(x, verbose=0), atol=1e-6)


def test_the_guide_to_training_toward_structure_runs_as_written(
        tmp_path, monkeypatch):
    import keras
    import keras_lk
    _, block, _ = runnable_blocks(ROOT / "docs/guides/shrink.md")
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(block, "shrink.md", "exec"), namespace)
    model, small = namespace["model"], namespace["small"]
    assert namespace["history"].history["live_macs_frac"][-1] <= 0.5
    assert keras_lk.macs(small) <= 0.5 * keras_lk.macs(model)
    loaded = keras.saving.load_model(tmp_path / "small.keras")
    x = namespace["x"][:4]
    np.testing.assert_allclose(loaded.predict(x, verbose=0),
                               small.predict(x, verbose=0), atol=1e-6)


def test_the_guide_to_allocation_runs_as_written(capsys):
    _, _, block = runnable_blocks(ROOT / "docs/guides/shrink.md")
    namespace = {}
    exec(compile(block, "shrink.md", "exec"), namespace)
    live = namespace["live"]
    assert live["wide"] + live["narrow"] == 36
    assert live["narrow"] >= 1
    # As the comment says: most of the units removed are from "wide".
    assert 64 - live["wide"] > 8 - live["narrow"]
    assert str(live) in capsys.readouterr().out


WORDS_OF_DEVELOPMENT = re.compile(
    r"development machine|this session|earlier day|earlier, busier|"
    r"before the one before|Before this version|\bUntried\b|: missed|"
    r"MISSED|\bmissed\b|target missed|\.\./shared", re.I)


@pytest.mark.parametrize("page", [p.relative_to(ROOT).as_posix()
                                  for p in USER_PAGES])
def test_no_user_page_speaks_of_how_it_was_developed(page):
    found = WORDS_OF_DEVELOPMENT.findall((ROOT / page).read_text())
    assert not found, found


def test_the_readme_is_a_front_page():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 200


@pytest.mark.slow
def test_the_docs_site_builds_strictly(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir",
         str(tmp_path / "site")], cwd=ROOT, capture_output=True, text=True,
        env=dict(os.environ, NO_MKDOCS_2_WARNING="1"), check=False)
    assert result.returncode == 0, result.stderr[-4000:]
    api = (tmp_path / "site" / "api" / "index.html").read_text()
    for name in ("LkRegularizer", "LkMonitor", "ProximalOptimizer",
                 "SparsityTarget", "attach.attach", "export.strip",
                 "sparsity.counting.sparsity", "prox"):
        assert f'id="keras_lk.{name}"' in api, name


@pytest.mark.slow
def test_the_wheel_and_sdist_build_and_the_wheel_imports(tmp_path):
    import tarfile
    import zipfile
    result = subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir",
         str(tmp_path / "dist"), str(ROOT)], capture_output=True, text=True,
        check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    wheel, = (tmp_path / "dist").glob("keras_lk-*.whl")
    sdist, = (tmp_path / "dist").glob("keras_lk-*.tar.gz")
    names = zipfile.ZipFile(wheel).namelist()
    for module in ("keras_lk/core/backend.py", "keras_lk/sparsity/control.py",
                   "keras_lk/monitoring/measures/units.py",
                   "keras_lk/study/cli.py", "keras_lk_cli.py"):
        assert module in names, module
    metadata = zipfile.ZipFile(wheel).read(
        next(n for n in names if n.endswith("METADATA"))).decode()
    assert "Description-Content-Type: text/markdown" in metadata
    assert "License-Expression: Apache-2.0" in metadata
    assert "## Quick start: regularize a model and watch it" in metadata
    assert any(n.endswith("licenses/LICENSE") for n in names)
    members = tarfile.open(sdist).getnames()
    for name in ("README.md", "LICENSE", "pyproject.toml"):
        assert any(m.endswith("/" + name) for m in members), name
    # The wheel, installed on its own (its dependencies are this
    # environment's), imports from where it was installed.
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps",
                    "--no-index", "--target", str(target), str(wheel)],
                   check=True, capture_output=True)
    smoke = subprocess.run(
        [sys.executable, "-c", "import keras_lk; print(keras_lk.__file__, "
         "keras_lk.__version__, len(keras_lk.__all__))"],
        cwd=tmp_path, env=dict(os.environ, PYTHONPATH=str(target),
                               TF_CPP_MIN_LOG_LEVEL="3"),
        capture_output=True, text=True, check=False)
    assert smoke.returncode == 0, smoke.stderr[-2000:]
    path, version, count = smoke.stdout.split()
    assert path.startswith(str(target)) and version == "0.1.0"
    assert int(count) >= 14
