"""The names keras_lk writes: TensorBoard runs and tags, `logs` keys.

One place for them, used by the callbacks that write them, the study's
reader that reads them back, and the docs. A tag is `<quantity>/<layer>`
(one TensorBoard section per quantity, one card per layer; layers by their
own names, nested models as paths such as `encoder/dense_1`), or
`<quantity>/<layer>/<weight>` for histograms.
"""

# Runs: the subdirectories of `log_dir`, as keras.callbacks.TensorBoard.
TRAIN = "train"
VALIDATION = "validation"

# The `<layer>` of whole-model values.
ALL_LAYERS = "(all layers)"
TOTAL = "total"

# Histograms, per weight.
ABS_WEIGHTS = "abs_weights"
LOG10_ABS_WEIGHTS = "log10_abs_weights"

# Scalars from the weights, per layer and ALL_LAYERS.
ZERO_COUNT = "zero_count"
ZERO_FRACTION = "zero_fraction"
EXACT_ZERO_COUNT = "exact_zero_count"
EXACT_ZERO_FRACTION = "exact_zero_fraction"
STABLE_ZERO_COUNT = "stable_zero_count"
STABLE_ZERO_FRACTION = "stable_zero_fraction"
SIGN_FLIP_COUNT = "sign_flip_count"
SIGN_FLIP_FRACTION = "sign_flip_fraction"
MAX_ABS_WEIGHT = "max_abs_weight"
NONFINITE_COUNT = "nonfinite_count"

# Scalars from the penalty, per layer and TOTAL.
REG_LOSS = "reg_loss"
REG_SHARE = "reg_share"
DATA_LOSS = "data_loss"  # a tag of its own, no layer
PENALTY_PULL = "penalty_pull"
PENALTY_PULL_RATIO = "penalty_pull_ratio"

# Scalars from the unit groups (LkMonitor(units=True)): live units per
# group (named by the layer that makes its units), and the live fraction of
# the multiply-accumulates under ALL_LAYERS.
LIVE_UNITS = "live_units"
LIVE_MACS_FRACTION = "live_macs_fraction"
LOG_LIVE_MACS_FRAC = "live_macs_frac"
# SparsityTarget's schedule when it aims at a share of the MACs with units
# ranked across groups.
LIVE_MACS_FRACTION_TARGET = "live_macs_fraction_target"
LOG_LIVE_MACS_FRAC_TARGET = "live_macs_frac_target"
# Histograms of each unit group's unit norms (SparsityTarget(structure=
# "units")).
UNIT_NORMS = "unit_norms"

# `logs` keys (validation ones take VALIDATION_PREFIX).
LOG_REG_LOSS = "reg_loss"
LOG_REG_SHARE = "reg_share"
LOG_ZERO_FRAC = "zero_frac"
LOG_STABLE_ZERO_FRAC = "stable_zero_frac"
LOG_SIGN_FLIP_FRAC = "sign_flip_frac"
VALIDATION_PREFIX = "val_"

# SparsityTarget's scalars, per group (ALL_LAYERS or a layer path), and its
# `logs` keys (over all the weights it covers).
SPARSITY = "sparsity"
SPARSITY_TARGET = "sparsity_target"
ZEROING_THRESHOLD = "zeroing_threshold"
LOG_SPARSITY = "sparsity"
LOG_SPARSITY_TARGET = "sparsity_target"


def tag(quantity, *path):
    """`quantity/part/...`, e.g. `tag(ZERO_FRACTION, ALL_LAYERS)`.

    Examples:

        >>> tag(ABS_WEIGHTS, "encoder/dense", "kernel")
        'abs_weights/encoder/dense/kernel'
    """
    return "/".join((quantity,) + path)


def every_layer(quantity):
    """The regex of a quantity's tags for a custom-scalars chart."""
    return f"{quantity}/.*"
