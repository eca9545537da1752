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

    Example:

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
        functools.partial(_extremes, dtype=dtype), _combine_extremes,
        _no_extremes(dtype))
    return ops.cond(
        ops.isfinite(total),
        lambda: _statistics(blocks, max_abs, min_nonzero, tol, relative,
                            buckets, sanitize=False),
        lambda: _statistics_with_nonfinite(blocks, tol, relative, buckets))


def count_indices(index, width):
    """How often each of `0 .. width - 1` occurs in the int32 `index`
    (larger values are not counted): `width` int32 counts.

    `bincount` on TensorFlow and PyTorch; on JAX, whose bincount needs its
    length known when traced, a segment sum of ones (the same counts).
    """
    if keras.backend.backend() == "jax":
        return ops.segment_sum(ops.ones_like(index), index, width)
    return ops.bincount(index, minlength=width)[:width]


# Elements per block: the pass runs over the weights in blocks of this many
# (2 MB of float32), so that its temporaries (a few arrays of one block
# each) stay in cache and small whatever the weight's size. Measured on
# 5e7 weights: 2^15 561 ms, 2^17 348 ms, 2^19 244 ms, 2^21 251 ms, 2^23
# 323 ms, one block 392 ms.
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


def _no_extremes(dtype):
    return (ops.zeros((), dtype), ops.zeros((), dtype),
            ops.full((), float("inf"), dtype))


def _extremes(chunk, dtype, sanitize=False, axis=None):
    """`(sum, max, min nonzero)` of one block's |w| (per row with
    `axis=1`); the sum is finite only when every |w| is."""
    magnitude = _magnitudes(chunk, dtype, sanitize)
    nonzero = ops.where(ops.greater(magnitude, 0), magnitude,
                        ops.full((), float("inf"), dtype))
    return (ops.sum(magnitude, axis=axis),
            ops.max(magnitude, axis=axis, initial=0.0),
            ops.min(nonzero, axis=axis))


def _combine_extremes(state, partial):
    return (state[0] + partial[0], ops.maximum(state[1], partial[1]),
            ops.minimum(state[2], partial[2]))


def _finite_extremes(chunk, dtype, axis=None):
    """`_extremes` of the finite |w|, and the NaN and non-finite counts."""
    magnitude = ops.cast(ops.abs(chunk), dtype)
    nan = ops.sum(ops.cast(ops.isnan(magnitude), "int32"), axis=axis)
    nonfinite = ops.sum(ops.cast(ops.logical_not(ops.isfinite(magnitude)),
                                 "int32"), axis=axis)
    return _extremes(chunk, dtype, sanitize=True, axis=axis) + (
        nan, nonfinite)


def _combine_finite_extremes(state, partial):
    return _combine_extremes(state[:3], partial[:3]) + (
        state[3] + partial[3], state[4] + partial[4])


def _statistics_with_nonfinite(blocks, tol, relative, buckets):
    """`_statistics` with NaN and inf counted apart.

    Non-finite weights are set to 0 for the pass, then taken back out of
    the zero counts (they land in the zero buckets of both histograms).
    """
    zero = ops.zeros((), "int32")
    _, max_abs, min_nonzero, nan, nonfinite = blocks.reduce(
        functools.partial(_finite_extremes, dtype=blocks.dtype),
        _combine_finite_extremes, _no_extremes(blocks.dtype) + (zero, zero))
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


