"""The article's study: one small model trained once per penalty setting.

Data: scikit-learn's bundled digits (8x8 images, 10 classes; nothing is
downloaded), split 70/30 with a fixed seed (540 test images). Model: an MLP
64-64-10 trained with SGD, every kernel regularized the same way. Each run is
logged with `LkMonitor` (and `keras.callbacks.TensorBoard` for accuracy)
into its own run directory, so `report` can read everything back.
"""

import math
import os
import sys
from dataclasses import dataclass

import keras

from keras_lk.monitoring.callbacks import LkMonitor
from keras_lk.penalties.optimizer import ProximalOptimizer
from keras_lk.penalties.regularizers import LkRegularizer
from keras_lk.study.suite_data import load_digits  # noqa: F401 (re-export)

DEFAULT_EPOCHS = 40
DEFAULT_ALPHA = 3.0   # mean reduction (the article's formula)
LEARNING_RATE = 0.1
BATCH_SIZE = 32
HIDDEN_UNITS = 64


@dataclass(frozen=True)
class Setting:
    """One run of the study."""

    name: str
    k: float = None         # None: no penalty
    proximal: bool = False

    @property
    def label(self):
        if self.k is None:
            return "no penalty"
        k = "inf" if math.isinf(self.k) else f"{self.k:g}"
        return f"L{k} {'proximal' if self.proximal else 'penalty'}"


SETTINGS = (
    Setting("none"),
    *(Setting(f"L{'inf' if math.isinf(k) else f'{k:g}'}", k)
      for k in (0.5, 1.0, 1.5, 2.0, 3.0, 10.0, math.inf)),
    Setting("L1_proximal", 1.0, proximal=True),
    Setting("L0.5_proximal", 0.5, proximal=True),
)


def build_model(setting, alpha, hidden, seed):
    regularizer = None
    if setting.k is not None:
        regularizer = LkRegularizer(k=setting.k, alpha=alpha,
                                    proximal=setting.proximal)
    return digits_mlp(regularizer, setting.name, hidden, seed)


def digits_mlp(regularizer, name, hidden, seed):
    """The study's MLP 64-hidden-10, `regularizer` on both kernels, SGD
    (wrapped in a ProximalOptimizer for a proximal regularizer)."""
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([
        keras.Input((64,)),
        keras.layers.Dense(hidden, activation="relu", name="hidden",
                           kernel_regularizer=regularizer),
        keras.layers.Dense(10, activation="softmax", name="output",
                           kernel_regularizer=regularizer),
    ], name=name.replace(".", "_"))  # PyTorch's modules refuse a "."
    optimizer = keras.optimizers.SGD(LEARNING_RATE)
    if regularizer is not None and regularizer.proximal:
        optimizer = ProximalOptimizer(optimizer)
    model.compile(optimizer, "sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    return model


class Progress(keras.callbacks.Callback):
    """One status line: which run, which epoch (and its loss, test accuracy).

    On a terminal the line is rewritten at every epoch; otherwise it is
    printed once, at the last one.
    """

    def __init__(self, index, total, label, epochs, stream=None,
                 metrics=True, width=16):
        super().__init__()
        self.prefix = f"[{index}/{total}] {label:<{width}}"
        self.epochs = epochs
        self.metrics = metrics
        self.stream = stream or sys.stdout
        self.live = self.stream.isatty()

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        line = f"{self.prefix} epoch {epoch + 1:>3}/{self.epochs}"
        if self.metrics:
            line += (f"  loss {logs.get('loss', float('nan')):.3f}  "
                     f"test acc {logs.get('val_accuracy', float('nan')):.3f}")
        if self.live:
            self.stream.write("\r" + line)
            if epoch + 1 == self.epochs:
                self.stream.write("\n")
        elif epoch + 1 == self.epochs:
            self.stream.write(line + "\n")
        self.stream.flush()


def run_study(logdir, epochs=DEFAULT_EPOCHS, seed=0, alpha=DEFAULT_ALPHA,
              hidden=HIDDEN_UNITS, settings=SETTINGS, stream=None):
    """Trains one model per setting, each logged into `logdir/<name>`.

    Returns:
        `{name: final logs}` of each run.
    """
    x_train, y_train, x_test, y_test = load_digits(seed)
    results = {}
    for index, setting in enumerate(settings, start=1):
        run_dir = os.path.join(logdir, setting.name)
        model = build_model(setting, alpha, hidden, seed)
        history = model.fit(
            x_train, y_train, batch_size=BATCH_SIZE, epochs=epochs,
            validation_data=(x_test, y_test), verbose=0, callbacks=[
                LkMonitor(run_dir, step_stats=True),
                keras.callbacks.TensorBoard(run_dir, write_graph=False),
                Progress(index, len(settings), setting.label, epochs,
                         stream)])
        results[setting.name] = {key: values[-1] for key, values
                                 in history.history.items()}
    return results
