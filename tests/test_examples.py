"""The scripts in examples/ run and print what the README says they do."""

import os
import re
import runpy
import subprocess
import sys

import numpy as np
import pytest

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(__file__)),
                        "examples")


def test_quickstart_finds_the_informative_features(capsys):
    module = runpy.run_path(os.path.join(EXAMPLES, "quickstart.py"))
    module["main"](epochs=4)
    printed = capsys.readouterr().out
    penalty = float(re.search(r"penalty (\d+\.\d+)", printed).group(1))
    assert penalty > 0.001
    rows = printed[printed.index("informative features first):"):]
    means = np.array([float(v) for v in re.findall(r"\d+\.\d+", rows)])
    assert means.size == 20
    # The 5 informative inputs keep the largest weights.
    assert means[:5].min() > means[5:].max()


@pytest.mark.slow
def test_proximal_sparsity_prints_the_readmes_table(tmp_path):
    result = subprocess.run(
        [sys.executable, os.path.join(EXAMPLES, "proximal_sparsity.py"),
         "--logdir", str(tmp_path)], capture_output=True, text=True,
        check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = {}
    for line in result.stdout.splitlines():
        match = re.match(r"(L\S+)\s+(\d+)%\s+(\d+)%\s+(\d+)%\s+(\d+)/20", line)
        if match:
            rows[match.group(1)] = [int(g) for g in match.groups()[1:]]
    # (noise w == 0, stable 0, noise |w| <= 1e-3, informative kept), as in
    # the README's table, within 2 points (TensorFlow versions differ in
    # the last bits, which can move a weight across 1e-3).
    readme = {"L1_gradient": [0, 0, 33, 20], "L1_proximal": [56, 0, 73, 20],
              "L0.5_gradient": [0, 0, 2, 20],
              "L0.5_proximal": [100, 90, 100, 20]}
    assert rows.keys() == readme.keys()
    for name, expected in readme.items():
        np.testing.assert_allclose(rows[name][:3], expected[:3], atol=2,
                                   err_msg=name)
        assert rows[name][3] == 20, name
        if name.endswith("gradient"):
            assert rows[name][0] == 0, name  # never an exact zero
    assert sorted(os.listdir(tmp_path)) == sorted(rows)


def test_the_readmes_transformer_example_runs_and_names_every_weight(
        tmp_path, monkeypatch):
    # The code block of the README's "Models" section, run as written.
    import warnings

    import keras
    import keras_lk
    from events import read, tags
    readme = open(os.path.join(os.path.dirname(EXAMPLES), "README.md")).read()
    section = readme[readme.index("### Models: regularize and watch"):]
    code = section[section.index("```python") + 9:section.index("```\n", 10)]
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    namespace = {"keras": keras, "keras_lk": keras_lk,
                 "x_tokens": rng.integers(0, 1000, (64, 16)),
                 "y": rng.integers(0, 2, 64)}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        exec(code, namespace)
    assert any("does not record it" in str(w.message) for w in caught)
    written = tags(read(tmp_path / "logs"), "train")
    for projection in ("query", "key", "value", "attention_output"):
        assert f"abs_weights/mha/{projection}/kernel" in written
        assert f"reg_share/mha/{projection}" in written
    assert len(namespace["model"].losses) == 4
