"""`keras-lk sweep`: Lk-proximal sparsity against gradual magnitude pruning.

On a model of the suite (`keras_lk.study.suite`: the digits MLP by
default), for each target sparsity and seed, every method reaches the
target on the same weights (`suite.prunable`) with the same model, data
split, epochs, optimizer and schedule (`keras_lk.sparsity.schedule`: the
cubic of gradual magnitude pruning, from the start of training to 3/4 of
it, then fine-tuning with the zero pattern fixed):

- `L1_proximal`, `L0.5_proximal` and `L0_proximal`: `LkRegularizer(k,
  alpha, proximal=True)` with `ProximalOptimizer` and `SparsityTarget`
  (its `allocation`); k = 0 is keras_lk's own gradual magnitude pruning;
- `magnitude`: the reference, gradual magnitude pruning (Zhu and Gupta,
  2017) written out here with no keras_lk in it: every `PRUNE_EVERY`
  steps the smallest |w| of all pruned weights together are masked to
  reach the scheduled sparsity, no penalty.

A `dense` run per seed gives the accuracy without pruning. Every run is
logged with TensorBoard's HParams plugin (model, method, target, seed;
test accuracy and sparsity), so the HParams dashboard shows the trade-off.
"""

import math
import os
import statistics
import sys
from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf
from tensorboard.plugins.hparams import api as hparams_api

from keras_lk.penalties.regularizers import LkRegularizer
from keras_lk.sparsity.schedule import polynomial
from keras_lk.sparsity.counting import exact_zeros
from keras_lk.sparsity.target import SparsityTarget
from keras_lk.study import suite, suite_data
from keras_lk.study.runs import DEFAULT_ALPHA, Progress

DEFAULT_MODEL = "digits_mlp"
DEFAULT_TARGETS = (0.5, 0.75, 0.9, 0.95)
DEFAULT_SEEDS = (0, 1, 2)
METHODS = ("L1_proximal", "L0.5_proximal", "L0_proximal", "magnitude")
K_OF = {"L1_proximal": 1.0, "L0.5_proximal": 0.5, "L0_proximal": 0.0}
PRUNE_EVERY = 10
END_FRACTION = 0.75   # the schedule ends at 3/4 of training


@dataclass(frozen=True)
class Run:
    method: str      # one of METHODS, or "dense"
    target: float    # 0 for dense
    seed: int

    @property
    def name(self):
        if self.method == "dense":
            return f"dense_seed{self.seed}"
        return f"{self.method}_t{self.target:g}_seed{self.seed}"


class MagnitudePruning(keras.callbacks.Callback):
    """Gradual magnitude pruning of `variables(model)`, globally.

    Every `every` steps until `end_step`, masks the smallest |w| of all the
    weights together up to the scheduled sparsity; the mask is applied after
    every step, so pruned weights stay zero, and is fixed from `end_step` on
    (fine-tuning).
    """

    def __init__(self, target, end_step, variables=suite.prunable,
                 every=PRUNE_EVERY, begin_step=0):
        super().__init__()
        self.target = target
        self.begin_step = begin_step
        self.end_step = end_step
        self.variables = variables
        self.every = every
        self._masks = None
        self._step = 0

    def on_train_begin(self, logs=None):
        self._kernels = self.variables(self.model)
        self._masks = [np.ones(tuple(k.shape), bool) for k in self._kernels]
        self._step = 0

    def on_train_batch_end(self, batch, logs=None):
        # On JAX, reading `model` puts the running step's weights back into
        # the variables, and makes the next step take the masked ones.
        self.model  # noqa: B018
        self._step += 1
        if self._step <= self.end_step and self._step % self.every == 0:
            self._prune(polynomial(self._step, self.begin_step, self.end_step,
                                   self.target))
        for kernel, mask in zip(self._kernels, self._masks):
            kernel.assign(np.where(mask, kernel.numpy(), 0.0))

    def _prune(self, fraction):
        values = [np.abs(k.numpy()) * m for k, m in zip(self._kernels,
                                                         self._masks)]
        flat = np.concatenate([v.ravel() for v in values])
        count = int(round(fraction * flat.size))
        if count == 0:
            return
        # The `count` smallest |w| (pruned ones are 0, so they stay pruned).
        order = np.argsort(flat, kind="stable")[:count]
        keep = np.ones(flat.size, bool)
        keep[order] = False
        start = 0
        for index, value in enumerate(values):
            self._masks[index] = keep[start:start + value.size].reshape(
                value.shape)
            start += value.size


