"""The lock: at `end_step` exactly `round(target * n)` weights of each
group are zeroed, the smallest `|w| / u` (zeros first, protected weights
never), and from then on those stay 0 while the others train without the
penalty."""

import math

import keras
from keras import ops

from keras_lk.core import backend


def kept(group, protection, scale):
    """The lock's mask of each weight of `group`: True for the weights kept.

    Args:
        group: A `WeightGroup`.
        protection: Its `Protection`.
        scale: `variable -> u`, the scale of the weight's magnitudes
            (a tensor).
    """
    exempt = [protection.mask(v) for v in group.variables]
    # Protected weights rank last: never zeroed by the lock.
    scores = ops.concatenate([
        ops.reshape(ops.where(keep, float("inf"), ops.abs(ops.cast(
            v.value, "float32")) / scale(v)), (-1,))
        for v, keep in zip(group.variables, exempt)])
    count = int(round(group.target * group.size))
    # The zeros first (|w| = 0), then the smallest |w| / u.
    kept_flat = ops.logical_not(lowest(scores, count))
    masks, start = [], 0
    for variable, keep in zip(group.variables, exempt):
        n = math.prod(variable.shape)
        masks.append(ops.logical_or(ops.reshape(
            kept_flat[start:start + n], variable.shape), keep))
        start += n
    return masks


def lowest(scores, count):
    """True at the `count` smallest of `scores` (a float32 vector of values
    >= 0, +inf allowed), ties going to the lower index: the same choice as
    a top-k of `-scores`, without its sort.

    A binary search on the float bits (for floats >= 0 their int32 bit
    patterns are in the same order) finds the count-th smallest value in 31
    counting passes, which a compiler fuses; a top-k of half of a large
    model's weights is far slower (see `benchmarks/results/notes.md`).
    """
    scores = ops.cast(scores, "float32")
    if count <= 0:
        return ops.zeros(ops.shape(scores), "bool")
    seam = backend.current()
    return seam.fuse(_lowest, key=("lowest",))(
        scores, ops.convert_to_tensor(count, seam.count_dtype))


def _lowest(scores, count):
    """`lowest`'s search; counts in `count`'s dtype."""
    dtype = keras.backend.standardize_dtype(count.dtype)
    bits = ops.view(scores, "int32")

    def narrow(low, high):
        middle = low + (high - low) // 2
        enough = ops.greater_equal(ops.sum(ops.cast(
            ops.less_equal(bits, middle), dtype)), count)
        return (ops.where(enough, low, middle + 1),
                ops.where(enough, middle, high))

    # The smallest bit pattern b with at least `count` values <= b.
    _, value = ops.while_loop(
        lambda low, high: ops.less(low, high), narrow,
        (ops.convert_to_tensor(0, "int32"),
         ops.convert_to_tensor(2 ** 31 - 1, "int32")))
    below = ops.less(bits, value)
    ties = ops.equal(bits, value)
    needed = count - ops.sum(ops.cast(below, dtype))
    rank = ops.cumsum(ops.cast(ties, dtype))
    return ops.logical_or(below, ops.logical_and(ties, rank <= needed))
