"""Which weights a proximal optimizer takes the proximal step of.

A proximal penalty's gradient is 0 (the optimizer applies it as a step),
so a weight trained by any other optimizer would train unregularized: the
penalty's gradient asks here, and raises. Two kinds of hidden state are
needed for that, both kept in this module alone:

- `HANDLED`, a registry of the weights (and regularizers) that a built
  `ProximalOptimizer` holds. It exists because a custom training loop has
  no model in training to ask, and JAX differentiates arrays, not
  variables, so at the gradient only the regularizer is known. Entries go
  with their weights (weak references).
- `_model_in_training`, a walk up the stack frames to the model whose
  `train_step` takes this gradient. It exists because a layer shared by
  two models is handled by one model's optimizer and not by the other's:
  the weight alone cannot say which model is training it
  (`tests/test_optimizers.py::test_a_layer_shared_by_a_proximal_and_a_plain_model`).
"""

import inspect
import weakref

import keras

from keras_lk.core.chain import proximal_optimizer, unwrap


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