def _bucket_index(chunk, threshold, scale, top, log_lo, per_decade, dtype,
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


def _bucketing(max_abs, min_nonzero, tol, relative, buckets, dtype):
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
    threshold, scale, top, log_lo, log_hi, per_decade = _bucketing(
        max_abs, min_nonzero, tol, relative, buckets, dtype)
    width = 2 * buckets * (buckets + 1)
    joint = blocks.reduce(
        functools.partial(_bucket_index, dtype=dtype, buckets=buckets,
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

    Example:

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


# Weights of at most PACK_WEIGHT elements go through the pass together,
# packed (larger ones one by one, in blocks). In a pack each weight starts
# a new row of ROW elements (its last row padded with zeros, taken back out
# of the counts), so every row belongs to one weight. A pack holds at most
# PACK elements, padding included, so the copy it makes is bounded (64 MB
# of float32), and at most PACK_TENSORS weights: each has 2 x buckets x
# (buckets + 1) counts (7 KB at the default 30, twice that while they are
# gathered), so a pack of many small weights keeps its counts to a few MB.
PACK_WEIGHT = 2 ** 22
PACK = 2 ** 24
PACK_TENSORS = 1024
ROW = 1024
BLOCK_ROWS = BLOCK // ROW


def packs(sizes):
    """Groups weight indices by `sizes`: `[[i, ...], ...]`, each group a
    pack of at most PACK elements (each weight padded to whole rows of
    ROW) and PACK_TENSORS weights, or one weight above PACK_WEIGHT."""
    groups, current, total = [], [], 0
    for index, size in enumerate(sizes):
        if size > PACK_WEIGHT:
            groups.append([index])
            continue
        padded = max(1, -(-size // ROW)) * ROW
        if current and (total + padded > PACK
                        or len(current) == PACK_TENSORS):
            groups.append(current)
            current, total = [], 0
        current.append(index)
        total += padded
    if current:
        groups.append(current)
    return groups


def _row_buckets(rows, offset, threshold, scale, top, log_lo, per_decade,
                 buckets):
    """`_bucket_index` of float32 rows, each with its own bucketing (one
    value per row) and plus its row's `offset`; NaN and inf count as 0
    (taken back out of the counts later)."""
    column = lambda value: ops.expand_dims(value, 1)  # noqa: E731
    return column(offset) + _bucket_index(
        rows, column(threshold), column(scale), column(top), column(log_lo),
        column(per_decade), dtype="float32", buckets=buckets, sanitize=True)


class _Rows:
    """Tensors laid out as the rows of one array, in blocks of BLOCK_ROWS
    rows (see `packed_statistics`), with what the passes need to know of
    the layout: each row's owner, and each block's first owner and how
    many owners a block spans at most (from the shapes, known when
    traced)."""

    def __init__(self, tensors):
        count = len(tensors)
        self.sizes = [int(np.prod(t.shape)) for t in tensors]
        rows_of = [max(1, -(-size // ROW)) for size in self.sizes]
        self.padding = [rows * ROW - size
                        for rows, size in zip(rows_of, self.sizes)]
        # Whole blocks of BLOCK_ROWS rows: the rows after the last tensor's
        # belong to a dummy tensor (index `count`), dropped at the end.
        total_rows = sum(rows_of)
        self.blocks = -(-total_rows // BLOCK_ROWS)
        spare = self.blocks * BLOCK_ROWS - total_rows
        pieces = []
        for tensor, pad in zip(tensors, self.padding):
            pieces.append(ops.reshape(ops.convert_to_tensor(tensor), (-1,)))
            if pad:
                pieces.append(ops.zeros((pad,), "float32"))
        if spare:
            pieces.append(ops.zeros((spare * ROW,), "float32"))
        self.rows = ops.reshape(ops.concatenate(pieces),
                                (self.blocks * BLOCK_ROWS, ROW))
        owner = np.concatenate([np.repeat(np.arange(count), rows_of),
                                np.full(spare, count)]).astype("int32")
        per_block = owner.reshape(self.blocks, BLOCK_ROWS)
        first = per_block[:, 0]
        self.segments = count + 1
        self.span = int((per_block[:, -1] - first).max()) + 1
        self.owner = ops.convert_to_tensor(owner)
        self.first = first  # NumPy: where each block's counts go
        # A row's owner counted from its block's first owner.
        self.local = ops.convert_to_tensor(
            (per_block - first[:, None]).reshape(-1))

    def map(self, function, after, fuse, per_row=(), per_owner=()):
        """`after(function(block, ...))` of every block, stacked (None:
        `function`'s results). `function` gets the block, then each array
        of `per_row` (one value per row of the layout) and of `per_owner`
        (one per tensor) as one value per row of the block. One compiled
        step serves blocks of one shape: any model, any pack. `fuse`
        compiles `function` (the identity for none). Nothing is carried
        from block to block, so the blocks need not wait for one another.
        """
        fused = fuse(function)

        def step(i):
            start = i * BLOCK_ROWS
            block = ops.slice(self.rows, (start, 0), (BLOCK_ROWS, ROW))
            owners = ops.slice(self.owner, (start,), (BLOCK_ROWS,))
            values = [ops.slice(v, (start,), (BLOCK_ROWS,)) for v in per_row]
            values += [ops.take(v, owners) for v in per_owner]
            result = fused(block, *values)
            return result if after is None else after(result)

        return ops.map(step, ops.arange(self.blocks, dtype="int32"))


def packed_statistics(tensors, tol, relative=False, buckets=DEFAULT_BUCKETS,
                      fuse=None):
    """`weight_statistics` of many float32 tensors in one pass.

    The tensors are laid out as rows of one array (each starting a new row,
    its last row padded with zeros); the elementwise work runs over the
    array block by block (`fuse` may compile it into one pass), the
    extremes are reduced per row and then per tensor, and the histograms
    come from one joint `bincount` per block over (tensor, near zero,
    linear bucket, log bucket), counted over the few tensors the block
    holds and added into theirs at the end. The graph is the same size
    for 2 tensors or 2000: its tracing cost does not grow with the number
    of tensors. As in
    `weight_statistics`, the extremes come from the plain pass unless some
    weight is NaN or inf. Results are the same, to the bit, as
    `weight_statistics` on each tensor (non-finite weights included).
    Extra memory: about one copy of the tensors (the rows) and a few
    blocks, so pack them a bounded number at a time (`packs`).

    Args:
        tensors: A list of float32 tensors of any shapes.
        tol, relative, buckets: As for `weight_statistics`.
        fuse: None, or a function that compiles a function of arrays into
            one pass (e.g. `tf.function(f, jit_compile=True)`).

    Returns:
        The dict `weight_statistics` returns, each value stacked over the
        tensors (a leading axis of `len(tensors)`): one result, whose
        slicing per tensor is left to the host (`unstack`), since a graph
        op per tensor and value is what made tracing cost grow.

    Example:

    >>> import numpy as np
    >>> stats = packed_statistics([np.zeros(3, "float32"),
    ...                            np.array([1e-4, 2.0], "float32")], 1e-3)
    >>> np.asarray(stats["near_zeros"]).tolist()
    [3, 1]
    """
    count = len(tensors)
    fuse = fuse or (lambda function: function)
    layout = _Rows(tensors)
    segments = layout.segments
    int_zeros = ops.zeros((segments,), "int32")

    def per_tensor(row_values, reduce):
        # Per-row values of every block, reduced per tensor.
        return reduce(ops.reshape(row_values, (-1,)), layout.owner, segments)

    def extremes(row_max, row_min):
        # (A |w| is >= 0; a dummy without rows gets 0, not -inf.)
        return (ops.maximum(per_tensor(row_max, ops.segment_max), 0.0),
                -per_tensor(-row_min, ops.segment_max))

    # The plain pass: NaN and inf propagate through the sum of |w|.
    row_sum, row_max, row_min = layout.map(
        functools.partial(_extremes, dtype="float32", axis=1), None, fuse)
    total = ops.sum(row_sum)
    max_abs, min_nonzero = extremes(row_max, row_min)

    def with_nonfinite():
        _, row_max, row_min, row_nan, row_bad = layout.map(
            functools.partial(_finite_extremes, dtype="float32", axis=1),
            None, fuse)
        return extremes(row_max, row_min) + (
            per_tensor(row_nan, ops.segment_sum),
            per_tensor(row_bad, ops.segment_sum))

    # Some weight is NaN or inf: the extremes again, of the finite |w|.
    max_abs, min_nonzero, nan, nonfinite = ops.cond(
        ops.isfinite(total),
        lambda: (max_abs, min_nonzero, int_zeros, int_zeros),
        with_nonfinite)
    # One bucket pass either way: its sanitizing costs little (the first
    # pass's is what doubled its time), and one pass traces once.
    joint, log_lo, log_hi = _bucket_counts(
        layout, max_abs, min_nonzero, tol, relative, buckets, fuse)
    width = 2 * buckets * (buckets + 1)
    nan, nonfinite = nan[:count], nonfinite[:count]
    max_abs, log_lo, log_hi = max_abs[:count], log_lo[:count], log_hi[:count]
    joint = ops.reshape(joint[:count * width],
                        (count, 2, buckets, buckets + 1))
    near_zeros = ops.sum(joint[:, 1], axis=(1, 2))
    log_counts = ops.sum(joint, axis=(1, 2))
    abs_counts = ops.sum(joint, axis=(1, 3))
    # Non-finite weights and the padding were counted as zeros (linear
    # bucket 0, log bucket 0): take them back out.
    bad = nonfinite + ops.convert_to_tensor(np.array(layout.padding,
                                                     "int32"))
    first = ops.expand_dims(bad, 1) * ops.one_hot(0, buckets + 1,
                                                  dtype="int32")
    return {
        "size": ops.convert_to_tensor(np.array(layout.sizes, "int32")),
        "exact_zeros": log_counts[:, 0] - bad,
        "near_zeros": near_zeros - bad,
        "nan": nan,
        "inf": nonfinite - nan,
        "max_abs": max_abs,
        "abs_counts": abs_counts - first[:, :buckets],
        "log_lo": log_lo,
        "log_hi": log_hi,
        "log_counts": log_counts - first,
    }


def _bucket_counts(layout, max_abs, min_nonzero, tol, relative, buckets,
                   fuse):
    """The packed pass's second pass: per tensor (and the dummy), the
    joint (near zero, linear bucket, log bucket) counts, flat; and the log
    histogram's decades."""
    segments = layout.segments
    # Each tensor's bucketing, the same as `_statistics` sets up for one.
    threshold, scale, top, log_lo, log_hi, per_decade = _bucketing(
        max_abs, min_nonzero, tol, relative, buckets, "float32")
    width = 2 * buckets * (buckets + 1)
    # A block's index counts from its first owner's counts: the bincount
    # spans the few tensors the block holds, not all of them. The counts
    # of every block are added into their tensors' at the end.
    window = layout.span * width
    counts = layout.map(
        functools.partial(_row_buckets, buckets=buckets),
        # The bincount stays outside `fuse`: a compiled scatter is slow.
        lambda index: count_indices(ops.reshape(index, (-1,)), window),
        fuse, per_row=(layout.local * width,),
        per_owner=(threshold, scale, top, log_lo, per_decade))
    where = (layout.first[:, None] * width
             + np.arange(window)[None, :]).reshape(-1)
    joint = ops.segment_sum(ops.reshape(counts, (-1,)),
                            ops.convert_to_tensor(where.astype("int32")),
                            (segments + layout.span - 1) * width)
    return joint, log_lo, log_hi


def unstack(stats):
    """`packed_statistics`'s stacked results as one dict per tensor.

    Example:

    >>> [int(s["size"]) for s in unstack({"size": np.array([3, 2])})]
    [3, 2]
    """
    count = len(stats["size"])
    return [{key: value[i] for key, value in stats.items()}
            for i in range(count)]
