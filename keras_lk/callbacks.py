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
| `stable_zero_fraction/<layer>`, `stable_zero_count/<layer>` | w == 0 at every step since the last log (`step_stats=True`) | ZeroCounts |
| `sign_flip_fraction/<layer>`, `sign_flip_count/<layer>` | sign changed since the last log (`step_stats=True`) | ZeroCounts |
| `max_abs_weight/<layer>` | max\\|w\\| | ZeroCounts |
| `nonfinite_count/<layer>` | NaN or inf weights, when any | ZeroCounts |
| `reg_loss/<layer>`, `reg_loss/total` | penalty in the loss | RegularizationShare |
| `reg_share/<layer>`, `reg_share/total` | penalty / loss | RegularizationShare |
| `data_loss` | loss - penalty | RegularizationShare |
| `penalty_pull/<layer>`, `penalty_pull_ratio/<layer>` | mean \\|dP/dw\\|, and over mean \\|dL/dw\\| | RegularizationShare |

`<layer>` is `(all layers)` for model totals. Training values go to the run
`<log_dir>/train`, validation values to `<log_dir>/validation`, the runs
`keras.callbacks.TensorBoard` uses, so both line up in TensorBoard.
"""

import contextlib
import math
import os

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from keras_lk import _validation
from keras_lk.attach import iter_layers
from keras_lk.penalties import lk_penalty
from keras_lk.regularizers import LkRegularizer, unwrap
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


def _step_states(variable, recorder):
    """`(seen_positive, seen_negative)` masks of a tracked weight, or None."""
    if recorder is None or recorder.seen_positive is None:
        return None
    return recorder.seen_positive, recorder.seen_negative


def _window_counts(variable, seen_positive, seen_negative):
    """Stable zeros and sign flips since the last log; starts a new window.

    A weight is a stable zero when it was neither positive nor negative at
    any step of the window nor now (zero at every step since the last log),
    and flipped when it was seen both positive and negative: its sign
    changed at least once. The next window starts from the signs now.
    """
    positive = ops.greater(variable, 0)
    negative = ops.less(variable, 0)
    ever_positive = ops.logical_or(seen_positive, positive)
    ever_negative = ops.logical_or(seen_negative, negative)
    stable = ops.logical_and(ops.equal(variable, 0), ops.logical_not(
        ops.logical_or(ever_positive, ever_negative)))
    flipped = ops.logical_and(ever_positive, ever_negative)
    counts = (ops.sum(ops.cast(stable, "int32")),
              ops.sum(ops.cast(flipped, "int32")))
    seen_positive.assign(positive)
    seen_negative.assign(negative)
    return counts


class _WeightMeasure:
    """Histograms, zero counts, sign flips: one statistics pass per log."""

    def __init__(self, weights, tol, relative_tol, buckets, histograms,
                 zeros, step_stats=False):
        self.weights = weights
        self.tol = tol
        self.relative_tol = relative_tol
        self.buckets = buckets
        self.histograms = histograms
        self.zeros = zeros
        self.step_stats = step_stats

    def start(self, model, recorders):
        self._layers = _layers_and_weights(model, self.weights)
        variables = [v for _, weights in self._layers for _, v in weights]
        states = [_step_states(v, recorders.get(v)) for v in variables]
        key = [id(v) for v in variables] + [
            id(mask) for state in states for mask in (state or ())]
        if key == getattr(self, "_key", None):
            return  # the same weights as the last fit: keep the traced graph
        self._key = key

        # One graph for every weight: the reductions run on the device and
        # only the small results cross to the host.
        @tf.function(autograph=False, reduce_retracing=True)
        def statistics():
            results = []
            for variable, state in zip(variables, states):
                stats = weight_statistics(variable, self.tol,
                                          self.relative_tol, self.buckets)
                if state is not None:
                    stats["stable_zeros"], stats["sign_flips"] = (
                        _window_counts(variable, *state))
                results.append(stats)
            return results

        self._statistics = statistics

    def measure(self, report):
        if not self._layers:
            return
        results = iter(keras.tree.map_structure(
            ops.convert_to_numpy, self._statistics()))
        total = {"size": 0, "exact_zeros": 0, "near_zeros": 0, "nonfinite": 0,
                 "stable_zeros": 0, "sign_flips": 0, "tracked": 0,
                 "max_abs": 0.0}
        for path, weights in self._layers:
            layer = dict.fromkeys(total, 0)
            for name, _ in weights:
                stats = next(results)
                for key in ("size", "exact_zeros", "near_zeros"):
                    layer[key] += int(stats[key])
                if "stable_zeros" in stats:
                    layer["stable_zeros"] += int(stats["stable_zeros"])
                    layer["sign_flips"] += int(stats["sign_flips"])
                    layer["tracked"] += 1
                layer["nonfinite"] += int(stats["nan"]) + int(stats["inf"])
                layer["max_abs"] = max(layer["max_abs"],
                                       float(stats["max_abs"]))
                if self.histograms:
                    report.histograms[f"abs_weights/{path}/{name}"] = (
                        histogram_buckets(stats["abs_counts"], 0.0,
                                          stats["max_abs"]))
                    report.histograms[f"log10_abs_weights/{path}/{name}"] = (
                        log_histogram_buckets(stats["log_counts"],
                                              stats["log_lo"],
                                              stats["log_hi"]))
            for key in total:
                total[key] = (max(total[key], layer[key]) if key == "max_abs"
                              else total[key] + layer[key])
            if self.zeros:
                self._zero_scalars(report, path, layer)
        if self.zeros:
            self._zero_scalars(report, ALL_LAYERS, total)
            report.logs["zero_frac"] = _fraction(total["near_zeros"],
                                                 total["size"])
            if self.step_stats:
                report.logs["stable_zero_frac"] = _fraction(
                    total["stable_zeros"], total["size"])
                report.logs["sign_flip_frac"] = _fraction(
                    total["sign_flips"], total["size"])

    @staticmethod
    def _zero_scalars(report, name, counts):
        report.scalars[f"zero_count/{name}"] = counts["near_zeros"]
        report.scalars[f"zero_fraction/{name}"] = _fraction(
            counts["near_zeros"], counts["size"])
        report.scalars[f"exact_zero_count/{name}"] = counts["exact_zeros"]
        report.scalars[f"exact_zero_fraction/{name}"] = _fraction(
            counts["exact_zeros"], counts["size"])
        report.scalars[f"max_abs_weight/{name}"] = counts["max_abs"]
        if counts["tracked"]:
            for quantity in ("stable_zero", "sign_flip"):
                count = counts[f"{quantity}s"]
                report.scalars[f"{quantity}_count/{name}"] = count
                report.scalars[f"{quantity}_fraction/{name}"] = _fraction(
                    count, counts["size"])
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
    evaluation) and, with `step_stats`, two elementwise ORs
    (`seen_positive |= w > 0`, `seen_negative |= w < 0`), from which stable
    zeros and sign flips are counted at each log.
    """

    def __init__(self, regularizer, recorders, variable):
        self.regularizer = regularizer
        self.recorders = recorders
        self.sums = recorders.new_variable(np.zeros(2), "float64")
        self.counts = recorders.new_variable(np.zeros(2), "float64")
        self.seen_positive = self.seen_negative = None
        if recorders.step_stats:
            value = keras.ops.convert_to_numpy(variable)
            self.seen_positive = recorders.new_variable(value > 0, "bool")
            self.seen_negative = recorders.new_variable(value < 0, "bool")

    def __call__(self, x):
        value = self.regularizer(x)
        one_hot = ops.one_hot(self.recorders.mode, 2, dtype="float64")
        self.sums.assign_add(one_hot * ops.cast(value, "float64"))
        self.counts.assign_add(one_hot)
        if self.seen_positive is not None:
            self.seen_positive.assign(ops.logical_or(self.seen_positive,
                                                     ops.greater(x, 0)))
            self.seen_negative.assign(ops.logical_or(self.seen_negative,
                                                     ops.less(x, 0)))
        return value


