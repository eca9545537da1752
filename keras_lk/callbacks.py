"""Callbacks that show in TensorBoard what regularization does to weights.

`AbsWeightHistograms`, `ZeroCounts` and `RegularizationShare` each measure
one thing; `LkMonitor` measures all three with one writer and one frequency.
They share one lifecycle (`_Monitor`): what is measured lives in small
"measure" objects, where it goes (TensorBoard, the `logs` dict) in the base.

TensorBoard tags (one section per quantity, one card per layer; layers by
their own names, nested models as paths such as `encoder/dense_1`):

| tag | kind | callback |
|---|---|---|
| `abs_weights/<layer>/<weight>` | histogram of \\|w\\| | AbsWeightHistograms |
| `log10_abs_weights/<layer>/<weight>` | histogram of log10\\|w\\| | AbsWeightHistograms |
| `zero_fraction/<layer>`, `zero_count/<layer>` | \\|w\\| <= tol | ZeroCounts |
| `exact_zero_fraction/<layer>`, `exact_zero_count/<layer>` | w == 0 | ZeroCounts |
| `stable_zero_fraction/<layer>`, `stable_zero_count/<layer>` | w == 0 at every step since the last log | ZeroCounts |
| `nonfinite_count/<layer>` | NaN or inf weights, when any | ZeroCounts |
| `reg_loss/<layer>`, `reg_loss/total` | penalty in the loss | RegularizationShare |
| `reg_share/<layer>`, `reg_share/total` | penalty / loss | RegularizationShare |
| `data_loss` | loss - penalty | RegularizationShare |

`<layer>` is `(all layers)` for model totals. Training values go to the run
`<log_dir>/train`, validation values to `<log_dir>/validation`, the runs
`keras.callbacks.TensorBoard` uses, so both line up in TensorBoard.
"""

import math
import os

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from keras_lk import _validation
from keras_lk.attach import iter_layers
from keras_lk.stats import (DEFAULT_BUCKETS, histogram_buckets,
                            log_histogram_buckets, weight_statistics)
from keras_lk.summary import RunWriter, check_writable

__all__ = ["AbsWeightHistograms", "LkMonitor", "RegularizationShare",
           "ZeroCounts"]

ALL_LAYERS = "(all layers)"
DEFAULT_TOL = 1e-3
WEIGHT_CHOICES = ("kernels", "all")
_KERNEL_NAMES = ("kernel", "embeddings")


def _is_kernel(variable):
    name = variable.name.split("/")[-1]
    return name.endswith(_KERNEL_NAMES)


def _layers_and_weights(model, which):
    """`[(layer path, [(weight name, variable)])]`, each variable once."""
    seen = set()
    result = []
    for path, layer in iter_layers(model):
        if isinstance(layer, keras.Model):
            continue  # its layers come on their own
        weights = []
        for variable in layer.weights:
            if id(variable) in seen:
                continue
            if which == "kernels" and not _is_kernel(variable):
                continue
            seen.add(id(variable))
            weights.append((variable.name.split("/")[-1], variable))
        if weights:
            result.append((path, weights))
    return result


class _Report:
    """What measures hand to the base: TensorBoard values and `logs` keys."""

    def __init__(self):
        self.scalars = {}
        self.histograms = {}
        self.logs = {}


