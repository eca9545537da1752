"""The sparsity suite: every model of `keras_lk.study.suite`, every method.

Run: `.venv/bin/python benchmarks/sparsity_suite.py [--models ...]
[--targets 0.9 0.95] [--seeds 0 1 2] [--epochs N] [--allocation global]
[--methods ...] [--protect units] [--fixed-order]
[--out benchmarks/results/NAME.json]`

For each model it runs `keras-lk sweep`'s runs (same data, schedule and
seeds for every method) and prints the mean ± std test accuracy table; the
raw numbers go to a JSON file, which the README's tables are copied from.
Not part of the test command (about 15 minutes on 2 cores at the
defaults).
"""

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))

from keras_lk.sparsity.groups import ALLOCATIONS  # noqa: E402
from keras_lk.sparsity.protection import PROTECTIONS  # noqa: E402
from keras_lk.study import suite, sweep  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(suite.MODELS),
                        choices=list(suite.MODELS))
    parser.add_argument("--targets", type=float, nargs="+",
                        default=[0.9, 0.95])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=None,
                        help="epochs per run (default: each model's own)")
    parser.add_argument("--allocation", default="global",
                        choices=list(ALLOCATIONS))
    parser.add_argument("--methods", nargs="+", default=list(sweep.METHODS),
                        choices=list(sweep.METHODS))
    parser.add_argument("--warmup", type=float, default=0.0,
                        help="fraction of the steps trained dense first")
    parser.add_argument("--protect", default="units",
                        choices=list(PROTECTIONS),
                        help="SparsityTarget's protection")
    parser.add_argument("--fixed-order", action="store_true",
                        help="train on batches in an order drawn with "
                        "numpy from the seed, as tfmot_peer.py "
                        "--fixed-order does")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    out = args.out or os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "results",
        f"suite_{args.allocation}_e{args.epochs or 'default'}"
        f"{f'_w{args.warmup:g}' if args.warmup else ''}"
        f"{'_fixed_order' if args.fixed_order else ''}"
        f"{'_protect_outputs' if args.protect == 'outputs' else ''}.json")
    records = []
    if os.path.exists(out):
        with open(out) as f:
            records = json.load(f)
    for model in args.models:
        started = time.time()
        with tempfile.TemporaryDirectory() as logdir:
            results = sweep.run_sweep(
                logdir, model, args.targets, args.seeds, args.epochs,
                args.methods, args.allocation, args.warmup,
                stream=open(os.devnull, "w"), fixed_order=args.fixed_order,
                protect=args.protect)
        epochs = args.epochs or suite.MODELS[model].epochs
        for run, (accuracy, zeros) in results.items():
            records = [r for r in records if not (
                r["model"] == model and r["run"] == run.name
                and r["epochs"] == epochs)]
            records.append({"model": model, "run": run.name,
                             "method": run.method, "target": run.target,
                             "seed": run.seed, "epochs": epochs,
                             "allocation": args.allocation,
                             "warmup": args.warmup,
                             "order": "fixed" if args.fixed_order
                             else "shuffled",
                             "protect": args.protect,
                             "accuracy": accuracy, "sparsity": zeros})
        print(f"\n{model}, {epochs} epochs, allocation {args.allocation}, "
              f"warm-up {args.warmup:g} "
              f"({time.time() - started:.0f} s)")
        print(sweep.format_table(sweep.summarize(results), args.methods),
              flush=True)
        with open(out, "w") as f:
            json.dump(records, f, indent=1)


if __name__ == "__main__":
    main()
