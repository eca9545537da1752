"""What wraps what: optimizer chains (`inner_optimizer`) and the
regularizer wrappers keras_lk puts around a user's regularizer.

A leaf: the regularizers, the optimizer and the callbacks all ask it, and
it imports none of them.
"""


def optimizer_chain(optimizer):
    """`optimizer` and every optimizer it wraps (`inner_optimizer`)."""
    while optimizer is not None:
        yield optimizer
        optimizer = getattr(optimizer, "inner_optimizer", None)


def proximal_optimizer(optimizer):
    """The optimizer of the chain that applies proximal steps, or None."""
    for inner in optimizer_chain(optimizer):
        if getattr(inner, "applies_proximal_steps", False):
            return inner
    return None


class RegularizerWrapper:
    """Base of the objects keras_lk puts in place of a weight's regularizer
    for a while (the monitors' recorders): `regularizer` is the user's."""

    regularizer = None


def unwrap(regularizer):
    """The user's regularizer, under any wrapper keras_lk put around it."""
    while isinstance(regularizer, RegularizerWrapper):
        regularizer = regularizer.regularizer
    return regularizer
