"""Statistics over weights, in pure `keras.ops`: small tensors out.

Everything here reduces a weight tensor on its device to a handful of
scalars and bucket counts, so monitoring never copies whole weights to the
host. Counts are int32 tensors (exact integers); the bucketing uses one
integer index array and `bincount`, never a one-hot matrix, so the memory
beyond the weights is a small constant times their size (TensorBoard's own
histogram op builds an N x buckets one-hot matrix in float64). Both
histograms and the near-zero count come from one `bincount` over a joint
(near zero, linear bucket, log bucket) index.
The pass runs over the weight in blocks (`BLOCK` elements), so its extra
memory is a few blocks, not a few copies of the weight.
"""

import functools

import keras
import numpy as np
from keras import ops

from keras_lk.core import backend

DEFAULT_BUCKETS = 30

# The log10 histogram spans at most this many decades below max|w|; smaller
# nonzero magnitudes fall into its lowest bucket.
MAX_DECADES = 12


def weight_statistics(w, tol, relative=False, buckets=DEFAULT_BUCKETS,
                      block=None, fuse=None):
    """Counts zeros and buckets |w|, on the device.

    Args:
        w: A weight tensor of any shape.
        tol: A float `>= 0`: a weight is "near zero" when `|w| <= tol`
            (`|w| <= tol * max|w|` with `relative=True`).
        relative: Whether `tol` is relative to the tensor's max|w|.
        buckets: Number of buckets of each histogram.
        block: Elements per block of the pass (its extra memory is a few
            blocks); None for `BLOCK`.
        fuse: None, or a function that compiles a block's elementwise work
            into one pass (e.g. `tf.function(f, jit_compile=True)`): same
            results, fewer trips through memory.

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

    Examples:

        >>> import numpy as np
        >>> stats = weight_statistics(np.array([0.0, 1e-4, 0.5, -1.0]), tol=1e-3)
        >>> int(stats["exact_zeros"]), int(stats["near_zeros"])
        (1, 2)
    """
    block = BLOCK if block is None else block
    flat = ops.reshape(ops.convert_to_tensor(w), (-1,))
    dtype = ("float64" if keras.backend.standardize_dtype(flat.dtype)
             == "float64" else "float32")
    blocks = _Blocks(flat, dtype, block, fuse or (lambda function: function))
    # Pass 1: the sum (NaN and inf propagate through it: weights are almost
    # always finite, so sanitize only when needed), max|w|, min nonzero |w|.
    total, max_abs, min_nonzero = blocks.reduce(
        functools.partial(extremes, dtype=dtype), combine_extremes,
        no_extremes(dtype))
    return ops.cond(
        ops.isfinite(total),
        lambda: _statistics(blocks, max_abs, min_nonzero, tol, relative,
                            buckets, sanitize=False),
        lambda: _statistics_with_nonfinite(blocks, tol, relative, buckets))


def count_indices(index, width):
    """How often each of `0 .. width - 1` occurs in the int32 `index`
    (larger values are not counted): `width` int32 counts, by the
    backend's fastest exact count."""
    return backend.current().count_indices(index, width)


# Elements per block: the pass runs over the weights in blocks of this many
# (2 MB of float32), so that its temporaries (a few arrays of one block
# each) stay in cache and small whatever the weight's size (the sizes
# measured are in benchmarks/results/notes.md).
BLOCK = 2 ** 19


class _Blocks:
    """A flat weight, reduced block by block (the last one may be shorter).

    Each block goes through `block_fn` (elementwise work and reductions,
    which `fuse` may compile into one pass) and its partial results are
    folded into the state by `combine` (small).
    """

    def __init__(self, flat, dtype, block, fuse):
        self.flat = flat
        self.dtype = dtype
        self.size = int(flat.shape[0])
        self.block = max(1, block)
        self.full = self.size // self.block
        self.fuse = fuse

    def reduce(self, block_fn, combine, init, *args):
        """Folds `combine(state, block_fn(block, *args))` over the blocks.

        Only full blocks go through `fuse`: they all have one shape, so a
        compiler compiles them once for every weight and model; the last,
        shorter block (or a weight smaller than a block) runs as is.
        """
        fused = self.fuse(block_fn)

        def step(function, start, length, state):
            chunk = ops.slice(self.flat, (start,), (length,))
            return combine(state, function(chunk, *args))

        state = init
        if self.full:
            state = ops.fori_loop(
                0, self.full, lambda i, state: step(
                    fused, i * self.block, self.block, state), state)
        rest = self.size - self.full * self.block
        if rest:
            state = step(block_fn, self.full * self.block, rest, state)
        return state


