"""Step time of SparsityTarget over plain ProximalOptimizer training.

Run: `.venv/bin/python benchmarks/bench_sparsity_target.py [--rounds R]`

On the regularizer benchmark's MLP with `LkRegularizer(k=1, proximal=True)`
on every kernel and `ProximalOptimizer(SGD)`, side by side and alternated:
plain proximal training; with `SparsityTarget(0.9)` while the controller
steers (before `end_step`); and after the pattern is locked. Target: <= 1.05x
plain proximal training.
"""

import argparse

import keras

import common
import keras_lk


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=40)
    args = parser.parse_args()
    x, y = common.make_data(args.steps)

    def model():
        return common.make_mlp(
            keras_lk.LkRegularizer(k=1.0, alpha=1.0, proximal=True),
            keras_lk.ProximalOptimizer(keras.optimizers.SGD(0.01)))

    runs = {
        "ProximalOptimizer": (model(), lambda: []),
        "+ SparsityTarget, steering": (model(), lambda: [
            keras_lk.SparsityTarget(0.9, begin_step=0, end_step=10**9)]),
        "+ SparsityTarget, locked": (model(), lambda: [
            keras_lk.SparsityTarget(0.9, begin_step=0, end_step=1)]),
    }

    def run_once(run):
        model, callbacks = run
        return common.step_times_with(model, x, y, callbacks())

    for model_, callbacks in runs.values():  # trace and lock; not timed
        model_.fit(x, y, batch_size=common.BATCH, verbose=0,
                   callbacks=callbacks())
    samples = common.alternate(runs, run_once, args.rounds)
    print(f"{args.rounds} rounds x {args.steps} steps, batch {common.BATCH}, "
          "alternated")
    common.report(samples, "ProximalOptimizer",
                  {"+ SparsityTarget, steering": 1.05,
                   "+ SparsityTarget, locked": 1.05})


if __name__ == "__main__":
    main()
