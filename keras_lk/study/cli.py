"""The `keras-lk` command (also `python -m keras_lk`).

    keras-lk plot [--k 0.5 1 1.5 2 3 10] [--zoom W] [--out DIR]
    keras-lk demo [--logdir runs/] [--epochs N] [--seed S]
    keras-lk report LOGDIR [--out FILE]
    keras-lk sweep [--model NAME] [--logdir sweep/]
                   [--targets 0.5 0.75 0.9 0.95] [--seeds 0 1 2]
                   [--epochs N] [--methods ...] [--allocation A]
                   [--protect P] [--quick] [--out FILE]
    keras-lk sweep --structure units [--models NAME ...] [--fits full short]
                   [--targets 0.5 0.75] [--seeds 0 1 2] [--methods ...]
                   [--logdir sweep/] [--quick]

Bad input gives one line on stderr and exit status 2, no traceback. The
commands draw with matplotlib and `demo` trains on scikit-learn's digits:
both come with the `study` extra (`pip install 'keras-lk[study]'`).
"""

import argparse
import importlib
import importlib.util
import math
import os
import shlex
import sys

from keras_lk.core.backend import require_training
from keras_lk.sparsity.groups import ALLOCATIONS
from keras_lk.sparsity.protection import PROTECTIONS
from keras_lk.study import figures, report, runs, structured, suite, sweep
from keras_lk.monitoring.summary import check_writable

PLOT_K = (0.5, 1.0, 1.5, 2.0, 3.0, 10.0)


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise _UsageError(message)


class _UsageError(Exception):
    pass


def _number(convert, accept, expected):
    """An argparse type: `convert(text)`, refused unless `accept(value)`."""

    def parse(text):
        try:
            value = convert(text)
        except ValueError:
            value = None
        if value is None or not accept(value):
            raise argparse.ArgumentTypeError(f"{expected}, got {text!r}")
        return value

    return parse


_k_value = _number(float, lambda v: v > 0, "k must be a number > 0 or inf")
_positive_int = _number(int, lambda v: v >= 1, "expected an integer >= 1")
_positive_float = _number(float, lambda v: 0 < v < math.inf,
                          "expected a finite number > 0")
_non_negative_float = _number(float, lambda v: 0 <= v < math.inf,
                              "expected a finite number >= 0")
_fraction = _number(float, lambda v: 0 < v < 1,
                    "expected a fraction strictly between 0 and 1")


def build_parser():
    parser = _Parser(prog="keras-lk", description=(
        "Redraw the figures of the Lk-regularization article and test its "
        "claims on real data."))
    commands = parser.add_subparsers(dest="command", required=True,
                                     parser_class=_Parser)
    add = commands.add_parser("plot", help=(
        "PNG charts of |w|^k and its derivative")).add_argument
    add("--k", type=_k_value, nargs="+", default=list(PLOT_K),
        help="exponents (default: 0.5 1 1.5 2 3 10)")
    add("--zoom", type=_positive_float, default=0.5,
        help="half-width of the zoomed view near 0 (default 0.5)")
    add("--out", default="figures",
        help="output directory (default: figures)")

    add = commands.add_parser("demo", help=(
        "train on scikit-learn's digits once per penalty setting, "
        "monitored in TensorBoard")).add_argument
    add("--logdir", default="runs",
        help="TensorBoard log directory (default: runs)")
    add("--epochs", type=_positive_int, default=runs.DEFAULT_EPOCHS,
        help=f"epochs per run (default {runs.DEFAULT_EPOCHS})")
    add("--seed", type=int, default=0, help="seed (default 0)")
    add("--alpha", type=_non_negative_float, default=runs.DEFAULT_ALPHA,
        help="penalty strength, mean reduction "
             f"(default {runs.DEFAULT_ALPHA:g})")
    add("--hidden", type=_positive_int, default=runs.HIDDEN_UNITS,
        help=f"hidden units (default {runs.HIDDEN_UNITS})")

    add = commands.add_parser("sweep", help=(
        "Lk-proximal sparsity against magnitude pruning on a model of the "
        "suite, logged for TensorBoard's HParams dashboard")).add_argument
    add("--model", default=None, choices=sorted(suite.MODELS),
        help=f"the suite's model (default {sweep.DEFAULT_MODEL})")
    add("--structure", default=None, choices=["units"],
        help="units: train toward whole units, channels and heads against "
             "one-shot prune_units and Torch-Pruning, at equal "
             "multiply-accumulates (see the docs' structured results)")
    add("--models", nargs="+", default=None, choices=list(structured.MODELS),
        help="with --structure units: the models (default: "
             f"{' '.join(structured.MODELS)})")
    add("--fits", nargs="+", default=None, choices=list(structured.FITS),
        help="with --structure units: full (the model's epochs) and/or "
             "short (a fifth of them) (default: both)")
    add("--logdir", default="sweep",
        help="TensorBoard log directory (default: sweep)")
    add("--targets", type=_fraction, nargs="+", default=None,
        help="target sparsities (default: 0.5 0.75 0.9 0.95); with "
             "--structure units, shares of the multiply-accumulates removed "
             "(default: 0.5 0.75)")
    add("--seeds", type=int, nargs="+", default=None,
        help="seeds (default: 0 1 2)")
    add("--epochs", type=_positive_int, default=None,
        help="epochs per run (default: the model's own, e.g. 20 for "
             "digits_mlp)")
    add("--methods", nargs="+", default=None,
        choices=list(dict.fromkeys(sweep.METHODS + structured.ALL_METHODS)),
        help=f"methods (default: all): {' '.join(sweep.METHODS)}; with "
             f"--structure units {' '.join(structured.METHODS)} (default), "
             f"{' '.join(structured.ALLOCATION_METHODS)}")
    add("--allocation", default="global",
        choices=list(ALLOCATIONS),
        help="SparsityTarget's allocation for the Lk methods (default "
             "global)")
    add("--protect", default="units", choices=list(PROTECTIONS),
        help="SparsityTarget's protection for the Lk methods (default "
             "units)")
    add("--quick", action="store_true",
        help="one target (0.9), one seed, 2 epochs: a smoke run")
    add("--out", help="PNG path (default: LOGDIR/sweep.png)")

    add = commands.add_parser("report", help=(
        "table and PNG from the event files of runs")).add_argument
    add("logdir", metavar="LOGDIR")
    add("--out", help="PNG path (default: LOGDIR/comparison.png)")
    return parser


