"""`keras-lk` end to end in a temporary directory, with tiny settings."""

import os
import subprocess
import sys

import numpy as np
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
    # Every setting learns (chance is 0.1) but L-infinity, whose alpha = 3
    # caps every weight so hard that this tiny model stays at chance.
    for name, row in runs.items():
        if name != "Linf":
            assert row["test acc"] > 0.7, name
    assert runs["Linf"]["test acc"] < 0.2
    assert runs["none"]["test acc"] > 0.8
    # Large k pulls max|w| down; L-infinity most of all.
    for name in ("L2", "L3", "L10", "Linf"):
        assert runs[name]["max|w|"] < runs["none"]["max|w|"], name
    assert runs["Linf"]["max|w|"] == min(r["max|w|"] for r in runs.values())
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


@pytest.mark.slow
def test_console_script_and_module_print_one_clean_line():
    script = os.path.join(os.path.dirname(sys.executable), "keras-lk")
    for command in ([script], [sys.executable, "-m", "keras_lk"]):
        result = subprocess.run(command + ["plot", "--k", "0"],
                                capture_output=True, text=True, check=False)
        assert result.returncode == 2
        assert result.stderr.strip().splitlines()[-1] == (
            "keras-lk: error: argument --k: k must be a number > 0 or inf, "
            "got '0'")
        if command == [script]:
            # The launcher keeps TensorFlow's start-up notices out. `python
            # -m keras_lk` imports the package (and TensorFlow) before any
            # of its code runs: where TensorFlow prints notices on this CPU,
            # they come first, and the error is still the last line.
            assert result.stderr.count("\n") == 1, result.stderr


def run_python(code):
    return subprocess.run([sys.executable, "-c", code], capture_output=True,
                          text=True, check=False)


@pytest.mark.slow
def test_the_library_needs_neither_matplotlib_nor_scikit_learn():
    # Keras imports them itself when they are installed: keras_lk must add
    # no import of its own, and work where they are absent.
    result = run_python(
        "import sys\n"
        "import keras\n"
        "before = set(sys.modules)\n"
        "import keras_lk\n"
        "print(sorted(m for m in set(sys.modules) - before\n"
        "             if m.startswith(('matplotlib', 'sklearn',\n"
        "                              'keras_lk.study'))))")
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "[]"
    result = run_python(
        "import sys, tempfile\n"
        "sys.modules['matplotlib'] = sys.modules['sklearn'] = None\n"
        "import numpy as np, keras, keras_lk\n"
        "model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(\n"
        "    1, kernel_regularizer=keras_lk.LkRegularizer(k=1))])\n"
        "model.compile('sgd', 'mse')\n"
        "history = model.fit(np.ones((4, 2)), np.ones((4, 1)), verbose=0,\n"
        "    callbacks=[keras_lk.LkMonitor(tempfile.mkdtemp())])\n"
        "print(sorted(history.history))")
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == (
        "['loss', 'reg_loss', 'reg_share', 'zero_frac']")


@pytest.mark.slow
@pytest.mark.parametrize("command, missing", [
    ("plot", "matplotlib"), ("report", "matplotlib"),
    ("demo", "matplotlib and scikit-learn")])
def test_without_the_study_extra_one_line_names_the_install(command, missing,
                                                            tmp_path):
    argv = [command] + ([str(tmp_path)] if command == "report" else [])
    # `sys.modules[name] = None` makes `import name` fail, as if absent.
    result = run_python(
        "import sys\n"
        "sys.modules['matplotlib'] = sys.modules['sklearn'] = None\n"
        "from keras_lk.study.cli import main\n"
        f"sys.exit(main({argv!r}))")
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1] == (
        f"keras-lk: error: `keras-lk {command}` needs {missing}, which come "
        "with the study extra: pip install 'keras-lk[study]'")


@pytest.mark.slow
def test_the_demo_hint_opens_tensorboard_with_this_python():
    assert cli.tensorboard_command("my runs") == (
        f"{sys.executable} -m tensorboard.main --logdir 'my runs' "
        "--host 127.0.0.1")
    result = subprocess.run([sys.executable, "-m", "tensorboard.main",
                             "--help"], capture_output=True, text=True,
                            check=False)
    assert result.returncode == 0
    assert "--logdir" in result.stdout


