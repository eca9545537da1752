"""keras_lk: generalized Lk weight penalties for Keras 3, and the tools to
watch what they do to the weights.

Examples:

    >>> import keras, keras_lk
    >>> layer = keras.layers.Dense(
    ...     8, kernel_regularizer=keras_lk.LkRegularizer(k=0.5, alpha=1e-3))
"""

from keras_lk.core.install import require_tensorflow as _require_tensorflow

_require_tensorflow()

from keras_lk import _moved  # noqa: E402
from keras_lk.attach import attach, detach  # noqa: E402
from keras_lk.export import strip  # noqa: E402
from keras_lk.monitoring.callbacks import (  # noqa: E402
    AbsWeightHistograms, LkMonitor, RegularizationShare, ZeroCounts)
from keras_lk.penalties.group import GroupLkRegularizer  # noqa: E402
from keras_lk.penalties.math import lk_penalty, safe_abs_pow  # noqa: E402
from keras_lk.penalties.optimizer import ProximalOptimizer  # noqa: E402
from keras_lk.penalties.prox import group_prox, prox  # noqa: E402
from keras_lk.penalties.regularizers import LkRegularizer  # noqa: E402
from keras_lk.sparsity import SparsityTarget, sparsity  # noqa: E402
from keras_lk.structure import (  # noqa: E402
    LayerUnits, UnitGroup, macs, prune_units, shrink, unit_groups, unit_rule)

_moved.install()

__version__ = "0.1.0"

__all__ = [
    "AbsWeightHistograms",
    "LkMonitor",
    "RegularizationShare",
    "SparsityTarget",
    "ZeroCounts",
    "GroupLkRegularizer",
    "LayerUnits",
    "LkRegularizer",
    "ProximalOptimizer",
    "UnitGroup",
    "attach",
    "detach",
    "group_prox",
    "lk_penalty",
    "macs",
    "prox",
    "prune_units",
    "safe_abs_pow",
    "shrink",
    "sparsity",
    "strip",
    "unit_groups",
    "unit_rule",
]