def build(run, model=DEFAULT_MODEL, alpha=DEFAULT_ALPHA):
    """The run's compiled model: the suite entry, regularized for Lk."""
    regularizer = None
    if run.method in K_OF:
        regularizer = LkRegularizer(k=K_OF[run.method], alpha=alpha,
                                    proximal=True)
    return suite.MODELS[model].build(regularizer, run.seed)


def plan(targets=DEFAULT_TARGETS, seeds=DEFAULT_SEEDS, methods=METHODS):
    runs = [Run("dense", 0.0, seed) for seed in seeds]
    runs += [Run(method, target, seed) for target in targets
             for method in methods for seed in seeds]
    return runs


def _hparams_config(logdir, targets, methods):
    with tf.summary.create_file_writer(logdir).as_default():
        hparams_api.hparams_config(
            hparams=[hparams_api.HParam("model", hparams_api.Discrete(
                        sorted(suite.MODELS))),
                     hparams_api.HParam("method", hparams_api.Discrete(
                        ["dense", *methods])),
                     hparams_api.HParam("allocation", hparams_api.Discrete(
                        ["-", "global", "uniform", "normalized"])),
                     hparams_api.HParam("target", hparams_api.Discrete(
                        [0.0, *targets])),
                     hparams_api.HParam("seed", hparams_api.IntInterval(
                        0, 2**31 - 1))],
            metrics=[hparams_api.Metric("test_accuracy",
                                        display_name="test accuracy"),
                     hparams_api.Metric("sparsity",
                                        display_name="exact zeros")])


def run_sweep(logdir, model=DEFAULT_MODEL, targets=DEFAULT_TARGETS,
              seeds=DEFAULT_SEEDS, epochs=None, methods=METHODS,
              allocation="global", warmup=0.0, stream=None,
              fixed_order=False, protect="units"):
    """Trains every run of the sweep; returns `{Run: (accuracy, sparsity)}`.

    Args:
        logdir: TensorBoard log directory (a run directory per run).
        model: A name in `suite.MODELS`.
        targets, seeds: The target sparsities and seeds.
        epochs: Epochs per run; None for the model's default.
        methods: A subset of `METHODS`.
        allocation: `SparsityTarget`'s allocation for the Lk methods.
        warmup: The fraction of the steps trained dense before the
            schedule starts (every method alike).
        stream: Where progress goes (default stdout).
        fixed_order: Whether to train on the epochs' batches in an order
            drawn with numpy from the seed (`suite_data.fixed_order`: one
            fit of every epoch laid end to end, not shuffled by Keras), so
            that another framework given the same order sees the same
            batches (`benchmarks/tfmot_peer.py --fixed-order`). The
            schedule spans the same steps, up to the partial batch of each
            epoch, which is merged into the next.
        protect: `SparsityTarget`'s protection for the Lk methods.
    """
    stream = stream or sys.stdout
    entry = suite.MODELS[model]
    epochs = epochs or entry.epochs
    runs = plan(targets, seeds, methods)
    _hparams_config(logdir, targets, methods)
    data = {}
    results = {}
    for index, run in enumerate(runs, start=1):
        if run.seed not in data:
            data[run.seed] = entry.data(run.seed)
        x_train, y_train, x_test, y_test = data[run.seed]
        fit_epochs, shuffle = epochs, True
        if fixed_order:
            x_train, y_train = suite_data.fixed_order(x_train, y_train,
                                                      run.seed, epochs)
            fit_epochs, shuffle = 1, False
        steps = math.ceil(len(x_train) / entry.batch_size) * fit_epochs
        end = max(1, int(END_FRACTION * steps))
        begin = min(int(warmup * steps), end - 1)
        net = build(run, model)
        pruned = suite.prunable(net)
        callbacks = [Progress(index, len(runs), run.name, fit_epochs,
                              stream, metrics=False, width=26)]
        if run.method == "magnitude":
            callbacks.append(MagnitudePruning(run.target, end,
                                              begin_step=begin))
        elif run.method != "dense":
            covered = [v for v in net.trainable_weights
                       if getattr(v, "regularizer", None) is not None]
            if {id(v) for v in covered} != {id(v) for v in pruned}:
                raise RuntimeError(
                    f"suite model {model!r} regularizes "
                    f"{[v.path for v in covered]} but the sweep prunes "
                    f"{[v.path for v in pruned]}: the methods would not "
                    "prune the same weights")
            callbacks.append(SparsityTarget(run.target, begin_step=begin,
                                            end_step=end,
                                            allocation=allocation,
                                            protect=protect))
        net.fit(x_train, y_train, batch_size=entry.batch_size,
                epochs=fit_epochs, shuffle=shuffle, verbose=0,
                callbacks=callbacks)
        accuracy = float(net.evaluate(x_test, y_test, verbose=0)[1])
        zeros = exact_zeros(pruned)["fraction"]
        results[run] = (accuracy, zeros)
        with tf.summary.create_file_writer(
                os.path.join(logdir, run.name)).as_default():
            hparams_api.hparams({
                "model": model, "method": run.method, "target": run.target,
                "seed": run.seed, "allocation": allocation if run.method
                in K_OF else "-"}, trial_id=run.name)
            tf.summary.scalar("test_accuracy", accuracy, step=epochs)
            tf.summary.scalar("sparsity", zeros, step=epochs)
    return results