@pytest.mark.slow
def test_sweep_on_a_tiny_setting(tmp_path, capsys):
    from tbparse import SummaryReader
    logdir = tmp_path / "sweep"
    assert cli.main(["sweep", "--logdir", str(logdir), "--targets", "0.5",
                     "--seeds", "0", "--epochs", "2"]) == 0
    printed = capsys.readouterr().out
    assert "[5/5]" in printed
    table = printed[printed.index("test accuracy, mean"):]
    for method in ("L1_proximal", "L0.5_proximal", "L0_proximal",
                   "magnitude", "dense"):
        assert method in table
    assert (logdir / "sweep.png").read_bytes()[:4] == b"\x89PNG"
    runs = sorted(p.name for p in logdir.iterdir() if p.is_dir())
    assert runs == ["L0.5_proximal_t0.5_seed0", "L0_proximal_t0.5_seed0",
                    "L1_proximal_t0.5_seed0", "dense_seed0",
                    "magnitude_t0.5_seed0"]
    hparams = SummaryReader(str(logdir / "magnitude_t0.5_seed0")).hparams
    assert dict(zip(hparams["tag"], hparams["value"])) == {
        "model": "digits_mlp", "method": "magnitude", "target": 0.5,
        "seed": 0, "allocation": "-"}
    for run in runs:
        scalars = SummaryReader(str(logdir / run)).tensors
        values = dict(zip(scalars["tag"], scalars["value"]))
        if run != "dense_seed0":
            assert float(values["sparsity"]) == pytest.approx(0.5, abs=0.01)
        assert float(values["test_accuracy"]) > 0.5, run  # chance: 0.1


@pytest.mark.slow
@pytest.mark.parametrize("model,method", [
    ("small_output_mlp", "L1_proximal"), ("digits_conv", "L0.5_proximal"),
    ("embedding", "L0_proximal"), ("transformer", "L0.5_proximal")])
def test_quick_sweep_on_every_model_of_the_suite(model, method, tmp_path,
                                                 capsys):
    # One Lk method per model (each method on some model) beside the
    # magnitude-pruning reference: the sweep runs on every model.
    from tbparse import SummaryReader
    logdir = tmp_path / model
    assert cli.main(["sweep", "--model", model, "--quick", "--logdir",
                     str(logdir), "--allocation", "uniform", "--methods",
                     method, "magnitude"]) == 0
    printed = capsys.readouterr().out
    assert f"3 runs on {model}" in printed and "allocation uniform" in printed
    for run in (method, "magnitude"):
        scalars = SummaryReader(str(logdir / f"{run}_t0.9_seed0")).tensors
        values = dict(zip(scalars["tag"], scalars["value"]))
        zeros = float(values["sparsity"])
        if run in ("L0_proximal", "magnitude"):
            assert zeros == pytest.approx(0.9, abs=0.002), run
        else:
            # At least the target; on a 2-epoch fit whole ReLU units die
            # under k = 1 and 1/2, and their inputs, released at the lock
            # with no gradient, stay zero (up to 7 points in the suite).
            assert 0.899 <= zeros <= 0.97, run
    assert sorted(p.name for p in logdir.iterdir() if p.is_dir()) == sorted(
        ["dense_seed0", f"{method}_t0.9_seed0", "magnitude_t0.9_seed0"])


def test_fixed_order_trains_on_the_numpy_drawn_batches(tmp_path):
    # The sweep's side of the peer comparison at equal batches: with
    # fixed_order=True a run trains on suite_data.fixed_order's batches,
    # unshuffled, in one fit (what tfmot_peer.py --fixed-order feeds
    # tf-keras), and nothing else changes.
    import io

    from keras_lk.study import suite, suite_data, sweep
    entry = suite.MODELS["digits_mlp"]
    (run, (fixed, _)), = sweep.run_sweep(
        str(tmp_path / "fixed"), "digits_mlp", targets=(), seeds=(1,),
        epochs=2, fixed_order=True, stream=io.StringIO()).items()
    (_, (shuffled, _)), = sweep.run_sweep(
        str(tmp_path / "shuffled"), "digits_mlp", targets=(), seeds=(1,),
        epochs=2, stream=io.StringIO()).items()
    x_train, y_train, x_test, y_test = entry.data(1)
    x_order, y_order = suite_data.fixed_order(x_train, y_train, 1, 2)
    assert sorted(x_order[:len(x_train)].sum(axis=1)) == sorted(
        x_train.sum(axis=1))                    # each epoch: every example
    assert not np.array_equal(x_order[:len(x_train)], x_train)
    net = sweep.build(run, "digits_mlp")
    net.fit(x_order, y_order, batch_size=entry.batch_size, epochs=1,
            shuffle=False, verbose=0)
    by_hand = float(net.evaluate(x_test, y_test, verbose=0)[1])
    assert fixed == by_hand
    assert fixed != shuffled       # Keras's own shuffling: other batches