class _Recorders:
    """The `_Recorder`s one callback put on a model's regularized weights."""

    def __init__(self, step_stats):
        self.step_stats = step_stats
        self.mode = None
        self.by_variable = {}

    def new_variable(self, value, dtype):
        return keras.Variable(value, dtype=dtype, trainable=False,
                              aggregation="only_first_replica")

    def start(self, model):
        """Wraps every regularized weight not yet wrapped by this callback."""
        strategy = getattr(model, "distribute_strategy", None)
        scope = (strategy.scope() if strategy is not None
                 else contextlib.nullcontext())
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


def _penalty_for_pull(regularizer, variable):
    """The penalty's value as a function of `variable`, for its gradient.

    A proximal LkRegularizer hides its gradient from training (the proximal
    step applies it); its pull is that of the same penalty as a gradient.
    """
    regularizer = unwrap(regularizer)
    if isinstance(regularizer, LkRegularizer):
        return lk_penalty(variable, regularizer.k, regularizer.alpha,
                          regularizer.reduction)
    return regularizer(variable)


def _check_pull_batch(pull_batch):
    if pull_batch is None:
        return None
    if not isinstance(pull_batch, (tuple, list)) or len(pull_batch) != 2:
        raise _validation.invalid(
            "pull_batch", "None or a tuple (x, y) of one batch", pull_batch)
    return tuple(pull_batch)


