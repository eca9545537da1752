"""The article's charts of |w|^k and its derivative, and run comparisons.

matplotlib draws to PNG files only (the Agg backend): no display needed.
"""

import math
import os

import numpy as np

from keras_lk.study.report import COLUMNS

VALUE_COLOR = "tab:blue"       # the article: |w|^k in blue ...
DERIVATIVE_COLOR = "tab:red"   # ... its derivative in red
RANGE = 2.0


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def k_label(k):
    return "inf" if math.isinf(k) else f"{k:g}"


def penalty_and_derivative(w, k):
    """`|w|^k` and `d/dw |w|^k` on a grid; NaN where the derivative is
    infinite (w = 0 for k < 1). For `k = inf`: `max|w|` over [-w, w] is
    drawn as its per-weight limit, the box `|w| <= 1` (0 inside, inf
    outside), whose derivative is 0 inside."""
    magnitude = np.abs(w)
    if math.isinf(k):
        value = np.where(magnitude <= 1, 0.0, np.nan)
        return value, np.where(magnitude <= 1, 0.0, np.nan)
    with np.errstate(divide="ignore", invalid="ignore"):
        value = magnitude ** k
        derivative = k * magnitude ** (k - 1) * np.sign(w)
    derivative[~np.isfinite(derivative)] = np.nan
    return value, derivative


def _draw(axis, k, half_width, title):
    w = np.linspace(-half_width, half_width, 2001)
    value, derivative = penalty_and_derivative(w, k)
    axis.plot(w, value, color=VALUE_COLOR, label=f"|w|^{k_label(k)}")
    axis.plot(w, derivative, color=DERIVATIVE_COLOR,
              label=f"d/dw |w|^{k_label(k)}")
    finite = np.abs(np.concatenate([value[np.isfinite(value)],
                                    derivative[np.isfinite(derivative)]]))
    if finite.size:
        # The 99th percentile keeps the k < 1 pole at 0 from flattening all.
        limit = max(np.percentile(finite, 99), 1e-3) * 1.2
        negative = np.nanmin(derivative) < 0
        axis.set_ylim(-limit if negative else -0.05 * limit, limit)
    axis.axhline(0, color="0.7", linewidth=0.8)
    axis.axvline(0, color="0.7", linewidth=0.8)
    axis.set_title(title)
    axis.set_xlabel("w")
    axis.legend(loc="best", fontsize="small")


def plot_penalties(ks, zoom, out_dir):
    """Writes `lk_k<k>.png` per k (full range and zoom near 0) and
    `lk_overview.png`. Returns the paths written."""
    plt = _pyplot()
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    for k in ks:
        figure, (full, near) = plt.subplots(1, 2, figsize=(10, 4))
        _draw(full, k, RANGE, f"L{k_label(k)}: |w|^k and its derivative")
        _draw(near, k, zoom, f"zoom: |w| <= {zoom:g}")
        figure.tight_layout()
        path = os.path.join(out_dir, f"lk_k{k_label(k)}.png")
        figure.savefig(path, dpi=100)
        plt.close(figure)
        paths.append(path)
    figure, axes = plt.subplots(2, 2, figsize=(11, 8))
    for row, half_width in enumerate((RANGE, zoom)):
        w = np.linspace(-half_width, half_width, 2001)
        for k in ks:
            value, derivative = penalty_and_derivative(w, k)
            axes[row, 0].plot(w, value, label=f"k={k_label(k)}")
            axes[row, 1].plot(w, derivative, label=f"k={k_label(k)}")
        scale = half_width ** 2 * 2 if half_width >= 1 else 1.0
        axes[row, 0].set_ylim(-0.05 * scale, scale)
        axes[row, 1].set_ylim(-2 * scale, 2 * scale)
        axes[row, 0].set_title(f"|w|^k, |w| <= {half_width:g}")
        axes[row, 1].set_title(f"d/dw |w|^k, |w| <= {half_width:g}")
        for axis in axes[row]:
            axis.axhline(0, color="0.7", linewidth=0.8)
            axis.set_xlabel("w")
            axis.legend(fontsize="small")
    figure.tight_layout()
    path = os.path.join(out_dir, "lk_overview.png")
    figure.savefig(path, dpi=100)
    plt.close(figure)
    paths.append(path)
    return paths


def plot_runs(runs, path):
    """One bar chart per table column, comparing the runs; writes `path`."""
    plt = _pyplot()
    names = list(runs)
    columns = len(COLUMNS)
    figure, axes = plt.subplots(2, (columns + 1) // 2,
                                figsize=(4 * ((columns + 1) // 2), 8))
    axes = axes.ravel()
    for axis, (title, *_rest) in zip(axes, COLUMNS):
        values = [runs[name][title] for name in names]
        heights = [0.0 if v is None else v for v in values]
        axis.barh(names, heights, color=[
            "0.6" if v is None else "tab:blue" for v in values])
        axis.set_title(title)
        axis.invert_yaxis()
        axis.tick_params(axis="y", labelsize="small")
    for axis in axes[columns:]:
        axis.axis("off")
    figure.suptitle("keras_lk runs (last logged values)")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