class _WeightMeasure:
    """Histograms and zero counts from one statistics pass per log."""

    def __init__(self, weights, tol, relative_tol, buckets, histograms,
                 zeros):
        self.weights = weights
        self.tol = tol
        self.relative_tol = relative_tol
        self.buckets = buckets
        self.histograms = histograms
        self.zeros = zeros
        self.log_keys = ("zero_frac", "stable_zero_frac") if zeros else ()

    def start(self, model, recorders):
        self._layers = _layers_and_weights(model, self.weights)
        variables = [v for _, weights in self._layers for _, v in weights]
        masks = [getattr(recorders.get(v), "stable", None) for v in variables]

        # One graph for every weight: the reductions run on the device and
        # only the small results cross to the host.
        @tf.function(autograph=False, reduce_retracing=True)
        def statistics():
            results = []
            for variable, mask in zip(variables, masks):
                stats = weight_statistics(variable, self.tol,
                                          self.relative_tol, self.buckets)
                if mask is not None:
                    stable = ops.logical_and(mask, ops.equal(variable, 0))
                    stats["stable_zeros"] = ops.sum(ops.cast(stable, "int32"))
                    mask.assign(ops.ones_like(mask))  # a new window
                results.append(stats)
            return results

        self._statistics = statistics

    def measure(self, report, validation=None):
        if not self._layers:
            return
        results = iter(keras.tree.map_structure(
            ops.convert_to_numpy, self._statistics()))
        total = {"size": 0, "exact_zeros": 0, "near_zeros": 0, "nonfinite": 0,
                 "stable_zeros": 0, "tracked": 0}
        for path, weights in self._layers:
            layer = dict.fromkeys(total, 0)
            for name, _ in weights:
                stats = next(results)
                for key in ("size", "exact_zeros", "near_zeros"):
                    layer[key] += int(stats[key])
                if "stable_zeros" in stats:
                    layer["stable_zeros"] += int(stats["stable_zeros"])
                    layer["tracked"] += 1
                layer["nonfinite"] += int(stats["nan"]) + int(stats["inf"])
                if self.histograms:
                    report.histograms[f"abs_weights/{path}/{name}"] = (
                        histogram_buckets(stats["abs_counts"], 0.0,
                                          stats["max_abs"]))
                    report.histograms[f"log10_abs_weights/{path}/{name}"] = (
                        log_histogram_buckets(stats["log_counts"],
                                              stats["log_lo"],
                                              stats["log_hi"]))
            for key in total:
                total[key] += layer[key]
            if self.zeros:
                self._zero_scalars(report, path, layer)
        if self.zeros:
            self._zero_scalars(report, ALL_LAYERS, total)
            report.logs["zero_frac"] = _fraction(total["near_zeros"],
                                                 total["size"])
            report.logs["stable_zero_frac"] = _fraction(total["stable_zeros"],
                                                        total["size"])

    @staticmethod
    def _zero_scalars(report, name, counts):
        report.scalars[f"zero_count/{name}"] = counts["near_zeros"]
        report.scalars[f"zero_fraction/{name}"] = _fraction(
            counts["near_zeros"], counts["size"])
        report.scalars[f"exact_zero_count/{name}"] = counts["exact_zeros"]
        report.scalars[f"exact_zero_fraction/{name}"] = _fraction(
            counts["exact_zeros"], counts["size"])
        if counts["tracked"]:
            report.scalars[f"stable_zero_count/{name}"] = counts["stable_zeros"]
            report.scalars[f"stable_zero_fraction/{name}"] = _fraction(
                counts["stable_zeros"], counts["size"])
        if counts["nonfinite"]:
            report.scalars[f"nonfinite_count/{name}"] = counts["nonfinite"]


def _fraction(part, whole):
    return part / whole if whole else 0.0


class _Recorder:
    """Wraps a weight's regularizer (same value); records in the train step.

    Keras calls a weight's regularizer in every compiled train and test
    step with the weight as it enters that step, so this is where keras_lk
    observes each step on the device, at the cost of a scalar addition
    (`sums[mode] += value`, `counts[mode] += 1`; mode 0 for training, 1 for
    evaluation) and, with `stable`, one elementwise AND
    (`stable &= (w == 0)`).
    """

    def __init__(self, regularizer, recorders, variable):
        self.regularizer = regularizer
        self.recorders = recorders
        self.sums = recorders.new_variable(np.zeros(2), "float64")
        self.counts = recorders.new_variable(np.zeros(2), "float64")
        self.stable = None
        if recorders.stable:
            self.stable = recorders.new_variable(
                np.ones(variable.shape, bool), "bool")

    def __call__(self, x):
        value = self.regularizer(x)
        one_hot = ops.one_hot(self.recorders.mode, 2, dtype="float64")
        self.sums.assign_add(one_hot * ops.cast(value, "float64"))
        self.counts.assign_add(one_hot)
        if self.stable is not None:
            self.stable.assign(ops.logical_and(self.stable, ops.equal(x, 0)))
        return value