def summarize(results):
    """`{(method, target): (mean acc, std acc, mean sparsity, n)}`."""
    groups = {}
    for run, (accuracy, zeros) in results.items():
        groups.setdefault((run.method, run.target), []).append(
            (accuracy, zeros))
    summary = {}
    for key, values in groups.items():
        accuracies = [a for a, _ in values]
        summary[key] = (statistics.mean(accuracies),
                        statistics.stdev(accuracies) if len(values) > 1
                        else 0.0,
                        statistics.mean(z for _, z in values), len(values))
    return summary


def format_table(summary, methods=METHODS):
    """Mean ± std test accuracy (and the sparsity reached) per method."""
    targets = sorted({t for (m, t) in summary if m != "dense"})
    header = f"{'method':<16}" + "".join(f"{f'{t:.0%} zeros':>22}"
                                         for t in targets)
    lines = [header]
    for method in methods:
        cells = []
        for target in targets:
            mean, std, zeros, _ = summary[(method, target)]
            cells.append(f"{f'{mean:.3f} ± {std:.3f} ({zeros:.1%})':>22}")
        lines.append(f"{method:<16}" + "".join(cells))
    dense = summary.get(("dense", 0.0))
    if dense:
        lines.append(f"{'dense':<16}{f'{dense[0]:.3f} ± {dense[1]:.3f}':>22}"
                     "  (no pruning)")
    return "\n".join(lines)


def plot(summary, path, model=DEFAULT_MODEL, methods=METHODS):
    """Test accuracy against sparsity, one line per method; the dense line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6.5, 4.2))
    for method in methods:
        points = sorted((zeros, mean, std) for (m, _), (mean, std, zeros, _)
                        in summary.items() if m == method)
        axes.errorbar([p[0] for p in points], [p[1] for p in points],
                      yerr=[p[2] for p in points], marker="o", capsize=3,
                      label=method)
    dense = summary.get(("dense", 0.0))
    if dense:
        axes.axhline(dense[0], color="gray", linestyle="--", label="dense")
    axes.set_xlabel("exact zeros (fraction of the pruned weights)")
    axes.set_ylabel("test accuracy (mean ± std over seeds)")
    axes.set_title(f"{model}: Lk-proximal vs gradual magnitude pruning")
    axes.legend()
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