@pytest.mark.slow
def test_sweep_with_protect_outputs(tmp_path, capsys):
    # k = 0, one layer at a time, protecting only the output layer's units
    # (tfmot's pattern): the option reaches SparsityTarget, whose target is
    # met exactly; a bad value is a usage error.
    from tbparse import SummaryReader
    logdir = tmp_path / "sweep"
    assert cli.main(["sweep", "--model", "small_output_mlp", "--quick",
                     "--logdir", str(logdir), "--allocation", "uniform",
                     "--protect", "outputs", "--targets", "0.95",
                     "--methods", "L0_proximal"]) == 0
    assert "allocation uniform; protect outputs)" in capsys.readouterr().out
    scalars = SummaryReader(str(logdir / "L0_proximal_t0.95_seed0")).tensors
    values = dict(zip(scalars["tag"], scalars["value"]))
    assert float(values["sparsity"]) == pytest.approx(0.95, abs=0.002)
    assert cli.main(["sweep", "--protect", "every"]) == 2
    assert ("argument --protect: invalid choice: 'every'"
            in capsys.readouterr().err)


def test_sweep_rejects_an_unknown_model(capsys):
    assert cli.main(["sweep", "--model", "resnet"]) == 2
    assert ("argument --model: invalid choice: 'resnet'"
            in capsys.readouterr().err)


def test_the_sweep_uses_the_controllers_schedule():
    from keras_lk.sparsity import schedule
    from keras_lk.study import sweep
    assert sweep.polynomial is schedule.polynomial
    assert schedule.polynomial(0, 0, 100, 0.9) == 0.0
    assert schedule.polynomial(100, 0, 100, 0.9) == pytest.approx(0.9)
    assert schedule.polynomial(50, 0, 100, 0.8) == pytest.approx(0.8 * 0.875)
    assert schedule.polynomial(200, 0, 100, 0.8) == pytest.approx(0.8)
    # The tensor path (the controller's) gives the same numbers.
    assert float(schedule.polynomial(
        np.int64(50), np.int64(0), np.int64(100), np.float32(0.8))) == (
        pytest.approx(0.8 * 0.875))


