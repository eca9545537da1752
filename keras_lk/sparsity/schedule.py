"""The sparsity schedule shared by `SparsityTarget` and `keras-lk sweep`."""

from keras import ops

# Gradual magnitude pruning's cubic (Zhu and Gupta, 2017, "To prune or not
# to prune"): steep at first, when the weights are many and redundant, flat
# near the target, when each pruned weight costs more.
POWER = 3


def polynomial(step, begin, end, target, start=0.0, power=POWER):
    """The scheduled sparsity at `step`: `start` before `begin`, `target`
    from `end` on, and `target + (start - target) * (1 - p)^power` between,
    `p = (step - begin) / (end - begin)`.

    Works on Python numbers (returns a float) and on tensors or variables
    (returns a float32 tensor), so the controller's compiled step and the
    sweep's magnitude-pruning baseline share it.

    Examples:

        >>> round(polynomial(50, 0, 100, 0.8), 6)  # half way: 0.8 * (1 - 1/8)
        0.7
    """
    if all(isinstance(x, (int, float)) for x in (step, begin, end, target,
                                                  start)):
        progress = min(max((step - begin) / max(end - begin, 1), 0.0), 1.0)
        return target + (start - target) * (1.0 - progress) ** power
    step, begin, end = (ops.cast(x, "float32") for x in (step, begin, end))
    progress = ops.clip((step - begin) / ops.maximum(end - begin, 1.0),
                        0.0, 1.0)
    target = ops.cast(target, "float32")
    return target + (ops.cast(start, "float32") - target) * (
        1.0 - progress) ** power
