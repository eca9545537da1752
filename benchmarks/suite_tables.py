"""The README's sparsity tables, from the JSON files of benchmarks/results/.

Run: `python3 benchmarks/suite_tables.py` (after `sparsity_suite.py` and
`tfmot_peer.py`); `.venv/bin/python benchmarks/suite_tables.py --plots
docs/figures` draws each model's accuracy against sparsity;
`python3 benchmarks/suite_tables.py --equal-batches` prints keras_lk's
k = 0 against tfmot on the same batches (both run with `--fixed-order`).

Prints one markdown table per model: mean ± std test accuracy over the
seeds at each target, for the full fit and the 3-epoch fit, every method
side by side, tfmot's beside ours.
"""

import glob
import json
import os
import statistics
from collections import defaultdict

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
LABELS = {"L1_proximal": "L1 proximal", "L0.5_proximal": "L0.5 proximal",
          "L0_proximal": "L0 = magnitude pruning in keras_lk",
          "magnitude": "magnitude pruning (reference, no keras_lk)",
          "tfmot": "tfmot `prune_low_magnitude` (tf-keras)",
          "dense": "dense (no pruning)"}


def trial(record):
    """Whether a run belongs to a side trial (a warm-up, the equal-batches
    comparison, the outputs-only protection), kept out of the main tables
    and plots."""
    return bool(record.get("warmup") or record.get("order") == "fixed"
                or record.get("protect", "units") != "units")


def load():
    cells = defaultdict(list)   # (model, epochs, method, allocation, target)
    for path in glob.glob(os.path.join(HERE, "*.json")):
        with open(path) as f:
            records = json.load(f)
        for r in records:
            if trial(r):
                continue
            allocation = r.get("allocation", "uniform")
            if r["method"] in ("magnitude", "dense"):
                # Run again with every allocation: count each run once.
                if allocation != "global" and r["method"] != "tfmot":
                    continue
                allocation = "-" if r["method"] == "dense" else "global"
            if r["method"] == "dense" and "allocation" not in r:
                continue  # tfmot's own dense runs: the same model in tf-keras
            cells[(r["model"], r["epochs"], r["method"], allocation,
                   r["target"])].append(r["accuracy"])
    return cells


def cell(values):
    if not values:
        return ""
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} ± {std:.3f}"


def plots(directory):
    """`suite_<model>.png`: accuracy against sparsity, full fits, global
    allocation, every method (the sweep's plot)."""
    import sys
    sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))
    from keras_lk.study import suite, sweep

    records = []
    for path in glob.glob(os.path.join(HERE, "suite_*.json")):
        with open(path) as f:
            records += [r for r in json.load(f) if not trial(r)
                        and r.get("allocation") == "global"]
    for model in sorted({r["model"] for r in records}):
        epochs = suite.MODELS[model].epochs
        groups = defaultdict(list)
        for r in records:
            if r["model"] == model and r["epochs"] == epochs:
                groups[(r["method"], r["target"])].append(
                    (r["accuracy"], r["sparsity"]))
        summary = {key: (statistics.mean(a for a, _ in v),
                         statistics.stdev(a for a, _ in v) if len(v) > 1
                         else 0.0, statistics.mean(z for _, z in v), len(v))
                   for key, v in groups.items()}
        print(sweep.plot(summary, os.path.join(directory,
                                               f"suite_{model}.png"), model))


def equal_batches():
    """keras_lk's k = 0 (uniform; each protection) against tfmot on the
    same batches (`--fixed-order` on both sides): accuracies and the
    per-seed paired difference, keras_lk minus tfmot."""
    runs = defaultdict(dict)   # (model, epochs, target, side) -> {seed: acc}
    for path in glob.glob(os.path.join(HERE, "*fixed_order*.json")):
        with open(path) as f:
            for r in json.load(f):
                if r.get("order") != "fixed":
                    continue
                if r["method"] == "L0_proximal":
                    side = f"protect={r.get('protect', 'units')}"
                elif r["method"] == "tfmot":
                    side = "tfmot"
                elif r["method"] == "dense":
                    side = ("dense, tf-keras" if "allocation" not in r
                            else "dense, keras_lk")
                else:
                    continue
                runs[(r["model"], r["epochs"], r["target"], side)][
                    r["seed"]] = r["accuracy"]
    if not runs:
        return
    sides = ("protect=units", "protect=outputs")
    print("\n**Equal batches: keras_lk's k = 0 (uniform) and tfmot**\n")
    print("| model | epochs | target | k = 0, protect units | k = 0, "
          "protect outputs | tfmot | paired difference to tfmot (units / "
          "outputs) | dense keras_lk / tf-keras |")
    print("|---|---|---|---|---|---|---|---|")
    for model, epochs, target in sorted({k[:3] for k in runs if k[2]}):
        theirs = runs.get((model, epochs, target, "tfmot"), {})
        ours, differences = [], []
        for side in sides:
            values = runs.get((model, epochs, target, side), {})
            seeds = sorted(set(values) & set(theirs))
            ours.append(cell([values[s] for s in seeds]))
            paired = [values[s] - theirs[s] for s in seeds]
            differences.append(
                f"{statistics.mean(paired):+.3f} ± "
                f"{statistics.stdev(paired) if len(paired) > 1 else 0:.3f}"
                if paired else "")
        dense = [cell(list(runs.get((model, epochs, 0.0, side), {})
                           .values())) for side in ("dense, keras_lk",
                                                    "dense, tf-keras")]
        print(f"| {model} | {epochs} | {target:.0%} | {ours[0]} | "
              f"{ours[1]} | {cell(list(theirs.values()))} | "
              f"{differences[0]} / {differences[1]} | "
              f"{dense[0]} / {dense[1]} |")


def main():
    import sys
    if len(sys.argv) == 3 and sys.argv[1] == "--plots":
        return plots(sys.argv[2])
    if len(sys.argv) == 2 and sys.argv[1] == "--equal-batches":
        return equal_batches()
    cells = load()
    models = sorted({key[0] for key in cells})
    for model in models:
        epochs = sorted({key[1] for key in cells if key[0] == model})
        header = "| method | allocation |" + "".join(
            f" {t:.0%}, {e} ep. |" for e in epochs for t in (0.9, 0.95))
        print(f"\n**{model}**\n")
        print(header)
        print("|---|---|" + "---|" * (2 * len(epochs)))
        rows = sorted({(key[2], key[3]) for key in cells if key[0] == model},
                      key=lambda r: (list(LABELS).index(r[0]), r[1]))
        for method, allocation in rows:
            line = f"| {LABELS[method]} | {allocation} |"
            for e in epochs:
                if method == "dense":
                    line += f" {cell(cells.get((model, e, method, '-', 0.0), []))} | |"
                    continue
                for t in (0.9, 0.95):
                    line += (f" {cell(cells.get((model, e, method, allocation, t), []))}"
                             " |")
            print(line)


if __name__ == "__main__":
    main()