def test_magnitude_pruning_masks_the_smallest_magnitudes_globally():
    # The sweep's baseline, on two kernels at lr = 0 (nothing else moves
    # them): every 2 steps up to step 4 the smallest |w| of both kernels
    # together are masked up to the schedule; then the mask stays fixed.
    import keras
    import numpy as np
    from keras_lk.study import sweep
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((6,)),
                              keras.layers.Dense(5, name="a"),
                              keras.layers.Dense(2, name="b")])
    model.compile(keras.optimizers.SGD(0.0), "mse")
    before = np.concatenate([model.get_layer(n).kernel.numpy().ravel()
                             for n in ("a", "b")])
    pruning = sweep.MagnitudePruning(
        0.6, end_step=4, every=2, variables=lambda model: [
            model.get_layer(n).kernel for n in ("a", "b")])
    seen = []

    class Zeros(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            seen.append(np.concatenate([
                self.model.get_layer(n).kernel.numpy().ravel() == 0
                for n in ("a", "b")]))

    model.fit(np.ones((16, 6)), np.zeros((16, 2)), batch_size=2,
              shuffle=False, verbose=0, callbacks=[pruning, Zeros()])
    order = np.argsort(np.abs(before), kind="stable")
    for step, fraction in ((1, 0.0), (2, 0.6 * (1 - 0.5 ** 3)), (3, None),
                           (4, 0.6), (8, 0.6)):
        if fraction is None:
            np.testing.assert_array_equal(seen[step - 1], seen[step - 2])
            continue
        expected = np.zeros(before.size, bool)
        expected[order[:round(fraction * before.size)]] = True
        np.testing.assert_array_equal(seen[step - 1], expected, str(step))
    assert seen[-1].sum() == round(0.6 * 40)


def test_report_on_a_users_own_run_without_accuracy(tmp_path, capsys):
    # A run of the user's own, logged with LkMonitor only: no
    # keras.callbacks.TensorBoard, no validation, so no test accuracy.
    import keras
    import numpy as np
    import keras_lk
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(
        3, kernel_initializer="ones",
        kernel_regularizer=keras_lk.LkRegularizer(k=1, alpha=0.1))])
    model.get_layer(index=0).kernel.assign(
        np.array([[0.0, 0.0, 0.5], [0.0, 2.0, 0.1], [0.0, 1e-4, 1.0],
                  [0.3, 0.0, 0.0]]))
    model.compile(keras.optimizers.SGD(0.0), "mse")
    model.fit(np.ones((8, 4)), np.zeros((8, 3)), verbose=0,
              callbacks=[keras_lk.LkMonitor(tmp_path / "mine" / "run1")])
    runs = report.find_runs(str(tmp_path / "mine"))
    assert list(runs) == ["run1"]
    row = runs["run1"]
    assert row["test acc"] is None
    assert row["exact zeros"] == pytest.approx(6 / 12)
    assert row["|w|<=tol"] == pytest.approx(7 / 12)
    assert row["max|w|"] == pytest.approx(2.0)
    assert row["stable zeros"] is None  # step_stats was off
    assert cli.main(["report", str(tmp_path / "mine"), "--out",
                     str(tmp_path / "chart.png")]) == 0
    line = [l for l in capsys.readouterr().out.splitlines()
            if l.startswith("run1")][0]
    assert line.split()[1:4] == ["n/a", "50.0%", "58.3%"]
    assert (tmp_path / "chart.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_structured_sweep_quick_with_torch_pruning_live(tmp_path, capsys):
    from tbparse import SummaryReader
    logdir = tmp_path / "units"
    assert cli.main(["sweep", "--structure", "units", "--quick", "--logdir",
                     str(logdir), "--methods", "group_k0", "prune_units",
                     "tp_magnitude", "group_k0_adaptive"]) == 0
    printed = capsys.readouterr().out
    assert "6 runs on digits_mlp" in printed
    assert "digits_mlp, short fit" in printed
    runs = sorted(p.name for p in logdir.iterdir() if p.is_dir())
    assert runs == sorted([
        "digits_mlp_short_dense_seed0", "digits_mlp_short_torch_dense_seed0",
        "digits_mlp_short_group_k0_f0.5_seed0",
        "digits_mlp_short_group_k0_adaptive_f0.5_seed0",
        "digits_mlp_short_prune_units_f0.5_seed0",
        "digits_mlp_short_tp_magnitude_f0.5_seed0"])
    for run in runs:
        scalars = SummaryReader(str(logdir / run)).tensors
        values = dict(zip(scalars["tag"], scalars["value"]))
        assert float(values["test_accuracy"]) > 0.5, run  # chance: 0.1
        # Half of the multiply-accumulates gone (32 of 64 hidden units),
        # counted by keras_lk and by Torch-Pruning.
        expected = 1.0 if "dense" in run else 0.5
        assert float(values["macs_fraction"]) == pytest.approx(
            expected, abs=0.01), run
        assert float(values["latency_ms"]) > 0


def test_structured_sweep_refuses_what_does_not_apply(capsys, monkeypatch):
    assert cli.main(["sweep", "--models", "digits_mlp"]) == 2
    assert "--models needs --structure units" in capsys.readouterr().err
    assert cli.main(["sweep", "--structure", "units", "--model",
                     "digits_mlp"]) == 2
    assert "choose models with --models" in capsys.readouterr().err
    assert cli.main(["sweep", "--structure", "units", "--methods",
                     "magnitude"]) == 2
    assert "Received: magnitude" in capsys.readouterr().err
    assert cli.main(["sweep", "--methods", "group_k1"]) == 2
    assert "need --structure units" in capsys.readouterr().err
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: (
        None if name == "torch_pruning" else real(name, *a)))
    assert cli.main(["sweep", "--structure", "units", "--quick"]) == 2
    assert "pip install torch torch-pruning" in capsys.readouterr().err


def test_the_peer_starts_from_the_keras_models_weights():
    import torch
    from keras_lk.study import suite, torch_peer
    for model in ("digits_mlp", "digits_conv", "digits_resnet",
                  "transformer"):
        keras_model = suite.MODELS[model].build(None, 0)
        net, _, _ = torch_peer.build(model, 0)
        torch_peer.copy_weights(keras_model, net)
        net.eval()
        x = suite.MODELS[model].data(0)[2][:8]
        with torch.no_grad():
            logits = net(torch_peer._tensor(x, model)).numpy()
        expected = keras_model.predict(x, verbose=0)
        np.testing.assert_allclose(
            np.exp(logits) / np.exp(logits).sum(1, keepdims=True), expected,
            atol=1e-5)


def test_a_target_out_of_reach_is_named_and_not_run():
    from keras_lk.study import structured
    skip = structured.unreachable(["digits_mlp", "transformer"], [0.5, 0.75])
    # The Transformer's residual stream stays (LayerNormalization): with
    # one head and one feed-forward unit left, 0.286 of its MACs remain.
    assert list(skip) == [("transformer", 0.75)]
    assert "0.286 of the multiply-accumulates remain" in skip[
        ("transformer", 0.75)]
    runs = structured.plan(["transformer"], ["short"], [0.5, 0.75], [0],
                           structured.METHODS, skip)
    assert {run.target for run in runs} == {0.0, 0.5}
    assert any(run.method.startswith("tp_") for run in runs)
