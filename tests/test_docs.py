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


@pytest.mark.parametrize("page", ["README.md", "docs/getting-started.md"])
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
    assert marked == {"README.md": 2, "docs/getting-started.md": 2}


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
                 "SparsityTarget", "strip"):
        assert f'id="keras_lk.{name}"' in api, name
