"""What the monitoring callbacks measure, each behind one small protocol.

A measure:
- `start(model, recording)`: at the start of `fit` (once the model is built);
- `open(window)`: a window of steps starts (`"epoch"`, `"batch"` or
  `"validation"`); the measure marks where it starts;
- `measure(report)`: the window `report.window` ends; the measure adds its
  scalars, histograms and `logs` keys to `report` and marks the next
  window's start;
- `layout()`: its custom-scalars charts, `{title: [tag regex]}`.

`records` says whether it needs the compiled steps recorded (see
`recording`), `tracks_signs` whether with sign masks. Data flows one way:
weights and recorders -> statistics -> `Report` -> the callback's writer.
"""

import math

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from keras_lk import _validation, tags
from keras_lk.attach import iter_layers
from keras_lk.penalties import lk_penalty
from keras_lk.recording import EVAL, TRAIN, SignWindow, user_regularizer
from keras_lk.regularizers import LkRegularizer
from keras_lk.stats import (histogram_buckets, log_histogram_buckets,
                            sign_window_counts, weight_statistics)

WEIGHT_CHOICES = ("kernels", "all")
_KERNEL_NAMES = ("kernel", "embeddings")


class Report:
    """One window's values, on their way to TensorBoard and `logs`.

    Attributes:
        window: `"epoch"`, `"batch"` or `"validation"`.
        run: The TensorBoard run, `tags.TRAIN` or `tags.VALIDATION`.
        loss: The window's mean loss (penalty included), or None.
        written: Whether it goes to TensorBoard (else only to `logs`).
        scalars, histograms: `{tag: value}` for TensorBoard.
        logs: `{key: value}` for the `logs` dict, without the `val_` prefix.
    """

    def __init__(self, window, run, loss=None, written=True):
        self.window = window
        self.run = run
        self.loss = loss
        self.written = written
        self.scalars = {}
        self.histograms = {}
        self.logs = {}


def layers_and_weights(model, which):
    """`[(layer path, [(weight name, variable)])]`, each variable once.

    Args:
        model: A built `keras.Model`.
        which: `"kernels"` (kernels and embeddings) or `"all"`.
    """
    seen = set()
    result = []
    for path, layer in iter_layers(model):
        if isinstance(layer, keras.Model):
            continue  # its layers come on their own
        weights = []
        for variable in layer.weights:
            name = variable.name.split("/")[-1]
            if id(variable) in seen or (
                    which == "kernels" and not name.endswith(_KERNEL_NAMES)):
                continue
            seen.add(id(variable))
            weights.append((name, variable))
        if weights:
            result.append((path, weights))
    return result


def fraction(part, whole):
    return part / whole if whole else 0.0


@tf.function(autograph=False)
def _statistics(variables, signs, tol, relative, buckets):
    # Variables are arguments, not captures: one trace serves every model
    # of the same shapes and every callback, and fresh callbacks never
    # retrace. (Not `reduce_retracing`: with shapes relaxed, a variable
    # argument keeps the static shape of the first one traced.) The
    # reductions run on the device; small results come back.
    results = []
    for variable, sign in zip(variables, signs):
        stats = weight_statistics(variable, tol, relative, buckets)
        if sign is not None:
            (positive, negative), fold = sign[:2], sign[2]
            if fold is not None:
                positive = ops.logical_or(positive, fold[0])
                negative = ops.logical_or(negative, fold[1])
            stats["stable_zeros"], stats["sign_flips"] = sign_window_counts(
                variable, positive, negative)
        results.append(stats)
    return results


class ZeroOptions:
    """What `WeightMeasure` counts as zero, and whether it tracks signs."""

    def __init__(self, tol, relative_tol, step_stats):
        self.tol = tol
        self.relative_tol = relative_tol
        self.step_stats = step_stats


