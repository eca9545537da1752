"""`keras-lk` end to end in a temporary directory, with tiny settings."""

import os
import subprocess
import sys

import pytest

from keras_lk.study import cli, report
from keras_lk.study import runs as study_runs

TINY = ["--epochs", "4", "--hidden", "16", "--seed", "0"]


def test_plot_writes_one_png_per_k_and_an_overview(tmp_path, capsys):
    out = tmp_path / "figs"
    assert cli.main(["plot", "--k", "0.5", "3", "inf", "--zoom", "0.25",
                     "--out", str(out)]) == 0
    names = sorted(os.listdir(out))
    assert names == ["lk_k0.5.png", "lk_k3.png", "lk_kinf.png",
                     "lk_overview.png"]
    for name in names:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert str(out / "lk_overview.png") in capsys.readouterr().out


@pytest.fixture(scope="module")
def demo_logdir(tmp_path_factory):
    """One tiny demo, shared by the tests that read it."""
    logdir = tmp_path_factory.mktemp("demo") / "runs"
    assert cli.main(["demo", "--logdir", str(logdir)] + TINY) == 0
    return logdir


@pytest.mark.slow
def test_demo_logs_every_setting_and_prints_the_table(demo_logdir):
    runs = report.find_runs(str(demo_logdir))
    assert set(runs) == {setting.name for setting in study_runs.SETTINGS}
    for name, row in runs.items():
        assert 0.0 <= row["test acc"] <= 1.0, name
        assert row["max|w|"] > 0
    assert runs["none"]["test acc"] > 0.8
    assert runs["none"]["sign flips"] is None  # tracked on regularized weights
    assert runs["none"]["penalty share"] == 0.0
    assert (demo_logdir / "comparison.png").exists()


@pytest.mark.slow
def test_the_article_claims_at_small_scale(demo_logdir):
    runs = report.find_runs(str(demo_logdir))
    # L1 makes weights sparse, L2 only small.
    assert runs["L1"]["|w|<=tol"] > runs["L2"]["|w|<=tol"]
    # L0.5 flip-flops under gradient steps; the proximal step stops it.
    assert runs["L0.5"]["sign flips"] > runs["L0.5_proximal"]["sign flips"]
    # Exact zeros only under the proximal runs.
    for name, row in runs.items():
        if name.endswith("_proximal"):
            assert row["exact zeros"] > 0.01, name
        else:
            assert row["exact zeros"] < 0.005, name
    # L10 leaves the loss to the data; L1's penalty takes a real share.
    assert runs["L10"]["penalty share"] < runs["L1"]["penalty share"]


@pytest.mark.slow
def test_report_reads_the_runs_back(demo_logdir, tmp_path, capsys):
    out = tmp_path / "chart.png"
    assert cli.main(["report", str(demo_logdir), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    for column in ("test acc", "exact zeros", "|w|<=tol", "stable zeros",
                   "sign flips", "max|w|", "penalty share"):
        assert column in printed
    assert "L0.5_proximal" in printed
    assert out.read_bytes()[:4] == b"\x89PNG"
    # A single run directory is a LOGDIR too.
    assert cli.main(["report", str(demo_logdir / "L1"), "--out",
                     str(tmp_path / "one.png")]) == 0


@pytest.mark.parametrize("argv, message", [
    (["plot", "--k", "0"], "argument --k: k must be a number > 0 or inf, "
                           "got '0'"),
    (["plot", "--k", "-2"], "got '-2'"),
    (["plot", "--zoom", "nan"], "argument --zoom: expected a finite number"),
    (["plot", "--bogus"], "unrecognized arguments: --bogus"),
    (["demo", "--epochs", "0"], "argument --epochs: expected an integer >= 1"),
    (["report", "does/not/exist"], "LOGDIR 'does/not/exist' does not exist"),
    ([], "the following arguments are required: command"),
])
def test_bad_input_is_one_line_and_status_2(argv, message, capsys):
    assert cli.main(argv) == 2
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1
    assert captured.err.startswith("keras-lk: error: ")
    assert message in captured.err


def test_report_on_a_directory_without_runs(tmp_path, capsys):
    (tmp_path / "train").mkdir()
    assert cli.main(["report", str(tmp_path)]) == 2
    assert "holds no keras_lk runs" in capsys.readouterr().err


def test_unwritable_output_directory(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert cli.main(["plot", "--out", str(blocker / "figs")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("keras-lk: error: Cannot write figures to --out=")


def test_console_script_and_module_print_one_clean_line():
    script = os.path.join(os.path.dirname(sys.executable), "keras-lk")
    for command in ([script], [sys.executable, "-m", "keras_lk"]):
        result = subprocess.run(command + ["plot", "--k", "0"],
                                capture_output=True, text=True, check=False)
        assert result.returncode == 2
        assert result.stderr.strip().splitlines()[-1] == (
            "keras-lk: error: argument --k: k must be a number > 0 or inf, "
            "got '0'")
    result = subprocess.run([script, "plot", "--k", "0"], capture_output=True,
                            text=True, check=False)
    assert result.stderr.count("\n") == 1  # TensorBoard's notices kept out