class _Recorders:
    """The `_Recorder`s one callback put on a model's regularized weights."""

    def __init__(self, stable):
        self.stable = stable
        self.mode = None
        self.by_variable = {}

    def new_variable(self, value, dtype):
        return keras.Variable(value, dtype=dtype, trainable=False,
                              aggregation="only_first_replica")

    def start(self, model):
        """Wraps every regularized weight not yet wrapped by this callback."""
        strategy = getattr(model, "distribute_strategy", None)
        scope = strategy.scope() if strategy is not None else _null_scope()
        retrace = False
        with scope:
            if self.mode is None:
                self.mode = self.new_variable(0, "int32")
            self.mode.assign(0)
            for _, weights in _layers_and_weights(model, "all"):
                for _, variable in weights:
                    regularizer = variable.regularizer
                    if regularizer is None:
                        continue
                    if not (isinstance(regularizer, _Recorder)
                            and regularizer.recorders is self):
                        regularizer = _Recorder(regularizer, self, variable)
                        variable.regularizer = regularizer
                        retrace = True
                    self.by_variable[id(variable)] = regularizer
        if retrace:
            # Steps traced before the recorders were put in would not feed
            # them.
            model.make_train_function(force=True)
            model.make_test_function(force=True)

    def get(self, variable):
        return self.by_variable.get(id(variable))


class _PenaltyMeasure:
    """The penalty that entered the loss, per layer, and its share."""

    log_keys = ("reg_loss", "reg_share")

    def start(self, model, recorders):
        self._recorders = recorders
        self._layers = []
        for path, weights in _layers_and_weights(model, "all"):
            layer = [recorders.get(v) for _, v in weights]
            layer = [r for r in layer if r is not None]
            if layer:
                self._layers.append((path, layer))

    def totals(self):
        """`{path: (sums[2], counts[2])}` so far, as host arrays: a mark."""
        return {path: (sum(ops.convert_to_numpy(r.sums) for r in recorders),
                       ops.convert_to_numpy(recorders[0].counts))
                for path, recorders in self._layers}

    def measure(self, report, mark, loss, mode, prefix=""):
        """Adds the mean penalty per step since `mark`, and its share.

        Args:
            report: The `_Report` to fill.
            mark: What `totals()` returned at the window's start.
            loss: The window's mean loss (penalty included), or None.
            mode: 0 for training steps, 1 for evaluation steps.
            prefix: Prefix of the `logs` keys, `"val_"` for validation.

        Returns:
            `totals()` now: the mark of the next window.
        """
        now = self.totals()
        means = {}
        for path, (sums, counts) in now.items():
            old_sums, old_counts = mark.get(path, (np.zeros(2), np.zeros(2)))
            steps = counts[mode] - old_counts[mode]
            means[path] = ((sums[mode] - old_sums[mode]) / steps
                           if steps else 0.0)
        total = float(sum(means.values()))
        for path, value in means.items():
            report.scalars[f"reg_loss/{path}"] = value
            if loss:
                report.scalars[f"reg_share/{path}"] = value / loss
        report.scalars["reg_loss/total"] = total
        report.logs[f"{prefix}reg_loss"] = total
        if loss is not None:
            report.scalars["data_loss"] = loss - total
            report.scalars["reg_share/total"] = _fraction(total, loss)
            report.logs[f"{prefix}reg_share"] = _fraction(total, loss)
        return now


class _null_scope:
    def __enter__(self):
        return self

    def __exit__(self, *args):
        return False


