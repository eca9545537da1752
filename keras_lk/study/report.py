"""Reads keras_lk runs back from TensorBoard event files into one table."""

import math
import os

from tensorboard.backend.event_processing import event_accumulator
from tensorboard.util import tensor_util

from keras_lk.monitoring.tags import ALL_LAYERS

# (column title, run, tag, format)
COLUMNS = (
    ("test acc", "validation", "epoch_accuracy", "{:.3f}"),
    ("exact zeros", "train", f"exact_zero_fraction/{ALL_LAYERS}", "{:.1%}"),
    ("|w|<=tol", "train", f"zero_fraction/{ALL_LAYERS}", "{:.1%}"),
    ("stable zeros", "train", f"stable_zero_fraction/{ALL_LAYERS}", "{:.1%}"),
    ("sign flips", "train", f"sign_flip_fraction/{ALL_LAYERS}", "{:.1%}"),
    ("max|w|", "train", f"max_abs_weight/{ALL_LAYERS}", "{:.3f}"),
    ("penalty share", "train", "reg_share/total", "{:.1%}"),
)
_MARKER_TAGS = (f"zero_fraction/{ALL_LAYERS}", "reg_share/total",
                f"exact_zero_fraction/{ALL_LAYERS}")


def _last_values(run_dir):
    """`{tag: value at the last step}` of the scalars in one TensorBoard run."""
    if not os.path.isdir(run_dir):
        return {}
    accumulator = event_accumulator.EventAccumulator(
        run_dir, size_guidance={event_accumulator.TENSORS: 0,
                                event_accumulator.SCALARS: 0})
    accumulator.Reload()
    values = {}
    for tag in accumulator.Tags().get("tensors", []):
        events = accumulator.Tensors(tag)
        if not events:
            continue
        last = max(events, key=lambda event: (event.step, event.wall_time))
        array = tensor_util.make_ndarray(last.tensor_proto)
        if array.ndim == 0 and array.dtype.kind in "fiu":
            values[tag] = float(array)
    for tag in accumulator.Tags().get("scalars", []):
        events = accumulator.Scalars(tag)
        if events:
            values[tag] = float(max(events, key=lambda e: e.step).value)
    return values


def find_runs(logdir):
    """The keras_lk runs under `logdir`: `{name: {column: value or None}}`.

    A run is a directory with a `train` subdirectory holding keras_lk's
    tags (as `LkMonitor` or `ZeroCounts` write them); `logdir` itself may be
    one. Names are paths relative to `logdir`, in sorted order except that
    the demo's order is kept when its runs are there.

    Raises:
        ValueError: If `logdir` is not a directory or holds no keras_lk run.
    """
    if not os.path.isdir(logdir):
        raise ValueError(f"LOGDIR {logdir!r} does not exist or is not a "
                         "directory")
    runs = {}
    for root, dirs, _ in os.walk(logdir):
        dirs.sort()
        if "train" not in dirs:
            continue
        train = _last_values(os.path.join(root, "train"))
        if not any(tag in train for tag in _MARKER_TAGS):
            continue
        validation = _last_values(os.path.join(root, "validation"))
        by_run = {"train": train, "validation": validation}
        name = os.path.relpath(root, logdir)
        if name == ".":
            name = os.path.basename(os.path.abspath(logdir))
        runs[name] = {title: by_run[run].get(tag)
                      for title, run, tag, _ in COLUMNS}
        dirs.remove("train")
        if "validation" in dirs:
            dirs.remove("validation")
    if not runs:
        raise ValueError(f"LOGDIR {logdir!r} holds no keras_lk runs (no "
                         "'train' directory with LkMonitor or ZeroCounts "
                         "events)")
    return runs


def order_runs(runs, preferred):
    """`runs` with the names in `preferred` first, in that order."""
    ordered = {name: runs[name] for name in preferred if name in runs}
    ordered.update({name: row for name, row in runs.items()
                    if name not in ordered})
    return ordered


def format_table(runs):
    """The runs as a plain-text table, one row per run."""
    width = max(len("run"), *(len(name) for name in runs)) + 2
    header = f"{'run':<{width}}" + "".join(
        f"{title:>{max(len(title), 8) + 2}}" for title, *_ in COLUMNS)
    lines = [header, "-" * len(header)]
    for name, row in runs.items():
        cells = []
        for title, _, _, fmt in COLUMNS:
            value = row[title]
            text = "n/a" if value is None or math.isnan(value) else (
                fmt.format(value))
            cells.append(f"{text:>{max(len(title), 8) + 2}}")
        lines.append(f"{name:<{width}}" + "".join(cells))
    return "\n".join(lines)
