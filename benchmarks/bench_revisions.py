"""Two revisions of keras_lk side by side in one process: step and log times.

Run: `.venv/bin/python benchmarks/bench_revisions.py OLD_CHECKOUT [--rounds R]`

OLD_CHECKOUT is another checkout of the repository (e.g. `git worktree add
/tmp/old <commit>`). Its `keras_lk` is copied under the name `keras_lk_old`
and imported beside this tree's, so both run in the same process, on the
same backend (`KERAS_BACKEND`), alternated round by round. On the
benchmarks' MLP (2.1M parameters, batch 128):

- `ProximalOptimizer(SGD)` with `LkRegularizer(k=1, proximal=True)`;
- the same under `SparsityTarget(0.9)` while it steers, and once locked;
- k = 1/2 under `SparsityTarget`, locked (its proximal step is the dearest);
- the group step of `attach(..., structure="units")`, and
  `SparsityTarget(structure="units")` steering (k = 0 and 1, uniform; k = 0,
  adaptive) and locked;
- an `Adam` fit with `LkMonitor` at `update_freq="epoch"` (one log a fit)
  and at 10, with `step_stats=True` (the recording of every step);
- one statistics pass of the monitors over the MLP's kernels.

Prints, per case, the best and median step (or pass) time of each revision
and their ratio new / old: "best" (fastest rounds) and "paired" (median of
the per-round ratios).
"""

import argparse
import importlib
import os
import pathlib
import shutil
import statistics
import sys
import tempfile
import time

import common
import keras
import numpy as np


def load_old(checkout):
    """The old tree's keras_lk, imported as `keras_lk_old`."""
    source = pathlib.Path(checkout) / "keras_lk"
    if not (source / "__init__.py").exists():
        sys.exit(f"no keras_lk package in {checkout!r}")
    target = pathlib.Path(tempfile.mkdtemp()) / "keras_lk_old"
    shutil.copytree(source, target)
    for path in target.rglob("*.py"):
        text = path.read_text()
        text = text.replace("keras_lk.", "keras_lk_old.").replace(
            "from keras_lk import", "from keras_lk_old import").replace(
            'package="keras_lk"', 'package="keras_lk_old"')
        path.write_text(text)
    sys.path.insert(0, str(target.parent))
    return importlib.import_module("keras_lk_old")


def cases(lk, steps):
    """`{name: (model, callbacks(log_dir))}` of one revision."""

    def proximal(k=1.0):
        return common.make_mlp(
            lk.LkRegularizer(k=k, alpha=1.0, proximal=True),
            lk.ProximalOptimizer(keras.optimizers.SGD(0.01)))

    def units(k=0.0):
        model = common.make_mlp(
            None, lk.ProximalOptimizer(keras.optimizers.SGD(0.01)))
        lk.attach(model, lk.LkRegularizer(k=k, alpha=1e-3, proximal=True),
                  structure="units")
        return model

    def toward_units(allocation, end_step=10 ** 9):
        return lambda d: [lk.SparsityTarget(
            0.5, begin_step=0, end_step=end_step, structure="units",
            allocation=allocation)]

    monitored = common.make_mlp(lk.LkRegularizer(k=1.0, alpha=1e-4))
    return {
        "proximal": (proximal(), lambda d: []),
        "steering": (proximal(), lambda d: [
            lk.SparsityTarget(0.9, begin_step=0, end_step=10 ** 9)]),
        "locked": (proximal(), lambda d: [
            lk.SparsityTarget(0.9, begin_step=0, end_step=1)]),
        "locked k=1/2": (proximal(0.5), lambda d: [
            lk.SparsityTarget(0.9, begin_step=0, end_step=1)]),
        "units, group step": (units(1.0), lambda d: []),
        "unit steering k=0": (units(), toward_units("uniform")),
        "unit steering k=1": (units(1.0), toward_units("uniform")),
        "unit steering adaptive": (units(), toward_units("adaptive")),
        "units locked": (units(), toward_units("uniform", 1)),
        "LkMonitor epoch": (monitored, lambda d: [lk.LkMonitor(d)]),
        "LkMonitor 10, step_stats": (monitored, lambda d: [
            lk.LkMonitor(d, update_freq=10, step_stats=True)]),
    }


def statistics_pass(lk_module_name):
    try:
        weights = importlib.import_module(
            f"{lk_module_name}.monitoring.measures.weights")
    except ImportError:  # a revision before the monitoring room
        weights = importlib.import_module(f"{lk_module_name}.measures.weights")
    model = common.make_mlp()
    variables = [layer.kernel.value for layer in model.layers]
    signs = [None] * len(variables)

    def run():
        compiled = weights._compiled_statistics()
        results = compiled(variables, signs, np.float32(1e-3),
                           relative=False, buckets=30)
        keras.tree.map_structure(keras.ops.convert_to_numpy, results)

    return run


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("old", help="a checkout of the earlier revision")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    old = load_old(args.old)
    import keras_lk as new
    x, y = common.make_data(args.steps)
    log_dir = tempfile.mkdtemp()
    revisions = {"old": cases(old, args.steps), "new": cases(new, args.steps)}
    for revision in revisions.values():  # trace, lock; not timed
        for name, (model, callbacks) in revision.items():
            model.fit(x, y, batch_size=common.BATCH, verbose=0,
                      callbacks=callbacks(os.path.join(log_dir, name)))
    passes = {"old": statistics_pass("keras_lk_old"),
              "new": statistics_pass("keras_lk")}
    for run in passes.values():
        run()
    times = {(r, n): [] for r in revisions for n in list(revisions[r]) + [
        "statistics pass"]}
    for round_ in range(args.rounds):
        order = ("old", "new") if round_ % 2 == 0 else ("new", "old")
        for name in revisions["new"]:
            for revision in order:
                model, callbacks = revisions[revision][name]
                step_times = common.step_times_with(
                    model, x, y, callbacks(os.path.join(log_dir, name)))
                times[revision, name].append(statistics.median(step_times))
        for revision in order:
            start = time.perf_counter()
            passes[revision]()
            times[revision, "statistics pass"].append(
                time.perf_counter() - start)
    print(f"keras backend {keras.backend.backend()}, {args.rounds} rounds x "
          f"{args.steps} steps, batch {common.BATCH}, alternated")
    print(f"{'case':28s} {'old ms':>8s} {'new ms':>8s} {'best':>6s} "
          f"{'paired':>7s}")
    for name in list(revisions["new"]) + ["statistics pass"]:
        old_times, new_times = times["old", name], times["new", name]
        best = min(new_times) / min(old_times)
        paired = statistics.median(n / o for n, o in zip(new_times, old_times))
        print(f"{name:28s} {1e3 * min(old_times):8.2f} "
              f"{1e3 * min(new_times):8.2f} {best:6.3f}x {paired:6.3f}x")


if __name__ == "__main__":
    main()