def _magnitudes(chunk, dtype, sanitize=False):
    magnitude = ops.cast(ops.abs(chunk), dtype)
    if sanitize:
        magnitude = ops.where(ops.isfinite(magnitude), magnitude,
                              ops.zeros((), dtype))
    return magnitude


def no_extremes(dtype):
    return (ops.zeros((), dtype), ops.zeros((), dtype),
            ops.full((), float("inf"), dtype))


def extremes(chunk, dtype, sanitize=False, axis=None):
    """`(sum, max, min nonzero)` of one block's |w| (per row with
    `axis=1`); the sum is finite only when every |w| is."""
    magnitude = _magnitudes(chunk, dtype, sanitize)
    nonzero = ops.where(ops.greater(magnitude, 0), magnitude,
                        ops.full((), float("inf"), dtype))
    return (ops.sum(magnitude, axis=axis),
            ops.max(magnitude, axis=axis, initial=0.0),
            ops.min(nonzero, axis=axis))


def combine_extremes(state, partial):
    return (state[0] + partial[0], ops.maximum(state[1], partial[1]),
            ops.minimum(state[2], partial[2]))


def finite_extremes(chunk, dtype, axis=None):
    """`extremes` of the finite |w|, and the NaN and non-finite counts."""
    magnitude = ops.cast(ops.abs(chunk), dtype)
    nan = ops.sum(ops.cast(ops.isnan(magnitude), "int32"), axis=axis)
    nonfinite = ops.sum(ops.cast(ops.logical_not(ops.isfinite(magnitude)),
                                 "int32"), axis=axis)
    return extremes(chunk, dtype, sanitize=True, axis=axis) + (
        nan, nonfinite)


def combine_finite_extremes(state, partial):
    return combine_extremes(state[:3], partial[:3]) + (
        state[3] + partial[3], state[4] + partial[4])


def _statistics_with_nonfinite(blocks, tol, relative, buckets):
    """`_statistics` with NaN and inf counted apart.

    Non-finite weights are set to 0 for the pass, then taken back out of
    the zero counts (they land in the zero buckets of both histograms).
    """
    zero = ops.zeros((), "int32")
    _, max_abs, min_nonzero, nan, nonfinite = blocks.reduce(
        functools.partial(finite_extremes, dtype=blocks.dtype),
        combine_finite_extremes, no_extremes(blocks.dtype) + (zero, zero))
    stats = _statistics(blocks, max_abs, min_nonzero, tol, relative,
                        buckets, sanitize=True)
    first = ops.one_hot(0, buckets + 1, dtype="int32") * nonfinite
    stats.update(
        nan=nan, inf=nonfinite - nan,
        exact_zeros=stats["exact_zeros"] - nonfinite,
        near_zeros=stats["near_zeros"] - nonfinite,
        abs_counts=stats["abs_counts"] - first[:buckets],
        log_counts=stats["log_counts"] - first)
    return stats


def bucket_index(chunk, threshold, scale, top, log_lo, per_decade, dtype,
                  buckets, sanitize):
    """One block's joint ((near zero, linear bucket), log bucket) index,
    flattened (near zero: 0 or 1)."""
    magnitude = _magnitudes(chunk, dtype, sanitize)
    near = ops.cast(ops.less_equal(magnitude, threshold), "int32")
    linear = ops.minimum(ops.cast(magnitude * scale, "int32"), buckets - 1)
    nonzero = ops.greater(magnitude, 0)
    logs = ops.log10(ops.where(nonzero, magnitude, top))
    logarithmic = ops.clip(ops.cast((logs - log_lo) * per_decade, "int32"),
                           0, buckets - 1) + 1
    logarithmic = ops.where(nonzero, logarithmic, 0)
    return (near * buckets + linear) * (buckets + 1) + logarithmic


