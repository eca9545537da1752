"""Callbacks that show in TensorBoard what regularization does to weights.

`AbsWeightHistograms`, `ZeroCounts` and `RegularizationShare` each measure
one thing; `LkMonitor` measures all three with one writer and one frequency.
They share one lifecycle (`lifecycle.MeasuringCallback`), which runs a list of measures
(`measures/`) over windows of steps and writes what they report; the
compiled steps are observed through `recording.py`, which leaves the model as
it found it when `fit` returns.

TensorBoard tags (one section per quantity, one card per layer; layers by
their own names, nested models as paths such as `encoder/dense_1`; names in
`tags.py`):

| tag | kind | callback |
|---|---|---|
| `abs_weights/<layer>/<weight>` | histogram of \\|w\\| | AbsWeightHistograms |
| `log10_abs_weights/<layer>/<weight>` | histogram of log10\\|w\\| | AbsWeightHistograms |
| `zero_fraction/<layer>`, `zero_count/<layer>` | \\|w\\| <= tol | ZeroCounts |
| `exact_zero_fraction/<layer>`, `exact_zero_count/<layer>` | w == 0 | ZeroCounts |
| `stable_zero_fraction/<layer>`, `stable_zero_count/<layer>` | w == 0 at every step since the last log (`step_stats=True`) | ZeroCounts |
| `sign_flip_fraction/<layer>`, `sign_flip_count/<layer>` | sign changed since the last log (`step_stats=True`) | ZeroCounts |
| `max_abs_weight/<layer>` | max\\|w\\| | ZeroCounts |
| `nonfinite_count/<layer>` | NaN or inf weights, when any | ZeroCounts |
| `reg_loss/<layer>`, `reg_loss/total` | penalty in the loss | RegularizationShare |
| `reg_share/<layer>`, `reg_share/total` | penalty / loss | RegularizationShare |
| `data_loss` | loss - penalty | RegularizationShare |
| `penalty_pull/<layer>`, `penalty_pull_ratio/<layer>` | mean \\|dP/dw\\|, and over mean \\|dL/dw\\| | RegularizationShare |
| `live_units/<group>` | units of a removable group with a nonzero slice (`units=True`) | LkMonitor |
| `live_macs_fraction/(all layers)` | multiply-accumulates left if the zero units were removed (`units=True`) | LkMonitor |

`<layer>` is `(all layers)` for model totals. Training values go to the run
`<log_dir>/train`, validation values to `<log_dir>/validation`, the runs
`keras.callbacks.TensorBoard` uses, so both line up in TensorBoard.
"""

from keras_lk.core import checks
from keras_lk.monitoring.measures import WEIGHT_CHOICES
from keras_lk.monitoring.measures.penalty import PenaltyMeasure, PullMeasure
from keras_lk.monitoring.measures.units import UnitMeasure
from keras_lk.monitoring.measures.weights import WeightMeasure, ZeroOptions
from keras_lk.monitoring.lifecycle import MeasuringCallback
from keras_lk.monitoring.stats import DEFAULT_BUCKETS

__all__ = ["AbsWeightHistograms", "LkMonitor", "RegularizationShare",
           "ZeroCounts"]

DEFAULT_TOL = 1e-3


def _check_weight_options(tol, relative_tol, weights, buckets,
                          step_stats=False):
    tol = checks.check_real("tol", tol, minimum=0.0,
                                 expected="a finite number >= 0")
    for name, value in (("relative_tol", relative_tol),
                        ("step_stats", step_stats)):
        if not isinstance(value, bool):
            raise checks.invalid(name, "True or False", value)
    checks.check_choice("weights", weights, WEIGHT_CHOICES)
    if (isinstance(buckets, bool) or not isinstance(buckets, int)
            or buckets < 1):
        raise checks.invalid("buckets", "an integer >= 1", buckets)
    return tol


class AbsWeightHistograms(MeasuringCallback):
    """Logs per-layer histograms of |w| and of log10|w| to TensorBoard.

    Written with TensorBoard's histogram plugin, so the Histograms and
    Distributions dashboards show them, under `abs_weights/<layer>/<weight>`
    and `log10_abs_weights/<layer>/<weight>`. |w| is bucketed in equal
    widths over `[0, max|w|]`. log10|w| is bucketed over whole decades from
    the smallest nonzero |w| (at most 12 decades below max|w|; smaller ones
    go to the lowest bucket) up to max|w|, because sparse weights span many
    orders of magnitude; exact zeros, whose log is -inf, get their own
    lowest bucket one bucket width below the smallest decade. Counts are
    exact integers and add up to the number of finite weights; NaN and inf
    weights are left out of the histograms (`ZeroCounts` counts them).
    Buckets are counted on the device with integer counts: memory stays a
    small constant times the weight, even for 5e7-weight kernels.

    Args:
        log_dir: Directory of the TensorBoard logs; histograms go to its
            `train` run.
        update_freq: `"epoch"`, `"batch"` (every batch) or an integer N
            (every N batches; the step axis is then the optimizer's
            iteration count). Defaults to `"epoch"`.
        weights: `"kernels"` (kernels and embeddings) or `"all"` (every
            weight, biases and normalization statistics included). Defaults
            to `"kernels"`.
        buckets: Buckets per histogram. Defaults to 30.

    Examples:

        >>> import keras, keras_lk, numpy as np, tempfile
        >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
        >>> model.compile("sgd", "mse")
        >>> cb = keras_lk.AbsWeightHistograms(tempfile.mkdtemp())
        >>> _ = model.fit(np.ones((8, 4)), np.ones((8, 2)), verbose=0,
        ...               callbacks=[cb])
    """

    def __init__(self, log_dir, update_freq="epoch", weights="kernels",
                 buckets=DEFAULT_BUCKETS):
        _check_weight_options(0.0, False, weights, buckets)
        super().__init__(log_dir, update_freq, [
            WeightMeasure(weights, buckets=buckets)])


