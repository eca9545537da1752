"""Protection: the weights SparsityTarget never zeroes, so that no layer
collapses.

With `protect="units"` each output unit's largest `|w|` (over every axis
but the last) is exempt from the proximal step and from the lock, so every
unit of every covered layer keeps an input. With `protect="outputs"` only
the layers that produce the model's outputs keep every unit's largest
weight; each other weight keeps its single largest element.
"""

import keras
from keras import ops

PROTECTIONS = ("units", "outputs")
# The protected weights are found again every PROTECT_EVERY steps and at
# the lock: a protected weight is never shrunk, so it stays its unit's
# largest in between.
PROTECT_EVERY = 32


def protected(value, per_unit=True):
    """Each output unit's largest `|w|` (over every axis but the last; for
    a vector, its largest element): True there, False elsewhere. A unit
    whose weights are all 0 has none. With `per_unit=False`, the weight's
    largest `|w|` only."""
    magnitude = ops.abs(value)
    axes = tuple(range(len(value.shape) - 1)) or (0,)
    if not per_unit:
        axes = tuple(range(len(value.shape))) or None
    largest = ops.max(magnitude, axis=axes, keepdims=True)
    return ops.logical_and(ops.equal(magnitude, largest),
                           ops.greater(largest, 0))


class Protection:
    """Which covered weights keep each unit's largest element.

    Args:
        model: The model being trained.
        variables: The covered weights.
        protect: `"units"` or `"outputs"`.
    """

    def __init__(self, model, variables, protect):
        facing = None
        if protect == "outputs":
            facing = {id(v) for v in output_weights(model)}
        self._per_unit = {id(v): facing is None or id(v) in facing
                          for v in variables}

    def mask(self, variable):
        """`protected` of a covered weight as it is now."""
        return protected(variable.value, self._per_unit[id(variable)])


def output_weights(model):
    """The weights of the layers that produce `model`'s outputs (whose
    units feed the loss): a Sequential model's last layer with weights, a
    functional model's output layers. ValueError for other models."""
    if isinstance(model, keras.Sequential):
        for layer in reversed(model.layers):
            if layer.weights:
                return list(layer.weights)
        return []
    names = getattr(model, "output_names", None)
    if not isinstance(model, keras.Model) or not names:
        raise ValueError(
            "SparsityTarget(protect='outputs') finds the units that feed "
            "the loss in the layers that produce the model's outputs, which "
            "it can only do for a Sequential or functional model. Use "
            f"protect='units' for this model. Received: model of type "
            f"{type(model).__name__}")
    weights = []
    for name in names:
        layer = model.get_layer(name)
        if not layer.weights:
            raise ValueError(
                f"SparsityTarget(protect='outputs'): the model's output "
                f"layer {name!r} ({type(layer).__name__}) has no weights, "
                f"so the units that feed the loss are in a layer before "
                f"it. Give the weighted layer the output (e.g. Dense with "
                f"activation='softmax'), or use protect='units'.")
        weights += layer.weights
    return weights