def _check_update_freq(update_freq):
    if update_freq == "epoch":
        return update_freq
    if (isinstance(update_freq, bool) or not isinstance(update_freq, int)
            or update_freq < 1):
        raise _validation.invalid(
            "update_freq", '"epoch" or an integer >= 1 (every N batches)',
            update_freq)
    return update_freq


def _check_log_dir(log_dir):
    if not isinstance(log_dir, (str, os.PathLike)) or not str(log_dir):
        raise _validation.invalid("log_dir", "a directory path", log_dir)
    return os.fspath(log_dir)


def _is_chief(model):
    """False on the non-chief workers of multi-worker training."""
    strategy = getattr(model, "distribute_strategy", None)
    extended = getattr(strategy, "extended", None)
    return bool(getattr(extended, "should_checkpoint", True))


class _Monitor(keras.callbacks.Callback):
    """Lifecycle shared by every keras_lk monitoring callback."""

    def __init__(self, log_dir, update_freq, weight_measure=None,
                 penalty_measure=None):
        super().__init__()
        self.log_dir = _check_log_dir(log_dir)
        self.update_freq = _check_update_freq(update_freq)
        self._weights = weight_measure
        self._penalties = penalty_measure
        self._recorders = _Recorders(
            stable=weight_measure is not None and weight_measure.zeros)
        self._writers = {}
        if self.update_freq != "epoch":
            # Only then: a batch hook turns off Keras's async dispatch.
            self.on_train_batch_end = self._on_train_batch_end

    def on_train_begin(self, logs=None):
        check_writable(self.log_dir)
        self._chief = _is_chief(self.model)
        self._writers = {}
        self._layout_written = False
        # A subclassed model is built by its first step: start after it.
        self._started = False
        if self.model.built:
            self._start()
        self._val_mark = None
        self._steps_done = 0        # training steps of finished epochs
        self._loss_sum_done = 0.0   # sum of their per-step losses
        self._loss_sum_mark = 0.0   # the same at the last batch-level log

    def _start(self):
        if self._penalties is not None or self._recorders.stable:
            self._recorders.start(self.model)
        if self._weights is not None:
            self._weights.start(self.model, self._recorders)
        if self._penalties is not None:
            self._penalties.start(self.model, self._recorders)
            self._batch_mark = self._penalties.totals()
            self._epoch_mark = self._penalties.totals()
        self._started = True

    def on_train_batch_begin(self, batch, logs=None):
        self._ensure_started()

    def _ensure_started(self):
        if not self._started and self.model.built:
            self._start()
        return self._started

    def on_epoch_begin(self, epoch, logs=None):
        self._batches = 0
        if self._started and self._penalties is not None:
            self._epoch_mark = self._penalties.totals()

    def _on_train_batch_end(self, batch, logs=None):
        logs = logs if logs is not None else {}
        self._batches = batch + 1
        steps = self._steps_done + self._batches
        if steps % self.update_freq or not self._ensure_started():
            return
        report = _Report()
        if self._weights is not None:
            self._weights.measure(report)
        if self._penalties is not None:
            window_loss = None
            if "loss" in logs:
                # Keras's batch-level loss is the running mean of the epoch
                # so far: undo the averaging to get this window's mean.
                loss_sum = self._loss_sum_done + float(logs["loss"]) * self._batches
                window_loss = (loss_sum - self._loss_sum_mark) / self.update_freq
                self._loss_sum_mark = loss_sum
            self._batch_mark = self._penalties.measure(
                report, self._batch_mark, window_loss, mode=0)
        logs.update(report.logs)
        self._write("train", report, self._global_step(steps))

    def _global_step(self, steps):
        """The optimizer's iteration count, as keras.callbacks.TensorBoard."""
        iterations = getattr(getattr(self.model, "optimizer", None),
                             "iterations", None)
        if iterations is None:
            return steps
        return int(ops.convert_to_numpy(iterations))

    def on_test_begin(self, logs=None):
        if self._penalties is not None and self._started:
            self._recorders.mode.assign(1)
            self._val_mark = self._penalties.totals()

    def on_test_end(self, logs=None):
        if self._penalties is not None and self._started:
            self._recorders.mode.assign(0)

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        if not self._ensure_started():
            return
        epoch_mode = self.update_freq == "epoch"
        step = epoch if epoch_mode else self._global_step(None)
        report = _Report()
        val_report = _Report()
        if self._weights is not None:
            self._weights.measure(report)
        if self._penalties is not None:
            self._penalties.measure(report, self._epoch_mark,
                                    logs.get("loss"), mode=0)
            if "val_loss" in logs and self._val_mark is not None:
                self._penalties.measure(val_report, self._val_mark,
                                        logs["val_loss"], mode=1,
                                        prefix="val_")
        if "loss" in logs and self._batches:
            self._loss_sum_done += float(logs["loss"]) * self._batches
            self._loss_sum_mark = self._loss_sum_done
        self._steps_done += self._batches
        logs.update(report.logs)
        logs.update(val_report.logs)
        if epoch_mode:
            self._write("train", report, step)
        self._write("validation", val_report, step)

    def _write(self, run, report, step):
        if not self._chief or not (report.scalars or report.histograms):
            return
        writer = self._writers.get(run)
        if writer is None:
            writer = self._writers[run] = RunWriter(
                os.path.join(self.log_dir, run))
        if run == "train" and not self._layout_written:
            writer.layout(self._layout())
            self._layout_written = True
        writer.scalars(report.scalars, step)
        writer.histograms(report.histograms, step)

    def _layout(self):
        charts = {}
        if self._weights is not None and self._weights.zeros:
            charts["zero fraction (|w| <= tol), every layer"] = [
                r"zero_fraction/.*"]
            charts["exact zero fraction, every layer"] = [
                r"exact_zero_fraction/.*"]
        if self._penalties is not None:
            charts["penalty share of the loss, every layer"] = [
                r"reg_share/.*"]
            charts["penalty in the loss, every layer"] = [r"reg_loss/.*"]
        return {"keras_lk": charts} if charts else {}

    def on_train_end(self, logs=None):
        for writer in self._writers.values():
            writer.close()
        self._writers = {}