class WeightMeasure:
    """Histograms and zero counts of the weights: one pass per log.

    Args:
        weights: `"kernels"` or `"all"`.
        buckets: Buckets per histogram, or None for no histograms.
        zeros: A `ZeroOptions`, or None for no zero counts.
    """

    def __init__(self, weights, buckets=None, zeros=None):
        self.weights = weights
        self.buckets = buckets
        self.zeros = zeros
        self.tracks_signs = zeros is not None and zeros.step_stats
        self.records = self.tracks_signs
        self._layers = []
        self._recording = None
        self._recorders = []   # per weight: its recorder if tracked, or None
        self._windows = {}     # window name -> SignWindow

    def start(self, model, recording):
        self._layers = layers_and_weights(model, self.weights)
        self._recording = recording
        self._recorders = [
            recording.recorder(v) if self.tracks_signs else None
            for _, weights in self._layers for _, v in weights]
        self._windows = {}

    def _tracked(self):
        variables = [v for _, weights in self._layers for _, v in weights]
        return [(v, r) for v, r in zip(variables, self._recorders)
                if r is not None]

    def open(self, window):
        # Evaluation steps change no weight: validation needs no window.
        if self.tracks_signs and window != "validation":
            sign_window = self._windows.setdefault(window, SignWindow())
            self._recording.boundary(sign_window, self._tracked())

    def measure(self, report):
        if report.run != tags.TRAIN or not self._layers:
            return
        variables = [v.value for _, weights in self._layers for _, v in weights]
        window = self._windows.get(report.window)
        signs, tracked = [], 0
        for recorder in self._recorders:
            if recorder is None or window is None:
                signs.append(None)
                continue
            fold = None if window.positive is None else (
                window.positive[tracked], window.negative[tracked])
            signs.append((recorder.seen_positive.value,
                          recorder.seen_negative.value, fold))
            tracked += 1
        tol = self.zeros.tol if self.zeros else 0.0
        relative = bool(self.zeros and self.zeros.relative_tol)
        results = iter(keras.tree.map_structure(
            ops.convert_to_numpy, _statistics(
                variables, signs, np.float32(tol), relative,
                self.buckets or 1)))
        self.open(report.window)
        total = _Counts()
        for path, weights in self._layers:
            layer = _Counts()
            for name, _ in weights:
                stats = next(results)
                layer.add(stats)
                if self.buckets:
                    self._histograms(report, path, name, stats)
            total.merge(layer)
            if self.zeros:
                self._zero_scalars(report, path, layer)
        if self.zeros:
            self._zero_scalars(report, tags.ALL_LAYERS, total)
            report.logs[tags.LOG_ZERO_FRAC] = fraction(total.near_zeros,
                                                       total.size)
            if self.tracks_signs:
                report.logs[tags.LOG_STABLE_ZERO_FRAC] = fraction(
                    total.stable_zeros, total.size)
                report.logs[tags.LOG_SIGN_FLIP_FRAC] = fraction(
                    total.sign_flips, total.size)

    @staticmethod
    def _histograms(report, path, name, stats):
        report.histograms[tags.tag(tags.ABS_WEIGHTS, path, name)] = (
            histogram_buckets(stats["abs_counts"], 0.0, stats["max_abs"]))
        report.histograms[tags.tag(tags.LOG10_ABS_WEIGHTS, path, name)] = (
            log_histogram_buckets(stats["log_counts"], stats["log_lo"],
                                  stats["log_hi"]))

    @staticmethod
    def _zero_scalars(report, layer, counts):
        scalars = report.scalars
        scalars[tags.tag(tags.ZERO_COUNT, layer)] = counts.near_zeros
        scalars[tags.tag(tags.ZERO_FRACTION, layer)] = fraction(
            counts.near_zeros, counts.size)
        scalars[tags.tag(tags.EXACT_ZERO_COUNT, layer)] = counts.exact_zeros
        scalars[tags.tag(tags.EXACT_ZERO_FRACTION, layer)] = fraction(
            counts.exact_zeros, counts.size)
        scalars[tags.tag(tags.MAX_ABS_WEIGHT, layer)] = counts.max_abs
        if counts.tracked:
            for count_tag, fraction_tag, count in (
                    (tags.STABLE_ZERO_COUNT, tags.STABLE_ZERO_FRACTION,
                     counts.stable_zeros),
                    (tags.SIGN_FLIP_COUNT, tags.SIGN_FLIP_FRACTION,
                     counts.sign_flips)):
                scalars[tags.tag(count_tag, layer)] = count
                scalars[tags.tag(fraction_tag, layer)] = fraction(
                    count, counts.size)
        if counts.nonfinite:
            scalars[tags.tag(tags.NONFINITE_COUNT, layer)] = counts.nonfinite

    def layout(self):
        if not self.zeros:
            return {}
        return {"zero fraction (|w| <= tol), every layer":
                [tags.every_layer(tags.ZERO_FRACTION)],
                "exact zero fraction, every layer":
                [tags.every_layer(tags.EXACT_ZERO_FRACTION)]}