def _report(logdir, out, preferred=()):
    runs = report.order_runs(report.find_runs(logdir), preferred)
    out = out or os.path.join(logdir, "comparison.png")
    check_writable(os.path.dirname(os.path.abspath(out)), "the comparison PNG",
                   "--out")
    print(report.format_table(runs))
    figures.plot_runs(runs, out)
    print(f"\ncomparison chart: {out}")
    return runs


# What each command imports beyond the library: (module, package) pairs.
_NEEDS = {"plot": [("matplotlib", "matplotlib")],
          "report": [("matplotlib", "matplotlib")],
          "demo": [("matplotlib", "matplotlib"), ("sklearn", "scikit-learn")],
          "sweep": [("matplotlib", "matplotlib"),
                    ("sklearn", "scikit-learn")]}


def _check_study_extra(command):
    """Raises `_UsageError` naming the install command if a package is gone."""
    missing = []
    for module, package in _NEEDS[command]:
        try:
            importlib.import_module(module)
        except ImportError:
            missing.append(package)
    if missing:
        raise _UsageError(
            f"`keras-lk {command}` needs {' and '.join(missing)}, which come "
            "with the study extra: pip install 'keras-lk[study]'")


def tensorboard_command(logdir):
    """The command that opens `logdir` in TensorBoard, as it can be typed.

    It runs TensorBoard with this very Python, so it works wherever
    `keras-lk` does, whether or not `tensorboard` is on the PATH.
    """
    return " ".join(shlex.quote(part) for part in (
        sys.executable, "-m", "tensorboard.main", "--logdir", logdir,
        "--host", "127.0.0.1"))


def run(args):
    _check_study_extra(args.command)
    if args.command in ("demo", "sweep"):
        # They train with the monitors, the proximal steps and
        # SparsityTarget: TensorFlow, JAX or PyTorch.
        try:
            require_training(f"keras-lk {args.command}")
        except NotImplementedError as error:
            raise _UsageError(str(error)) from None
    if args.command == "plot":
        check_writable(args.out, "figures", "--out")
        for path in figures.plot_penalties(args.k, args.zoom, args.out):
            print(path)
        return 0
    if args.command == "demo":
        check_writable(args.logdir, "TensorBoard logs", "--logdir")
        print(f"keras-lk demo: {len(runs.SETTINGS)} runs on scikit-learn's "
              f"digits, {args.epochs} epochs each, alpha {args.alpha:g}, "
              f"logs in {args.logdir}")
        runs.run_study(args.logdir, epochs=args.epochs, seed=args.seed,
                        alpha=args.alpha, hidden=args.hidden)
        print()
        _report(args.logdir, None,
                preferred=[setting.name for setting in runs.SETTINGS])
        print("\nOpen the runs in TensorBoard (then http://127.0.0.1:6006):"
              f"\n  {tensorboard_command(args.logdir)}")
        return 0
    if args.command == "sweep":
        return _sweep(args)
    _report(args.logdir, args.out)
    return 0