def bucketing(max_abs, min_nonzero, tol, relative, buckets, dtype):
    """`(threshold, scale, top, log_lo, log_hi, per_decade)` of the joint
    index (near zero, linear and log histograms), from max|w| and the
    smallest nonzero |w| (scalars, or one per tensor)."""
    threshold = (ops.multiply(ops.cast(tol, dtype), max_abs) if relative
                 else ops.zeros_like(max_abs) + ops.cast(tol, dtype))
    tiny = float(np.finfo(dtype).tiny)
    # buckets / max_abs, kept finite for a tiny max_abs.
    scale = buckets / ops.maximum(max_abs, buckets * tiny)
    top = ops.maximum(max_abs, tiny)
    log_hi = ops.ceil(ops.log10(top))
    # Zeros count as max|w| here: they cannot lower the smallest decade.
    log_lo = ops.maximum(ops.floor(ops.log10(ops.minimum(min_nonzero, top))),
                         log_hi - MAX_DECADES)
    log_hi = ops.maximum(log_hi, log_lo + 1)
    per_decade = buckets / (log_hi - log_lo)
    return threshold, scale, top, log_lo, log_hi, per_decade


def _statistics(blocks, max_abs, min_nonzero, tol, relative, buckets,
                sanitize):
    """Pass 2: the counts and both histograms, from one joint `bincount`
    per block over (near zero, linear bucket, log bucket); the exact zeros
    are the log histogram's zero bucket. The bincount stays outside
    `fuse`: a compiled scatter is slow."""
    dtype = blocks.dtype
    threshold, scale, top, log_lo, log_hi, per_decade = bucketing(
        max_abs, min_nonzero, tol, relative, buckets, dtype)
    width = 2 * buckets * (buckets + 1)
    joint = blocks.reduce(
        functools.partial(bucket_index, dtype=dtype, buckets=buckets,
                          sanitize=sanitize),
        lambda state, index: state + count_indices(index, width),
        ops.zeros((width,), "int32"),
        ops.cast(threshold, dtype), ops.cast(scale, dtype), top, log_lo,
        ops.cast(per_decade, dtype))
    joint = ops.reshape(joint, (2, buckets, buckets + 1))
    log_counts = ops.sum(joint, axis=(0, 1))
    return {
        "size": ops.convert_to_tensor(blocks.size, "int32"),
        "exact_zeros": log_counts[0],
        "near_zeros": ops.sum(joint[1]),
        "nan": ops.zeros((), "int32"),
        "inf": ops.zeros((), "int32"),
        "max_abs": max_abs,
        "abs_counts": ops.sum(joint, axis=(0, 2)),
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

    Examples:

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

    Examples:

        >>> log_histogram_buckets([3, 1, 2], -2.0, 0.0).tolist()[0]
        [-3.0, -2.0, 3.0]
    """
    log_counts = np.asarray(log_counts, dtype="float64")
    width = (float(log_hi) - float(log_lo)) / (len(log_counts) - 1)
    rest = histogram_buckets(log_counts[1:], log_lo, log_hi)
    zero = np.array([[float(log_lo) - width, float(log_lo), log_counts[0]]])
    return np.concatenate([zero, rest])


def sign_window_counts(w, seen_positive, seen_negative):
    """Stable zeros and sign flips of `w` in a window of steps.

    Args:
        w: The weight now.
        seen_positive, seen_negative: Per element, whether the weight was
            positive (negative) at any step of the window.

    A weight is a stable zero when it is zero now and was neither positive
    nor negative at any step of the window; it flipped when it was seen
    both positive and negative (its sign changed at least once).

    Returns:
        `(stable_zeros, sign_flips)`, int32 counts.

    Examples:

        >>> w = np.array([0.0, 0.5, 0.0])
        >>> counts = sign_window_counts(w, np.array([False, True, True]),
        ...                             np.array([False, True, False]))
        >>> [int(c) for c in counts]
        [1, 1]
    """
    w = ops.convert_to_tensor(w)
    positive = ops.logical_or(seen_positive, ops.greater(w, 0))
    negative = ops.logical_or(seen_negative, ops.less(w, 0))
    stable = ops.logical_and(ops.equal(w, 0), ops.logical_not(
        ops.logical_or(positive, negative)))
    flipped = ops.logical_and(positive, negative)
    return (ops.sum(ops.cast(stable, "int32")),
            ops.sum(ops.cast(flipped, "int32")))