class _Counts:
    """Zero counts of one layer, or of all of them."""

    def __init__(self):
        self.size = self.exact_zeros = self.near_zeros = self.nonfinite = 0
        self.stable_zeros = self.sign_flips = self.tracked = 0
        self.max_abs = 0.0

    def add(self, stats):
        self.size += int(stats["size"])
        self.exact_zeros += int(stats["exact_zeros"])
        self.near_zeros += int(stats["near_zeros"])
        self.nonfinite += int(stats["nan"]) + int(stats["inf"])
        self.max_abs = max(self.max_abs, float(stats["max_abs"]))
        if "stable_zeros" in stats:
            self.stable_zeros += int(stats["stable_zeros"])
            self.sign_flips += int(stats["sign_flips"])
            self.tracked += 1

    def merge(self, other):
        for name in ("size", "exact_zeros", "near_zeros", "nonfinite",
                     "stable_zeros", "sign_flips", "tracked"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.max_abs = max(self.max_abs, other.max_abs)


def _regularized_layers(model, recording):
    """`[(layer path, [(variable, recorder)])]` of the recorded weights."""
    layers = []
    for path, weights in layers_and_weights(model, "all"):
        pairs = [(v, recording.recorder(v)) for _, v in weights]
        pairs = [(v, r) for v, r in pairs if r is not None]
        if pairs:
            layers.append((path, pairs))
    return layers


class PenaltyMeasure:
    """The penalty that entered the loss, per layer, and its share of it."""

    records = True
    tracks_signs = False

    def __init__(self):
        self._layers = []
        self._marks = {}

    def start(self, model, recording):
        self._layers = [(path, [r for _, r in pairs]) for path, pairs in
                        _regularized_layers(model, recording)]
        self._marks = {}

    def open(self, window):
        self._marks[window] = self._totals()

    def _totals(self):
        """`{path: (sums[2], counts[2])}` so far, as host arrays."""
        # Copies: a mark must not follow the variable.
        return {path: (sum(np.array(r.sums.numpy()) for r in recorders),
                       np.array(recorders[0].counts.numpy()))
                for path, recorders in self._layers}

    def measure(self, report):
        """The mean penalty per step of the window, and its share."""
        mark = self._marks.get(report.window)
        if mark is None:
            return
        now = self._totals()
        self._marks[report.window] = now
        mode = EVAL if report.run == tags.VALIDATION else TRAIN
        means = {}
        for path, (sums, counts) in now.items():
            old_sums, old_counts = mark.get(path, (np.zeros(2), np.zeros(2)))
            steps = counts[mode] - old_counts[mode]
            means[path] = (sums[mode] - old_sums[mode]) / steps if steps else 0.0
        total = float(sum(means.values()))
        loss = report.loss
        for path, value in means.items():
            report.scalars[tags.tag(tags.REG_LOSS, path)] = value
            if loss:
                report.scalars[tags.tag(tags.REG_SHARE, path)] = value / loss
        report.scalars[tags.tag(tags.REG_LOSS, tags.TOTAL)] = total
        report.logs[tags.LOG_REG_LOSS] = total
        if loss is not None:
            report.scalars[tags.DATA_LOSS] = loss - total
            report.scalars[tags.tag(tags.REG_SHARE, tags.TOTAL)] = fraction(
                total, loss)
            report.logs[tags.LOG_REG_SHARE] = fraction(total, loss)

    def layout(self):
        return {"penalty share of the loss, every layer":
                [tags.every_layer(tags.REG_SHARE)],
                "penalty in the loss, every layer":
                [tags.every_layer(tags.REG_LOSS)]}


def check_pull_batch(pull_batch):
    if pull_batch is None:
        return None
    if not isinstance(pull_batch, (tuple, list)) or len(pull_batch) != 2:
        raise _validation.invalid(
            "pull_batch", "None or a tuple (x, y) of one batch", pull_batch)
    return tuple(pull_batch)


@tf.function(autograph=False)
def _lk_gradient_sums(variables, alphas, exponents):
    """sum |d/dw lk_penalty(w)| per weight; `exponents`: (k, reduction)s.

    The penalty is `lk_penalty` itself, not the regularizer: a proximal
    LkRegularizer hides its gradient from training (the proximal step
    applies it), and its pull is that of the same penalty as a gradient.
    """
    sums = []
    for variable, alpha, (k, reduction) in zip(variables, alphas, exponents):
        with tf.GradientTape() as tape:
            tape.watch(variable)
            penalty = lk_penalty(variable, k, alpha, reduction)
        sums.append(ops.sum(ops.abs(tape.gradient(penalty, variable))))
    return sums


def _mean_abs(grads):
    total = sum(ops.sum(ops.abs(g)) for g in grads if g is not None)
    size = sum(math.prod(g.shape) for g in grads if g is not None)
    return total / max(size, 1)


class PullMeasure:
    """How hard the penalty pulls: mean |d penalty / dw| per layer.

    With `pull_batch=(x, y)`, also its ratio to the mean |d data loss / dw|
    on that batch. Measured at each written training log.
    """

    records = True
    tracks_signs = False

    def __init__(self, pull_batch=None):
        self.pull_batch = check_pull_batch(pull_batch)
        self._model = None
        self._layers = []
        self._loss = None

    def start(self, model, recording):
        self._model = model
        self._layers = [
            (path, [(v, user_regularizer(r.regularizer)) for v, r in pairs])
            for path, pairs in _regularized_layers(model, recording)]
        self._loss = self._loss_function(model)

    def _loss_function(self, model):
        if self.pull_batch is None:
            return None
        loss = getattr(model, "loss", None)
        if not (isinstance(loss, str) or callable(loss)):
            raise ValueError(
                "`pull_batch` needs a model compiled with a single loss "
                f"(a name or a callable). Received: loss={loss!r}")
        return keras.losses.get(loss) if isinstance(loss, str) else loss

    def open(self, window):
        pass

    def measure(self, report):
        if not (report.run == tags.TRAIN and report.written and self._layers):
            return
        data_pull = self._data_pull()
        sums = iter(self._gradient_sums())
        for index, (path, layer) in enumerate(self._layers):
            total = sum(next(sums) for _ in layer)
            pull = total / max(sum(math.prod(v.shape) for v, _ in layer), 1)
            report.scalars[tags.tag(tags.PENALTY_PULL, path)] = pull
            if data_pull:
                report.scalars[tags.tag(tags.PENALTY_PULL_RATIO, path)] = (
                    fraction(pull, data_pull[index]))

    def _gradient_sums(self):
        """sum |d penalty / dw| of every regularized weight, in order."""
        weights = [(v, reg) for _, layer in self._layers for v, reg in layer]
        lk = [(i, v, reg) for i, (v, reg) in enumerate(weights)
              if isinstance(reg, LkRegularizer)]
        sums = [None] * len(weights)
        if lk:
            # Traced once per set of shapes and exponents, whatever the
            # model or alpha: a sweep's fresh models and callbacks reuse it.
            results = _lk_gradient_sums(
                [v.value for _, v, _ in lk],
                [np.float32(reg.alpha) for _, _, reg in lk],
                tuple((reg.k, reg.reduction) for _, _, reg in lk))
            for (i, _, _), value in zip(lk, results):
                sums[i] = float(value)
        for i, (variable, regularizer) in enumerate(weights):
            if sums[i] is None:  # any other regularizer: eager
                with tf.GradientTape() as tape:
                    penalty = regularizer(variable)
                sums[i] = float(ops.sum(ops.abs(tape.gradient(
                    penalty, variable))))
        return sums

    def _data_pull(self):
        """Mean |d data loss / dw| per layer on `pull_batch`, or []."""
        if self._loss is None:
            return []
        x, y = (ops.convert_to_tensor(part) for part in self.pull_batch)
        variables = [v for _, layer in self._layers for v, _ in layer]
        with tf.GradientTape() as tape:
            data_loss = ops.mean(self._loss(y, self._model(x, training=False)))
        grads = tape.gradient(data_loss, variables)
        pulls, start = [], 0
        for _, layer in self._layers:
            pulls.append(float(_mean_abs(grads[start:start + len(layer)])))
            start += len(layer)
        return pulls

    def layout(self):
        return {}
