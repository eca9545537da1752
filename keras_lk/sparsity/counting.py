"""Counting a model's exact zeros: `sparsity`, and `exact_zeros`, the one
zero count SparsityTarget, the sweep and the docs' figures share."""

import keras
import numpy as np

from keras_lk.core import checks
from keras_lk.monitoring.measures import WEIGHT_CHOICES, layers_and_weights


def sparsity(model, weights="kernels"):
    """Exact-zero counts and fractions of a model's weights, per layer.

    Args:
        model: A built `keras.Model`.
        weights: `"kernels"` (kernels and embeddings) or `"all"`. Defaults
            to `"kernels"`.

    Returns:
        A dict: `{"layers": {layer path: counts}, "total": counts}`, each
        `counts` being `{"zeros": int, "size": int, "fraction": float}`.

    Examples:

        >>> import keras, keras_lk, numpy as np
        >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(
        ...     2, name="d", kernel_initializer="zeros")])
        >>> keras_lk.sparsity(model)["layers"]["d"]
        {'zeros': 8, 'size': 8, 'fraction': 1.0}
    """
    checks.check_choice("weights", weights, WEIGHT_CHOICES)
    if not isinstance(model, keras.Model) or not model.built:
        raise checks.invalid("model", "a built keras.Model", model)
    layers = {path: exact_zeros([v for _, v in layer_weights])
              for path, layer_weights in layers_and_weights(model, weights)}
    total = _counts(sum(c["zeros"] for c in layers.values()),
                    sum(c["size"] for c in layers.values()))
    return {"layers": layers, "total": total}


def exact_zeros(variables):
    """`{"zeros", "size", "fraction"}` of exact zeros over `variables`."""
    zeros = sum(int(np.count_nonzero(v.numpy() == 0)) for v in variables)
    size = sum(int(np.prod(v.shape)) for v in variables)
    return _counts(zeros, size)


def _counts(zeros, size):
    return {"zeros": zeros, "size": size,
            "fraction": zeros / size if size else 0.0}