def _check_weight_options(tol, relative_tol, weights, buckets):
    tol = _validation.check_real("tol", tol, minimum=0.0,
                                 expected="a finite number >= 0")
    if not isinstance(relative_tol, bool):
        raise _validation.invalid("relative_tol", "True or False",
                                  relative_tol)
    _validation.check_choice("weights", weights, WEIGHT_CHOICES)
    if (isinstance(buckets, bool) or not isinstance(buckets, int)
            or buckets < 1):
        raise _validation.invalid("buckets", "an integer >= 1", buckets)
    return tol


class AbsWeightHistograms(_Monitor):
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
        update_freq: `"epoch"` or an integer N: log every N batches.
            Defaults to `"epoch"`.
        weights: `"kernels"` (kernels and embeddings) or `"all"` (every
            weight, biases and normalization statistics included). Defaults
            to `"kernels"`.
        buckets: Buckets per histogram. Defaults to 30.

    Example:

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
        super().__init__(log_dir, update_freq, weight_measure=_WeightMeasure(
            weights, 0.0, False, buckets, histograms=True, zeros=False))


class ZeroCounts(_Monitor):
    """Logs per-layer and whole-model counts of zero and near-zero weights.

    For each layer and for `(all layers)`: `exact_zero_count` and
    `exact_zero_fraction` (w == 0), `zero_count` and `zero_fraction`
    (|w| <= tol), `stable_zero_count` and `stable_zero_fraction` (weights
    exactly zero at every step since the last log, tracked on the device for
    weights that have a regularizer; other weights count as not stable), and
    `nonfinite_count` when NaN or inf weights appear. The
    default `tol=1e-3` suits weights of order 0.01 to 1; with
    `relative_tol=True` the threshold is `tol * max|w|` of each weight
    tensor, which compares layers of different scales. Adds `zero_frac` (the
    fraction of |w| <= tol over all monitored weights) and
    `stable_zero_frac` to the `logs` dict.

    Args:
        log_dir: Directory of the TensorBoard logs.
        update_freq: `"epoch"` or an integer N: log every N batches.
            Defaults to `"epoch"`.
        tol: Near-zero threshold, `>= 0`. Defaults to `1e-3`.
        relative_tol: Whether `tol` is relative to each tensor's max|w|.
            Defaults to False.
        weights: `"kernels"` or `"all"`. Defaults to `"kernels"`.

    Example:

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
                 relative_tol=False, weights="kernels"):
        tol = _check_weight_options(tol, relative_tol, weights, 1)
        self.tol = tol
        super().__init__(log_dir, update_freq, weight_measure=_WeightMeasure(
            weights, tol, relative_tol, 1, histograms=False, zeros=True))


class RegularizationShare(_Monitor):
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
    weight. Needs the TensorFlow backend.

    Args:
        log_dir: Directory of the TensorBoard logs.
        update_freq: `"epoch"` or an integer N: log every N batches.
            Defaults to `"epoch"`.

    Example:

    >>> import keras, keras_lk, numpy as np, tempfile
    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(
    ...     2, kernel_regularizer=keras.regularizers.L2(0.01))])
    >>> model.compile("sgd", "mse")
    >>> h = model.fit(np.ones((8, 4)), np.ones((8, 2)), verbose=0, callbacks=[
    ...     keras_lk.RegularizationShare(tempfile.mkdtemp())])
    >>> 0 < h.history["reg_share"][0] < 1
    True
    """

    def __init__(self, log_dir, update_freq="epoch"):
        super().__init__(log_dir, update_freq,
                         penalty_measure=_PenaltyMeasure())


