"""Measures of the penalty: its share of the loss, and its pull."""

import math

import keras
import numpy as np
from keras import ops

from keras_lk.core import checks, backend

from keras_lk.monitoring import tags
from keras_lk.monitoring.measures import fraction, layers_and_weights
from keras_lk.penalties.math import lk_penalty
from keras_lk.monitoring.sinks import EVAL, TRAIN
from keras_lk.penalties.regularizers import LkRegularizer
from keras_lk.core.chain import unwrap


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
        backend.current().wait()
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
        raise checks.invalid(
            "pull_batch", "None or a tuple (x, y) of one batch", pull_batch)
    return tuple(pull_batch)


def _penalty_function(regularizer):
    """`(key, function(w, alpha), alpha)` whose gradient is the pull of
    `regularizer`: for an LkRegularizer, `lk_penalty` itself (a proximal
    one hides its gradient from training, since the proximal step applies
    it, and its pull is that of the same penalty as a gradient); any other
    regularizer as it is."""
    if isinstance(regularizer, LkRegularizer):
        k, reduction = regularizer.k, regularizer.reduction
        return (("lk", k, reduction),
                lambda w, alpha: lk_penalty(w, k, alpha, reduction),
                np.float32(regularizer.alpha))
    return (("other", id(regularizer)), lambda w, alpha: regularizer(w),
            np.float32(0.0))


def _gradient_sums(weights):
    """sum |d penalty / dw| of `[(variable, regularizer)]`, compiled once
    per set of shapes and penalties (alphas are arguments, so a sweep's
    fresh models and callbacks reuse it)."""
    seam = backend.current()
    keys, functions, alphas = zip(*(_penalty_function(r) for _, r in weights))
    key = ("pull", keys, tuple(tuple(v.shape) for v, _ in weights))

    def sums(values, alphas):
        # k = 0 (a count of nonzeros) has no gradient: zeros.
        return [ops.sum(ops.abs(seam.gradient(function, value, alpha)))
                for function, value, alpha in zip(functions, values, alphas)]

    compiled = seam.cached(key, lambda: seam.compile_pass(sums))
    return [float(value) for value in compiled(
        [v.value for v, _ in weights],
        [ops.convert_to_tensor(alpha) for alpha in alphas])]


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
            (path, [(v, unwrap(r.regularizer)) for v, r in pairs])
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
        return _gradient_sums([(v, reg) for _, layer in self._layers
                               for v, reg in layer])

    def _data_pull(self):
        """Mean |d data loss / dw| per layer on `pull_batch`, or []."""
        if self._loss is None:
            return []
        x, y = (ops.convert_to_tensor(part) for part in self.pull_batch)
        variables = [v for _, layer in self._layers for v, _ in layer]
        grads = backend.current().model_gradients(
            self._model, self._loss, x, y, variables)
        pulls, start = [], 0
        for _, layer in self._layers:
            pulls.append(float(_mean_abs(grads[start:start + len(layer)])))
            start += len(layer)
        return pulls

    def layout(self):
        return {}