class ZeroCounts(MeasuringCallback):
    """Logs per-layer and whole-model counts of zero and near-zero weights.

    For each layer and for `(all layers)`: `exact_zero_count` and
    `exact_zero_fraction` (w == 0), `zero_count` and `zero_fraction`
    (|w| <= tol), `max_abs_weight`, and `nonfinite_count` when NaN or inf
    weights appear. With `step_stats=True`, also
    `stable_zero_count` and `stable_zero_fraction` (weights exactly zero at
    every step since the last log) and `sign_flip_count` and
    `sign_flip_fraction` (weights whose sign changed at least once since the
    last log, between positive and negative: the article's flip-flop). These
    are tracked on the device at every step, for weights that have a
    regularizer (any kind); other weights count as neither. The
    default `tol=1e-3` suits weights of order 0.01 to 1; with
    `relative_tol=True` the threshold is `tol * max|w|` of each weight
    tensor, which compares layers of different scales. Adds `zero_frac` (the
    fraction of |w| <= tol over all monitored weights) and, with
    `step_stats`, `stable_zero_frac` and `sign_flip_frac` to the `logs`
    dict.

    Args:
        log_dir: Directory of the TensorBoard logs.
        update_freq: `"epoch"`, `"batch"` (every batch) or an integer N
            (every N batches; the step axis is then the optimizer's
            iteration count). Defaults to `"epoch"`.
        tol: Near-zero threshold, `>= 0`. Defaults to `1e-3`.
        relative_tol: Whether `tol` is relative to each tensor's max|w|.
            Defaults to False.
        weights: `"kernels"` or `"all"`. Defaults to `"kernels"`.
        step_stats: Whether to track, at every training step on the device,
            the signs of regularized weights, for stable zeros and sign
            flips: two elementwise ORs per weight and step, about 9% of the
            step time of the benchmark MLP, hence opt-in. Defaults to
            False.

    Examples:

        >>> import keras, keras_lk, numpy as np, tempfile
        >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(
        ...     2, kernel_initializer="zeros")])
        >>> model.compile("sgd", "mse")
        >>> h = model.fit(np.ones((8, 4)), np.zeros((8, 2)), verbose=0,
        ...               callbacks=[keras_lk.ZeroCounts(tempfile.mkdtemp())])
        >>> h.history["zero_frac"]
        [1.0]
    """

    def __init__(self, log_dir, update_freq="epoch", tol=DEFAULT_TOL,
                 relative_tol=False, weights="kernels", step_stats=False):
        tol = _check_weight_options(tol, relative_tol, weights, 1, step_stats)
        self.tol = tol
        super().__init__(log_dir, update_freq, [WeightMeasure(
            weights, zeros=ZeroOptions(tol, relative_tol, step_stats))])


