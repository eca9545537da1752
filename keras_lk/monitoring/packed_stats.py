"""Statistics of many weights in one pass: `packed_statistics`.

The weights are laid out as the rows of one array, so that the graph, and
its tracing cost, is the same for 2 weights or 2000, and small weights get
the fused pass too. Results are those of `stats.weight_statistics` on each
weight, to the bit.
"""

import functools

import numpy as np
from keras import ops

from keras_lk.monitoring.stats import (BLOCK, DEFAULT_BUCKETS, bucket_index,
                                        bucketing, extremes, finite_extremes,
                                        count_indices)

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
    """`bucket_index` of float32 rows, each with its own bucketing (one
    value per row) and plus its row's `offset`; NaN and inf count as 0
    (taken back out of the counts later)."""
    column = lambda value: ops.expand_dims(value, 1)  # noqa: E731
    return column(offset) + bucket_index(
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
        slicing per tensor is left to the host (`unstack`): a graph op per
        tensor and value would make the trace grow with the tensors.

    Examples:

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

    def tensor_extremes(row_max, row_min):
        # (A |w| is >= 0; a dummy without rows gets 0, not -inf.)
        return (ops.maximum(per_tensor(row_max, ops.segment_max), 0.0),
                -per_tensor(-row_min, ops.segment_max))

    # The plain pass: NaN and inf propagate through the sum of |w|.
    row_sum, row_max, row_min = layout.map(
        functools.partial(extremes, dtype="float32", axis=1), None, fuse)
    total = ops.sum(row_sum)
    max_abs, min_nonzero = tensor_extremes(row_max, row_min)

    def with_nonfinite():
        _, row_max, row_min, row_nan, row_bad = layout.map(
            functools.partial(finite_extremes, dtype="float32", axis=1),
            None, fuse)
        return tensor_extremes(row_max, row_min) + (
            per_tensor(row_nan, ops.segment_sum),
            per_tensor(row_bad, ops.segment_sum))

    # Some weight is NaN or inf: the extremes again, of the finite |w|.
    max_abs, min_nonzero, nan, nonfinite = ops.cond(
        ops.isfinite(total),
        lambda: (max_abs, min_nonzero, int_zeros, int_zeros),
        with_nonfinite)
    # One bucket pass either way: its sanitizing costs little, and one
    # pass traces once.
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
    threshold, scale, top, log_lo, log_hi, per_decade = bucketing(
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

    Examples:

        >>> [int(s["size"]) for s in unstack({"size": np.array([3, 2])})]
        [3, 2]
    """
    count = len(stats["size"])
    return [{key: value[i] for key, value in stats.items()}
            for i in range(count)]