class LkMonitor(_Monitor):
    """`AbsWeightHistograms`, `ZeroCounts` and `RegularizationShare` in one.

    One statistics pass per log feeds both the histograms and the zero
    counts; one writer per run; one frequency. The `logs` dict gets
    `reg_loss`, `reg_share`, `zero_frac`, `stable_zero_frac` (and
    `val_reg_loss`, `val_reg_share` with validation data). A custom-scalars layout puts every
    layer's zero fraction in one chart and every layer's penalty share in
    another (TensorBoard's Custom Scalars dashboard).

    Open the logs with `tensorboard --logdir LOG_DIR`.

    Args:
        log_dir: Directory of the TensorBoard logs.
        update_freq: `"epoch"` or an integer N: log every N batches.
            Defaults to `"epoch"`.
        tol: Near-zero threshold, `>= 0`. Defaults to `1e-3`.
        relative_tol: Whether `tol` is relative to each tensor's max|w|.
            Defaults to False.
        weights: `"kernels"` or `"all"`. Defaults to `"kernels"`.
        buckets: Buckets per histogram. Defaults to 30.

    Example:

    >>> import keras, keras_lk, numpy as np, tempfile
    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(
    ...     2, kernel_regularizer=keras_lk.LkRegularizer(k=1, alpha=0.1))])
    >>> model.compile("sgd", "mse")
    >>> h = model.fit(np.ones((8, 4)), np.ones((8, 2)), verbose=0,
    ...               callbacks=[keras_lk.LkMonitor(tempfile.mkdtemp())])
    >>> sorted(k for k in h.history if k != "loss")
    ['reg_loss', 'reg_share', 'stable_zero_frac', 'zero_frac']
    """

    def __init__(self, log_dir, update_freq="epoch", tol=DEFAULT_TOL,
                 relative_tol=False, weights="kernels",
                 buckets=DEFAULT_BUCKETS):
        tol = _check_weight_options(tol, relative_tol, weights, buckets)
        self.tol = tol
        super().__init__(
            log_dir, update_freq,
            weight_measure=_WeightMeasure(weights, tol, relative_tol, buckets,
                                          histograms=True, zeros=True),
            penalty_measure=_PenaltyMeasure())