def _structured_sweep(args):
    if args.model is not None:
        raise _UsageError("with --structure units, choose models with "
                          f"--models. Received: --model {args.model}")
    if args.epochs is not None or args.allocation != "global" or (
            args.protect != "units") or args.out:
        raise _UsageError(
            "--epochs, --allocation, --protect and --out are for the "
            "unstructured sweep; with --structure units the fits are "
            "--fits full short")
    methods = args.methods or list(structured.METHODS)
    wrong = [m for m in methods if m not in structured.ALL_METHODS]
    if wrong:
        raise _UsageError(
            f"with --structure units the methods are "
            f"{' '.join(structured.ALL_METHODS)}. Received: "
            f"{' '.join(wrong)}")
    if set(methods) & set(structured.PEER_METHODS):
        if importlib.util.find_spec("torch_pruning") is None:
            raise _UsageError(
                "the Torch-Pruning methods run it live in PyTorch and need "
                "torch_pruning: pip install torch torch-pruning, "
                "or leave them out with --methods "
                f"{' '.join(structured.KERAS_METHODS)}")
    check_writable(args.logdir, "TensorBoard logs", "--logdir")
    models = args.models or (["digits_mlp"] if args.quick
                             else list(structured.MODELS))
    fits = args.fits or (["short"] if args.quick else list(structured.FITS))
    targets = args.targets or ([0.5] if args.quick
                               else list(structured.DEFAULT_TARGETS))
    seeds = args.seeds or ([0] if args.quick
                           else list(structured.DEFAULT_SEEDS))
    skip = structured.unreachable(models, targets)
    total = len(structured.plan(models, fits, targets, seeds, methods, skip))
    print(f"keras-lk sweep --structure units: {total} runs on "
          f"{' '.join(models)} ({' '.join(fits)} fits; {', '.join(methods)} "
          f"at {' '.join(f'{t:.0%}' for t in targets)} of the "
          f"multiply-accumulates removed, and dense; seeds "
          f"{' '.join(map(str, seeds))}), logs in {args.logdir}")
    for (model, target), why in skip.items():
        print(f"not run: {model} at {target:.0%} of the multiply-accumulates "
              f"removed, out of reach: {why}")
    results = structured.run_sweep(args.logdir, models, fits, targets, seeds,
                                   methods, skip=skip)
    print("\ntest accuracy, mean ± std over seeds; MACs left (fraction of "
          "dense), parameters and CPU latency (batch "
          f"{structured.LATENCY_BATCH}) of the pruned model")
    print(structured.format_table(structured.summarize(results)))
    print("The HParams dashboard of TensorBoard shows every run "
          "(then http://127.0.0.1:6006):"
          f"\n  {tensorboard_command(args.logdir)}")
    return 0


def _sweep(args):
    if args.structure == "units":
        return _structured_sweep(args)
    for option in ("models", "fits"):
        if getattr(args, option) is not None:
            raise _UsageError(f"--{option} needs --structure units")
    wrong = [m for m in (args.methods or ()) if m not in sweep.METHODS]
    if wrong:
        raise _UsageError(
            f"the sweep's methods are {' '.join(sweep.METHODS)} "
            f"({' '.join(wrong)} need --structure units)")
    args.model = args.model or sweep.DEFAULT_MODEL
    check_writable(args.logdir, "TensorBoard logs", "--logdir")
    out = args.out or os.path.join(args.logdir, "sweep.png")
    check_writable(os.path.dirname(os.path.abspath(out)), "the sweep PNG",
                   "--out")
    targets = args.targets or ([0.9] if args.quick
                               else list(sweep.DEFAULT_TARGETS))
    seeds = args.seeds or ([0] if args.quick else list(sweep.DEFAULT_SEEDS))
    epochs = args.epochs or (2 if args.quick
                             else suite.MODELS[args.model].epochs)
    methods = args.methods or list(sweep.METHODS)
    total = len(sweep.plan(targets, seeds, methods))
    print(f"keras-lk sweep: {total} runs on {args.model} "
          f"({', '.join(methods)} at {len(targets)} targets, and dense; "
          f"seeds {' '.join(map(str, seeds))}; allocation {args.allocation}"
          f"{'; protect outputs' if args.protect == 'outputs' else ''})"
          f", {epochs} epochs each, logs in {args.logdir}")
    results = sweep.run_sweep(args.logdir, args.model, targets, seeds,
                              epochs, methods, args.allocation,
                              protect=args.protect)
    summary = sweep.summarize(results)
    print("\ntest accuracy, mean ± std over seeds (exact zeros reached)")
    print(sweep.format_table(summary, methods))
    sweep.plot(summary, out, args.model, methods)
    print(f"\naccuracy against sparsity: {out}")
    print("\nThe HParams dashboard of TensorBoard shows every run "
          "(then http://127.0.0.1:6006):"
          f"\n  {tensorboard_command(args.logdir)}")
    return 0


def main(argv=None):
    """Runs the command; returns its exit status."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        args = build_parser().parse_args(argv)
        return run(args)
    except _UsageError as error:
        print(f"keras-lk: error: {error}", file=sys.stderr)
        return 2
    except (ValueError, OSError) as error:
        print(f"keras-lk: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("keras-lk: interrupted", file=sys.stderr)
        return 130