class RegularizationShare(MeasuringCallback):
    """Logs the penalty each layer adds to the loss, and its share of it.

    Counts every weight regularizer Keras applies (`keras.regularizers.L2`
    as well as `LkRegularizer`), as it entered each step's loss: each
    regularizer is wrapped (its value is unchanged) so that the compiled
    step adds the value to an accumulator on the device. For an epoch (or a
    window of N batches): `reg_loss/<layer>` and `reg_loss/total`, the mean
    over its steps of the penalty; `data_loss`, the mean loss minus that;
    `reg_share/<layer>` and `reg_share/total`, the mean penalty over the
    mean loss. Adds `reg_loss`, `reg_share` and, with validation data,
    `val_reg_loss`, `val_reg_share` to the `logs` dict; put it before
    `CSVLogger` or `keras.callbacks.TensorBoard` in `callbacks` for them to
    see these keys. Losses added with `add_loss` (activity regularizers)
    count as data loss. Keras weights its running loss by batch size; the
    window mean assumes equal batches (a smaller last batch shifts it
    slightly). The step-time cost is one scalar addition per regularized
    weight. At each training log it also writes `penalty_pull/<layer>`, the
    mean |d penalty / dw| over the layer's regularized weights (for a
    proximal LkRegularizer, the pull the same penalty would have as a
    gradient) and, with `pull_batch`, `penalty_pull_ratio/<layer>`: that
    over the mean |d data loss / dw| on the given batch. Runs on
    TensorFlow, JAX and PyTorch; on JAX each step sends its penalty values
    (and, with `step_stats`, the weights) to the host (`jax.debug.callback`)
    instead, and PyTorch's eager step hands them over as it runs.

    Args:
        log_dir: Directory of the TensorBoard logs.
        update_freq: `"epoch"`, `"batch"` (every batch) or an integer N
            (every N batches; the step axis is then the optimizer's
            iteration count). Defaults to `"epoch"`.
        pull_batch: None, or a batch `(x, y)` on which to measure the data
            loss's gradient for `penalty_pull_ratio`. Defaults to None.

    Examples:

        >>> import keras, keras_lk, numpy as np, tempfile
        >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(
        ...     2, kernel_regularizer=keras.regularizers.L2(0.01))])
        >>> model.compile("sgd", "mse")
        >>> h = model.fit(np.ones((8, 4)), np.ones((8, 2)), verbose=0, callbacks=[
        ...     keras_lk.RegularizationShare(tempfile.mkdtemp())])
        >>> 0 < h.history["reg_share"][0] < 1
        True
    """

    def __init__(self, log_dir, update_freq="epoch", pull_batch=None):
        super().__init__(log_dir, update_freq, [
            PenaltyMeasure(), PullMeasure(pull_batch)])


class LkMonitor(MeasuringCallback):
    """`AbsWeightHistograms`, `ZeroCounts` and `RegularizationShare` in one.

    One statistics pass per log feeds both the histograms and the zero
    counts; one writer per run; one frequency. The `logs` dict gets
    `reg_loss`, `reg_share`, `zero_frac` (with `step_stats=True` also
    `stable_zero_frac`, `sign_flip_frac`) (and
    `val_reg_loss`, `val_reg_share` with validation data). A custom-scalars layout puts every
    layer's zero fraction in one chart and every layer's penalty share in
    another (TensorBoard's Custom Scalars dashboard).

    Open the logs with `python -m tensorboard.main --logdir LOG_DIR`.

    Args:
        log_dir: Directory of the TensorBoard logs.
        update_freq: `"epoch"`, `"batch"` (every batch) or an integer N
            (every N batches; the step axis is then the optimizer's
            iteration count). Defaults to `"epoch"`.
        tol: Near-zero threshold, `>= 0`. Defaults to `1e-3`.
        relative_tol: Whether `tol` is relative to each tensor's max|w|.
            Defaults to False.
        weights: `"kernels"` or `"all"`. Defaults to `"kernels"`.
        buckets: Buckets per histogram. Defaults to 30.
        step_stats: Whether to track stable zeros and sign flips at every
            step (see `ZeroCounts`; it costs step time). Defaults to False.
        pull_batch: None, or a batch `(x, y)` for `penalty_pull_ratio` (see
            `RegularizationShare`). Defaults to None.
        units: Whether to log the structure `shrink` would leave: per
            removable unit group (see `unit_groups`), the units with a
            nonzero slice (`live_units/<group>`), and the fraction of the
            model's multiply-accumulates they keep
            (`live_macs_fraction/(all layers)`, `logs` key
            `live_macs_frac`). Read on the host at each log, so best at
            `update_freq="epoch"`; needs a Functional or Sequential model.
            Defaults to False.

    Examples:

        >>> import keras, keras_lk, numpy as np, tempfile
        >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(
        ...     2, kernel_regularizer=keras_lk.LkRegularizer(k=1, alpha=0.1))])
        >>> model.compile("sgd", "mse")
        >>> h = model.fit(np.ones((8, 4)), np.ones((8, 2)), verbose=0,
        ...               callbacks=[keras_lk.LkMonitor(tempfile.mkdtemp())])
        >>> sorted(k for k in h.history if k != "loss")
        ['reg_loss', 'reg_share', 'zero_frac']
    """

    def __init__(self, log_dir, update_freq="epoch", tol=DEFAULT_TOL,
                 relative_tol=False, weights="kernels",
                 buckets=DEFAULT_BUCKETS, step_stats=False, pull_batch=None,
                 units=False):
        tol = _check_weight_options(tol, relative_tol, weights, buckets,
                                    step_stats)
        if not isinstance(units, bool):
            raise checks.invalid("units", "True or False", units)
        self.tol = tol
        super().__init__(log_dir, update_freq, [
            WeightMeasure(weights, buckets=buckets, zeros=ZeroOptions(
                tol, relative_tol, step_stats)),
            PenaltyMeasure(), PullMeasure(pull_batch)]
            + ([UnitMeasure()] if units else []))
