"""What wraps what: optimizer chains, regularizer wrappers, and the weights
whose proximal step an optimizer takes.

A leaf: the regularizer, the optimizer and the callbacks all ask it, and it
imports none of them.
"""

import inspect
import weakref

import keras


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


class _Handled:
    """Weights whose proximal step a built proximal optimizer takes, and
    their regularizers (where the backend differentiates arrays, not
    variables, the weight is not known at the gradient: JAX). Entries go
    with their weights and regularizers."""

    def __init__(self):
        self.variables = weakref.WeakValueDictionary()  # id -> variable
        self.regularizers = weakref.WeakSet()

    def add(self, variable):
        self.variables[id(variable)] = variable
        regularizer = unwrap(getattr(variable, "regularizer", None))
        if regularizer is not None:
            self.regularizers.add(regularizer)

    def __contains__(self, variable):
        return self.variables.get(id(variable)) is variable


HANDLED = _Handled()


def mark_proximal_handled(variable):
    """Records that an optimizer applies `variable`'s proximal step."""
    HANDLED.add(variable)


def _model_in_training():
    """The `keras.Model` whose train step takes this gradient, or None.

    Keras takes gradients inside the model's own `train_step`, so the
    nearest caller whose `self` is a Model is the one being trained. Its
    optimizer decides, not the registry: a weight shared by two models is
    handled by one model's optimizer and not by the other's.
    """
    frame = inspect.currentframe()
    try:
        while frame is not None:
            owner = frame.f_locals.get("self")
            if isinstance(owner, keras.Model):
                return owner
            frame = frame.f_back
    finally:
        del frame
    return None


def is_proximal_handled(variable, regularizer=None):
    """Whether a proximal optimizer applies `variable`'s proximal step.

    In `fit` (and any train step of a model): whether the model's optimizer
    is, or wraps, one. Elsewhere (a custom training loop): whether a built
    one holds the weight, or, where the weight is not known (`variable`
    None: JAX differentiates arrays), a weight with this very
    `regularizer`.
    """
    model = _model_in_training()
    if model is not None:
        return proximal_optimizer(getattr(model, "optimizer", None)) is not None
    if variable is None:
        return regularizer in HANDLED.regularizers
    return variable in HANDLED