class _PenaltyMeasure:
    """The penalty that entered the loss, per layer, its share and pull."""

    def __init__(self, pull_batch=None):
        self.pull_batch = _check_pull_batch(pull_batch)

    def start(self, model, recorders):
        self._recorders = recorders
        self._layers = []
        pairs = []
        for path, weights in _layers_and_weights(model, "all"):
            layer = [(v, recorders.get(v)) for _, v in weights]
            layer = [(v, r) for v, r in layer if r is not None]
            if layer:
                self._layers.append((path, [r for _, r in layer]))
                pairs.append(layer)
        key = [id(model)] + [id(r) for layer in pairs for _, r in layer]
        if key != getattr(self, "_key", None):
            # Traced once per set of weights, not at every fit.
            self._key = key
            self._pull = self._pull_function(model, pairs)

    def _pull_function(self, model, pairs):
        """Mean |d penalty / dw| per layer, and the same of the data loss."""
        loss_fn = None
        if self.pull_batch is not None:
            loss = getattr(model, "loss", None)
            if not (isinstance(loss, str) or callable(loss)):
                raise ValueError(
                    "`pull_batch` needs a model compiled with a single loss "
                    f"(a name or a callable). Received: loss={loss!r}")
            loss_fn = keras.losses.get(loss) if isinstance(loss, str) else loss
            x, y = (ops.convert_to_tensor(part) for part in self.pull_batch)

        def mean_abs(grads):
            total = sum(ops.sum(ops.abs(g)) for g in grads if g is not None)
            size = sum(math.prod(g.shape) for g in grads if g is not None)
            return total / max(size, 1)

        @tf.function(autograph=False)
        def pull():
            penalty_pull, data_pull = [], []
            for layer in pairs:
                variables = [v for v, _ in layer]
                with tf.GradientTape() as tape:
                    penalty = sum(_penalty_for_pull(r.regularizer, v)
                                  for v, r in layer)
                penalty_pull.append(mean_abs(tape.gradient(penalty,
                                                           variables)))
            if loss_fn is not None:
                variables = [v for layer in pairs for v, _ in layer]
                with tf.GradientTape() as tape:
                    data_loss = ops.mean(loss_fn(y, model(x, training=False)))
                grads = tape.gradient(data_loss, variables)
                start = 0
                for layer in pairs:
                    data_pull.append(mean_abs(grads[start:start + len(layer)]))
                    start += len(layer)
            return penalty_pull, data_pull

        return pull

    def measure_pull(self, report):
        """Adds `penalty_pull/<layer>` (and its ratio to the data loss's)."""
        if not self._layers:
            return
        penalty_pull, data_pull = keras.tree.map_structure(
            ops.convert_to_numpy, self._pull())
        for index, (path, _) in enumerate(self._layers):
            report.scalars[f"penalty_pull/{path}"] = float(penalty_pull[index])
            if data_pull:
                report.scalars[f"penalty_pull_ratio/{path}"] = _fraction(
                    float(penalty_pull[index]), float(data_pull[index]))

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
        self._recorders = _Recorders(step_stats=(
            weight_measure is not None and weight_measure.step_stats))
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
        if self._penalties is not None or self._recorders.step_stats:
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
            self._penalties.measure_pull(report)
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
            if epoch_mode:
                self._penalties.measure_pull(report)
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


