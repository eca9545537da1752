"""`MeasuringCallback`: the lifecycle every keras_lk monitoring callback shares.

It runs a list of measures (see `measures`) over windows of steps, has the
compiled steps recorded while `fit` runs (see `recording`), and writes what
the measures report to TensorBoard and the `logs` dict.
"""

import os

import keras
from keras import ops

from keras_lk.core import checks

from keras_lk.monitoring import tags
from keras_lk.core.backend import require_training
from keras_lk.monitoring.measures import Report
from keras_lk.monitoring.recording import Recording
from keras_lk.monitoring.sinks import EVAL, TRAIN
from keras_lk.monitoring.summary import RunWriter, check_writable


def _check_update_freq(update_freq):
    if update_freq == "epoch":
        return update_freq
    if update_freq == "batch":
        return 1
    if (isinstance(update_freq, bool) or not isinstance(update_freq, int)
            or update_freq < 1):
        raise checks.invalid(
            "update_freq",
            '"epoch", "batch" or an integer >= 1 (every N batches)',
            update_freq)
    return update_freq


def _check_log_dir(log_dir):
    if not isinstance(log_dir, (str, os.PathLike)) or not str(log_dir):
        raise checks.invalid("log_dir", "a directory path", log_dir)
    return os.fspath(log_dir)


def _is_chief(model):
    """False on the non-chief workers of multi-worker training."""
    strategy = getattr(model, "distribute_strategy", None)
    extended = getattr(strategy, "extended", None)
    return bool(getattr(extended, "should_checkpoint", True))


class MeasuringCallback(keras.callbacks.Callback):
    """Lifecycle shared by every keras_lk monitoring callback.

    Windows of steps: `"epoch"` (each epoch; written in epoch mode, else
    only to `logs`), `"batch"` (every `update_freq` steps, in batch mode)
    and `"validation"` (each evaluation). Every measure marks a window's
    start and reports at its end; this class writes the reports.
    """

    def __init__(self, log_dir, update_freq, measures):
        self._measures = list(measures)
        self._records = any(m.records for m in self._measures)
        # The weights are read at each log, and the penalty (and, with
        # step_stats, the signs) recorded at every step, on any backend that
        # trains: on JAX through a host callback, on PyTorch from the eager
        # step.
        require_training(f"keras_lk.{type(self).__name__}")
        super().__init__()
        self.log_dir = _check_log_dir(log_dir)
        self.update_freq = _check_update_freq(update_freq)
        self._tracks_signs = any(m.tracks_signs for m in self._measures)
        self._recording = None
        self._writers = {}
        self._chief = True
        self._layout_written = False
        self._started = False
        self._validating = False
        self._batches = 0          # steps of this epoch so far
        self._steps_done = 0       # steps of finished epochs of this fit
        self._loss_sum_done = 0.0  # sum of their per-step losses
        self._steps_mark = 0       # the same two at the last batch log
        self._loss_sum_mark = 0.0
        if self.update_freq != "epoch":
            # Only then: a batch hook turns off Keras's async dispatch.
            self.on_train_batch_end = self._on_train_batch_end

    def on_train_begin(self, logs=None):
        check_writable(self.log_dir)
        self._chief = _is_chief(self.model)
        self._writers = {}
        self._layout_written = False
        self._started = False
        self._validating = False
        self._batches = self._steps_done = self._steps_mark = 0
        self._loss_sum_done = self._loss_sum_mark = 0.0
        # A subclassed model is built by its first step: start after it.
        self._ensure_started()

    def _ensure_started(self):
        if not self._started and self.model.built:
            # Refusals first, while nothing is installed on the model.
            for measure in self._measures:
                if hasattr(measure, "check"):
                    measure.check(self.model)
            self._recording = Recording.of(self.model)
            if self._records:
                self._recording.install(track_signs=self._tracks_signs)
            for measure in self._measures:
                measure.start(self.model, self._recording)
            self._open("epoch")
            if self.update_freq != "epoch":
                self._open("batch")
            self._started = True
        return self._started

    def _open(self, window):
        for measure in self._measures:
            measure.open(window)

    def _measure(self, report):
        # On JAX, reading `model` puts the running fit's current weights
        # back into the variables (Keras's Callback does it).
        self.model  # noqa: B018
        for measure in self._measures:
            measure.measure(report)
        return report

    def on_train_batch_begin(self, batch, logs=None):
        self._ensure_started()

    def on_epoch_begin(self, epoch, logs=None):
        self._batches = 0
        if self._started:
            self._open("epoch")

    def _on_train_batch_end(self, batch, logs=None):
        logs = logs if logs is not None else {}
        # With steps_per_execution S, this runs every S steps: a window
        # closes at the first hook at least `update_freq` steps after the
        # last one.
        self._batches = batch + 1
        steps = self._steps_done + self._batches
        window_steps = steps - self._steps_mark
        if window_steps < self.update_freq or not self._ensure_started():
            return
        window_loss = None
        if "loss" in logs:
            # Keras's batch-level loss is the running mean of the epoch
            # so far: undo the averaging to get this window's mean.
            loss_sum = self._loss_sum_done + float(logs["loss"]) * self._batches
            window_loss = (loss_sum - self._loss_sum_mark) / window_steps
            self._loss_sum_mark = loss_sum
        self._steps_mark = steps
        report = self._measure(Report("batch", tags.TRAIN, window_loss))
        logs.update(report.logs)
        self._write(report, self._global_step(steps))

    def _global_step(self, steps):
        """The optimizer's iteration count, as keras.callbacks.TensorBoard."""
        iterations = getattr(getattr(self.model, "optimizer", None),
                             "iterations", None)
        if iterations is None:
            return steps
        return int(ops.convert_to_numpy(iterations))

    def on_test_begin(self, logs=None):
        if self._started:
            self._recording.set_mode(EVAL)
            self._open("validation")
            self._validating = True

    def on_test_end(self, logs=None):
        if self._started:
            self._recording.set_mode(TRAIN)

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        if not self._ensure_started():
            return
        epoch_mode = self.update_freq == "epoch"
        step = epoch if epoch_mode else self._global_step(None)
        train = self._measure(Report("epoch", tags.TRAIN, logs.get("loss"),
                                     written=epoch_mode))
        validation = None
        if "val_loss" in logs and self._validating:
            validation = self._measure(Report(
                "validation", tags.VALIDATION, logs["val_loss"]))
        if "loss" in logs and self._batches:
            self._loss_sum_done += float(logs["loss"]) * self._batches
        self._steps_done += self._batches
        logs.update(train.logs)
        if train.written:
            self._write(train, step)
        if validation is not None:
            logs.update({tags.VALIDATION_PREFIX + key: value
                         for key, value in validation.logs.items()})
            self._write(validation, step)

    def _write(self, report, step):
        if not self._chief or not (report.scalars or report.histograms):
            return
        writer = self._writers.get(report.run)
        if writer is None:
            writer = self._writers[report.run] = RunWriter(
                os.path.join(self.log_dir, report.run))
        if report.run == tags.TRAIN and not self._layout_written:
            charts = {}
            for measure in self._measures:
                charts.update(measure.layout())
            if charts:
                writer.layout({"keras_lk": charts})
            self._layout_written = True
        writer.scalars(report.scalars, step)
        writer.histograms(report.histograms, step)

    def on_train_end(self, logs=None):
        if self._started and self._records:
            self._recording.restore()
        for writer in self._writers.values():
            writer.close()
        self._writers = {}
