"""Statistics over weights, in pure `keras.ops`: small tensors out.

Everything here reduces a weight tensor on its device to a handful of
scalars and bucket counts, so monitoring never copies whole weights to the
host. Counts are int32 tensors (exact integers); the bucketing uses one
integer index array and `bincount`, never a one-hot matrix, so the memory
beyond the weights is a small constant times their size (TensorBoard's own
histogram op builds an N x buckets one-hot matrix in float64).
"""

import keras
import numpy as np
from keras import ops

DEFAULT_BUCKETS = 30

# The log10 histogram spans at most this many decades below max|w|; smaller
# nonzero magnitudes fall into its lowest bucket.
MAX_DECADES = 12


def weight_statistics(w, tol, relative=False, buckets=DEFAULT_BUCKETS):
    """Counts zeros and buckets |w|, on the device.

    Args:
        w: A weight tensor of any shape.
        tol: A float `>= 0`: a weight is "near zero" when `|w| <= tol`
            (`|w| <= tol * max|w|` with `relative=True`).
        relative: Whether `tol` is relative to the tensor's max|w|.
        buckets: Number of buckets of each histogram.

    Returns:
        A dict of tensors:
        - `size`: the number of elements;
        - `exact_zeros`, `near_zeros`, `nan`, `inf`: counts;
        - `max_abs`: max|w| over finite weights (0 if none);
        - `abs_counts`: `buckets` counts of finite |w| over
          `[0, max_abs]`, equal widths, the last bucket closed;
        - `log_lo`, `log_hi`: the decades the log10 histogram spans;
        - `log_counts`: `buckets + 1` counts: index 0 the exact zeros, then
          finite nonzero log10|w| over `[log_lo, log_hi]`, equal widths.
        Both histograms count every finite weight exactly once; NaN and
        inf weights are counted in `nan` and `inf` only.

    Example:

    >>> import numpy as np
    >>> stats = weight_statistics(np.array([0.0, 1e-4, 0.5, -1.0]), tol=1e-3)
    >>> int(stats["exact_zeros"]), int(stats["near_zeros"])
    (1, 2)
    """
    magnitude = ops.abs(ops.reshape(ops.convert_to_tensor(w), (-1,)))
    dtype = keras.backend.standardize_dtype(magnitude.dtype)
    if dtype != "float64":
        dtype = "float32"
        magnitude = ops.cast(magnitude, dtype)
    finite = ops.isfinite(magnitude)
    nonfinite = ops.logical_not(finite)
    nan = ops.sum(ops.cast(ops.isnan(magnitude), "int32"))
    inf = ops.sum(ops.cast(nonfinite, "int32")) - nan
    # Non-finite weights are moved out of the way of every reduction below.
    magnitude = ops.where(finite, magnitude, ops.zeros_like(magnitude))
    max_abs = ops.max(magnitude, initial=0.0)
    zero = ops.equal(magnitude, 0)
    exact_zeros = ops.sum(ops.cast(ops.logical_and(zero, finite), "int32"))
    threshold = ops.multiply(tol, max_abs) if relative else ops.cast(tol, dtype)
    near = ops.logical_and(ops.less_equal(magnitude, threshold), finite)
    near_zeros = ops.sum(ops.cast(near, "int32"))

    tiny = float(np.finfo(dtype).tiny)
    # Divide first: buckets / max_abs overflows for tiny max_abs.
    scaled = ops.divide(magnitude, ops.maximum(max_abs, tiny)) * buckets
    index = ops.minimum(ops.cast(scaled, "int32"), buckets - 1)
    index = ops.where(finite, index, buckets)  # the dropped bucket
    abs_counts = ops.bincount(index, minlength=buckets + 1)[:buckets]

    nonzero = ops.logical_and(ops.logical_not(zero), finite)
    safe = ops.where(nonzero, magnitude, ops.ones_like(magnitude))
    logs = ops.log10(safe)
    log_hi = ops.ceil(ops.log10(ops.maximum(max_abs, tiny)))
    smallest = ops.min(ops.where(nonzero, logs, log_hi), initial=0.0)
    log_lo = ops.maximum(ops.floor(smallest), log_hi - MAX_DECADES)
    log_hi = ops.maximum(log_hi, log_lo + 1)
    width = (log_hi - log_lo) / buckets
    log_index = ops.clip(ops.cast((logs - log_lo) / width, "int32"), 0,
                         buckets - 1) + 1
    log_index = ops.where(nonzero, log_index, 0)
    log_index = ops.where(finite, log_index, buckets + 1)
    log_counts = ops.bincount(log_index, minlength=buckets + 2)[:buckets + 1]
    return {
        "size": ops.size(magnitude),
        "exact_zeros": exact_zeros,
        "near_zeros": near_zeros,
        "nan": nan,
        "inf": inf,
        "max_abs": max_abs,
        "abs_counts": abs_counts,
        "log_lo": log_lo,
        "log_hi": log_hi,
        "log_counts": log_counts,
    }


def histogram_buckets(counts, low, high):
    """Returns TensorBoard's `[k, 3]` histogram: left edge, right edge, count.

    Args:
        counts: `k` bucket counts (host values).
        low: Left edge of the first bucket.
        high: Right edge of the last bucket.

    Example:

    >>> histogram_buckets([2, 1], 0.0, 1.0).tolist()
    [[0.0, 0.5, 2.0], [0.5, 1.0, 1.0]]
    """
    counts = np.asarray(counts, dtype="float64")
    edges = np.linspace(float(low), float(high), len(counts) + 1)
    return np.stack([edges[:-1], edges[1:], counts], axis=1)


def log_histogram_buckets(log_counts, log_lo, log_hi):
    """The `[k + 1, 3]` log10|w| histogram with its exact-zero bucket.

    Exact zeros, whose log10 is -inf, get their own lowest bucket one bucket
    width below `log_lo`, so they stay visible next to tiny magnitudes.

    Example:

    >>> log_histogram_buckets([3, 1, 2], -2.0, 0.0).tolist()[0]
    [-3.0, -2.0, 3.0]
    """
    log_counts = np.asarray(log_counts, dtype="float64")
    width = (float(log_hi) - float(log_lo)) / (len(log_counts) - 1)
    rest = histogram_buckets(log_counts[1:], log_lo, log_hi)
    zero = np.array([[float(log_lo) - width, float(log_lo), log_counts[0]]])
    return np.concatenate([zero, rest])
