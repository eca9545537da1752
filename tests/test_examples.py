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
    # The code block of the attaching guide's "Models" section, as written.
    import warnings

    import keras
    import keras_lk
    from events import read, tags
    guide = open(os.path.join(os.path.dirname(EXAMPLES), "docs", "guides",
                              "attaching.md")).read()
    section = guide[guide.index("### Models: regularize and watch"):]
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


def run_example(name, *args, env=None):
    result = subprocess.run(
        [sys.executable, os.path.join(EXAMPLES, name), "--quick", *args],
        capture_output=True, text=True, check=False,
        env=dict(os.environ, **(env or {})))
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


@pytest.mark.slow
def test_watch_in_tensorboard_logs_both_runs(tmp_path):
    from events import read, tags
    printed = run_example("watch_in_tensorboard.py", "--logdir",
                          str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == ["l0.5", "none"]
    assert "reg_share/total" in tags(read(tmp_path / "l0.5"), "train")
    assert "zero_fraction/(all layers)" in tags(read(tmp_path / "none"),
                                                "train")
    assert f"tensorboard --logdir {tmp_path}" in printed


@pytest.mark.slow
def test_prune_and_ship_reaches_the_target_and_reloads(tmp_path):
    out = str(tmp_path / "pruned.keras")
    printed = run_example("prune_and_ship.py", "--out", out)
    total = float(re.search(r"total\s+(\d+\.\d)% exact zeros",
                            printed).group(1))
    assert 89.5 <= total <= 95.0, printed
    assert "reloaded predictions equal: True" in printed
    dense, pruned = (int(v) for v in re.search(
        r"dense (\d+) kB, pruned (\d+) kB", printed).groups())
    assert pruned < dense / 3, printed


def test_compare_k_prints_a_row_per_k(capsys, tmp_path):
    module = runpy.run_path(os.path.join(EXAMPLES, "compare_k.py"))
    rows = module["main"]((0.5, 2.0), alpha=0.05, epochs=2, samples=400,
                          logdir=str(tmp_path))
    assert sorted(rows) == [0.5, 2.0]
    for accuracy, near_zero, max_abs, share in rows.values():
        assert 0 <= accuracy <= 1 and 0 <= near_zero <= 1
        assert max_abs > 0 and 0 < share < 1
    assert sorted(os.listdir(tmp_path)) == ["k0.5", "k2"]


@pytest.mark.slow
def test_finetune_application_attaches_and_detaches(tmp_path):
    printed = run_example("finetune_application.py", "--logdir",
                          str(tmp_path / "logs"), "--out",
                          str(tmp_path / "model.keras"))
    attached = int(re.search(r"attached to (\d+) Conv2D", printed).group(1))
    assert attached == 35  # MobileNetV2's Conv2D layers
    share = float(re.search(r"loss, last epoch: (\d+\.\d+)%",
                            printed).group(1))
    assert share > 0
    assert "after detach, penalties in model.losses: 0" in printed
    import keras
    import keras_lk  # noqa: F401 (registers LkRegularizer for loading)
    loaded = keras.saving.load_model(tmp_path / "model.keras")
    assert len(loaded.losses) == 35


@pytest.mark.slow
def test_the_jax_example_runs_on_jax(tmp_path):
    printed = run_example("jax_backend.py", "--logdir", str(tmp_path),
                          env={"KERAS_BACKEND": "jax"})
    match = re.search(r"backend jax: accuracy (\d\.\d+), exact zeros "
                      r"(\d+\.\d)%", printed)
    assert match, printed
    assert 79.5 <= float(match.group(2)) <= 90.0, printed
    assert os.listdir(tmp_path) == ["train"]