def _check_weight_options(tol, relative_tol, weights, buckets,
                          step_stats=False):
    tol = _validation.check_real("tol", tol, minimum=0.0,
                                 expected="a finite number >= 0")
    for name, value in (("relative_tol", relative_tol),
                        ("step_stats", step_stats)):
        if not isinstance(value, bool):
            raise _validation.invalid(name, "True or False", value)
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
        update_freq: `"epoch"` or an integer N: log every N batches.
            Defaults to `"epoch"`.
        tol: Near-zero threshold, `>= 0`. Defaults to `1e-3`.
        relative_tol: Whether `tol` is relative to each tensor's max|w|.
            Defaults to False.
        weights: `"kernels"` or `"all"`. Defaults to `"kernels"`.
        step_stats: Whether to track, at every training step on the device,
            the signs of regularized weights, for stable zeros and sign
            flips: two elementwise ORs per weight and step, about 9% of the
            step time of the benchmark MLP, hence opt-in. Defaults to
            False.

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
                 relative_tol=False, weights="kernels", step_stats=False):
        tol = _check_weight_options(tol, relative_tol, weights, 1, step_stats)
        self.tol = tol
        super().__init__(log_dir, update_freq, weight_measure=_WeightMeasure(
            weights, tol, relative_tol, 1, histograms=False, zeros=True,
            step_stats=step_stats))


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
    weight. At each training log it also writes `penalty_pull/<layer>`, the
    mean |d penalty / dw| over the layer's regularized weights (for a
    proximal LkRegularizer, the pull the same penalty would have as a
    gradient) and, with `pull_batch`, `penalty_pull_ratio/<layer>`: that
    over the mean |d data loss / dw| on the given batch. Needs the
    TensorFlow backend.

    Args:
        log_dir: Directory of the TensorBoard logs.
        update_freq: `"epoch"` or an integer N: log every N batches.
            Defaults to `"epoch"`.
        pull_batch: None, or a batch `(x, y)` on which to measure the data
            loss's gradient for `penalty_pull_ratio`. Defaults to None.

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

    def __init__(self, log_dir, update_freq="epoch", pull_batch=None):
        super().__init__(log_dir, update_freq,
                         penalty_measure=_PenaltyMeasure(pull_batch))


class LkMonitor(_Monitor):
    """`AbsWeightHistograms`, `ZeroCounts` and `RegularizationShare` in one.

    One statistics pass per log feeds both the histograms and the zero
    counts; one writer per run; one frequency. The `logs` dict gets
    `reg_loss`, `reg_share`, `zero_frac` (with `step_stats=True` also
    `stable_zero_frac`, `sign_flip_frac`) (and
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
        step_stats: Whether to track stable zeros and sign flips at every
            step (see `ZeroCounts`; it costs step time). Defaults to False.
        pull_batch: None, or a batch `(x, y)` for `penalty_pull_ratio` (see
            `RegularizationShare`). Defaults to None.

    Example:

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
                 buckets=DEFAULT_BUCKETS, step_stats=False, pull_batch=None):
        tol = _check_weight_options(tol, relative_tol, weights, buckets,
                                    step_stats)
        self.tol = tol
        super().__init__(
            log_dir, update_freq,
            weight_measure=_WeightMeasure(weights, tol, relative_tol, buckets,
                                          histograms=True, zeros=True,
                                          step_stats=step_stats),
            penalty_measure=_PenaltyMeasure(pull_batch))
