"""Shipping a model: `strip` takes every keras_lk object off it."""

import keras

from keras_lk.core import checks
from keras_lk.structure.surgery import shrink as _shrink

_KERAS_LK = "keras_lk>"


def _without_keras_lk(config):
    """`config` with every keras_lk regularizer set to None (a copy)."""
    if isinstance(config, dict):
        result = {}
        for key, value in config.items():
            if (key.endswith("regularizer") and isinstance(value, dict)
                    and str(value.get("registered_name", "")).startswith(
                        _KERAS_LK)):
                result[key] = None
            else:
                result[key] = _without_keras_lk(value)
        return result
    if isinstance(config, list):
        return [_without_keras_lk(item) for item in config]
    return config


def strip(model, shrink=False):
    """A plain Keras copy of `model` that loads without keras_lk.

    The same architecture and weights (exact zeros included), with every
    `LkRegularizer` removed and no optimizer: the copy is not compiled, so
    neither `ProximalOptimizer` nor any recorder of the monitoring
    callbacks comes along, and `keras.saving.load_model` reads its `.keras`
    file where keras_lk is not installed. Keras's own regularizers stay.
    Its predictions equal the original's. Works for Sequential and
    Functional models (nested ones too); a subclassed model has no config
    to copy it from, and raises a ValueError.

    With `shrink=True` the copy is also smaller: every unit whose slices are
    all exactly zero is removed, as `keras_lk.shrink` does, so the shipping
    path from a pruned model to a small `.keras` file is one call.

    Args:
        model: A built Sequential or Functional `keras.Model`.
        shrink: Whether to remove the units that are all zero.

    Returns:
        The new, uncompiled `keras.Model`.

    Examples:

        >>> import keras, keras_lk
        >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(
        ...     2, kernel_regularizer=keras_lk.LkRegularizer(k=1, alpha=0.1))])
        >>> plain = keras_lk.strip(model)
        >>> plain.layers[0].kernel_regularizer is None
        True
        >>> _ = keras_lk.prune_units(model, 0.5)  # no unit: the output stays
        >>> keras_lk.strip(model, shrink=True).layers[0].units
        2
    """
    if not isinstance(model, keras.Model) or not model.built:
        raise checks.invalid("model", "a built keras.Model", model)
    if not isinstance(shrink, bool):
        raise checks.invalid("shrink", "True or False", shrink)
    serialized = keras.saving.serialize_keras_object(model)
    serialized.pop("compile_config", None)
    serialized = _without_keras_lk(serialized)
    left = sorted({name for name in _registered_names(serialized)
                   if name.startswith(_KERAS_LK)})
    if left:
        raise ValueError(
            "strip() can remove keras_lk regularizers only; the model's "
            f"config also holds {left}.")
    try:
        plain = keras.saving.deserialize_keras_object(serialized)
        plain.set_weights(model.get_weights())
    except (TypeError, ValueError, NotImplementedError) as error:
        raise ValueError(
            "strip() copies a model from its config, which Sequential and "
            "Functional models have; for a subclassed model, build the same "
            "class without keras_lk regularizers and copy the weights with "
            f"set_weights(). Received: model of type {type(model).__name__} "
            f"({error})") from error
    return _shrink(plain) if shrink else plain


def _registered_names(config):
    """Every `registered_name` in a serialized config, nested ones too."""
    if isinstance(config, dict):
        name = config.get("registered_name")
        names = [name] if isinstance(name, str) else []
        for value in config.values():
            names += _registered_names(value)
        return names
    if isinstance(config, list):
        return [name for item in config for name in _registered_names(item)]
    return []
