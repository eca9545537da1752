"""`keras-lk sweep --structure units`: training toward whole units, against
one-shot pruning and Torch-Pruning run live.

On the suite's models (`digits_mlp`, `digits_conv`, `digits_resnet`,
`transformer`), for each target share of multiply-accumulates removed
(50% and 75% by default), each seed and each fit length, every method
removes the same number of units from every removable group: the least
uniform fraction that removes the target share (`uniform_fraction`). All
see the same data in the same order (`suite_data.fixed_order`) with the
same optimizer, batch size and schedule (the cubic of gradual magnitude
pruning over the first 3/4 of the steps, then fine-tuning):

- `group_k0`, `group_k0.5`, `group_k1`: `attach(model, LkRegularizer(k,
  proximal=True), structure="units")` with `ProximalOptimizer` and
  `SparsityTarget(structure="units", target_macs=...)`;
- `group_k0_global`, `group_k0_adaptive` (only when named in `methods`):
  group k = 0 with the units ranked across groups (`SparsityTarget`'s
  allocation "global" or "adaptive"), reaching the same share of MACs
  removed with units taken where the ranking puts them;
- `prune_units`: dense training for 3/4 of the steps, one-shot
  `prune_units` (group L2 norm, uniform), `shrink`, and fine-tuning for
  the rest: the same total steps;
- `tp_magnitude` and `tp_group_norm`: Torch-Pruning, run live in PyTorch
  on the same architecture written there, the same data, batches,
  learning rate and seeds (`torch_peer`): its `MagnitudePruner` and its
  `GroupNormPruner` with sparse training (`pruner.regularize` every step),
  both pruning progressively on the same cubic schedule (the Transformer
  in one step at its end; see `torch_peer`).

A `dense` run per seed gives the unpruned accuracy. Each run reports the
test accuracy, the multiply-accumulates left (a fraction of dense), the
parameters and the CPU latency of the pruned model (batch 32, median), and
is logged with TensorBoard's HParams plugin.
"""

import math
import os
import statistics
import sys
import time
from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf
from tensorboard.plugins.hparams import api as hparams_api

from keras_lk.attach.weights import attach
from keras_lk.penalties.optimizer import ProximalOptimizer
from keras_lk.penalties.regularizers import LkRegularizer
from keras_lk.export import strip
from keras_lk.sparsity.target import SparsityTarget
from keras_lk.structure.macs import macs
from keras_lk.structure.prune import prune_units
from keras_lk.sparsity.unit_run import uniform_fraction
from keras_lk.structure.surgery import shrink
from keras_lk.study import suite, suite_data

MODELS = ("digits_mlp", "digits_conv", "digits_resnet", "transformer")
KERAS_METHODS = ("group_k0", "group_k0.5", "group_k1", "prune_units")
PEER_METHODS = ("tp_magnitude", "tp_group_norm")
# The PyTorch runs' own unpruned baseline.
PEER_DENSE = "torch_dense"
METHODS = KERAS_METHODS + PEER_METHODS
# Not in the default sweep: group k = 0 with units ranked across groups
# (`SparsityTarget(allocation=...)`), at the same share of MACs removed.
ALLOCATION_METHODS = ("group_k0_global", "group_k0_adaptive")
ALL_METHODS = METHODS + ALLOCATION_METHODS
K_OF = {"group_k0": 0.0, "group_k0.5": 0.5, "group_k1": 1.0,
        "group_k0_global": 0.0, "group_k0_adaptive": 0.0}
ALLOCATION_OF = {"group_k0_global": "global",
                 "group_k0_adaptive": "adaptive"}
DEFAULT_TARGETS = (0.5, 0.75)
DEFAULT_SEEDS = (0, 1, 2)
# "full": the suite's epochs; "short": a fifth of them (at least 3).
FITS = ("full", "short")
END_FRACTION = 0.75
LATENCY_BATCH = 32


@dataclass(frozen=True)
class Run:
    model: str
    fit: str         # "full" or "short"
    method: str      # one of METHODS, or "dense"
    target: float    # the share of MACs removed; 0 for dense
    seed: int

    @property
    def name(self):
        head = f"{self.model}_{self.fit}_{self.method}"
        if not self.target:
            return f"{head}_seed{self.seed}"
        return f"{head}_f{self.target:g}_seed{self.seed}"


@dataclass
class Result:
    accuracy: float
    macs_fraction: float   # of the dense model's, counted by its framework
    parameters: int
    latency_ms: float      # the pruned model's, batch LATENCY_BATCH


ORDER = ("dense", *KERAS_METHODS, *ALLOCATION_METHODS, "torch_dense",
         *PEER_METHODS)


def epochs_of(model, fit):
    full = suite.MODELS[model].epochs
    return full if fit == "full" else max(3, full // 5)


def unreachable(models=MODELS, targets=DEFAULT_TARGETS):
    """`{(model, target): why}` for the targets a model cannot reach by
    removing units (the Transformer keeps its residual stream, so some
    MACs always remain)."""
    found = {}
    for model in models:
        net = suite.MODELS[model].build(None, 0)
        for target in targets:
            try:
                uniform_fraction(net, target)
            except ValueError as error:
                found[(model, target)] = str(error)
    return found


def plan(models=MODELS, fits=FITS, targets=DEFAULT_TARGETS,
         seeds=DEFAULT_SEEDS, methods=METHODS, skip=()):
    """The runs, without the `(model, target)` pairs in `skip`."""
    runs = []
    for model in models:
        for fit in fits:
            runs += [Run(model, fit, "dense", 0.0, seed) for seed in seeds]
            if set(methods) & set(PEER_METHODS):
                runs += [Run(model, fit, PEER_DENSE, 0.0, seed)
                         for seed in seeds]
            runs += [Run(model, fit, method, target, seed)
                     for target in targets for method in methods
                     for seed in seeds if (model, target) not in skip]
    return runs


def median_latency_ms(call, rounds=20):
    call()  # warm up (traces, allocations)
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def _fresh_optimizer(model):
    optimizer = model.optimizer
    return optimizer.__class__.from_config(optimizer.get_config())


def _recompile(model, optimizer):
    model.compile(optimizer, "sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    return model


def _measure(model, x_test, y_test, dense_macs):
    _recompile(model, keras.optimizers.SGD())
    accuracy = float(model.evaluate(x_test, y_test, verbose=0)[1])
    batch = x_test[:LATENCY_BATCH]
    latency = median_latency_ms(lambda: model.predict_on_batch(batch))
    return Result(accuracy, macs(model) / dense_macs, model.count_params(),
                  latency)


def run_keras(run, data, stream=None):
    """One keras_lk run (or dense); returns its `Result`."""
    entry = suite.MODELS[run.model]
    x_train, y_train, x_test, y_test = data
    epochs = epochs_of(run.model, run.fit)
    x_train, y_train = suite_data.fixed_order(x_train, y_train, run.seed,
                                              epochs)
    steps = math.ceil(len(x_train) / entry.batch_size)
    end = max(1, int(END_FRACTION * steps))
    net = entry.build(None, run.seed)
    dense_macs = macs(net)
    fit = dict(batch_size=entry.batch_size, shuffle=False, verbose=0)
    if run.method == "dense":
        net.fit(x_train, y_train, epochs=1, **fit)
        return _measure(net, x_test, y_test, dense_macs)
    if run.method == "prune_units":
        split = end * entry.batch_size
        net.fit(x_train[:split], y_train[:split], epochs=1, **fit)
        fraction, _, _ = uniform_fraction(net, run.target)
        prune_units(net, fraction)
        small = _recompile(shrink(net), _fresh_optimizer(net))
        small.fit(x_train[split:], y_train[split:], epochs=1, **fit)
        return _measure(small, x_test, y_test, dense_macs)
    optimizer = _fresh_optimizer(net)
    attach(net, LkRegularizer(K_OF[run.method], 0.0, proximal=True),
           structure="units")
    _recompile(net, ProximalOptimizer(optimizer))
    net.fit(x_train, y_train, epochs=1, callbacks=[SparsityTarget(
        structure="units", target_macs=run.target, begin_step=0,
        end_step=end, allocation=ALLOCATION_OF.get(run.method))], **fit)
    small = strip(net, shrink=True)
    sample = x_test[:64]
    gap = float(np.max(np.abs(small.predict(sample, verbose=0)
                              - net.predict(sample, verbose=0))))
    if gap > 1e-4:
        raise RuntimeError(f"{run.name}: the shrunk model's outputs differ "
                           f"from the trained model's by {gap}")
    return _measure(small, x_test, y_test, dense_macs)


def run_one(run, data):
    if run.method in (*PEER_METHODS, PEER_DENSE):
        from keras_lk.study import torch_peer
        fraction, counts, _ = uniform_fraction(
            suite.MODELS[run.model].build(None, run.seed), run.target)
        return Result(*torch_peer.run(run, data, fraction,
                                      epochs_of(run.model, run.fit), counts))
    return run_keras(run, data)


def _hparams_config(logdir, targets):
    with tf.summary.create_file_writer(logdir).as_default():
        hparams_api.hparams_config(
            hparams=[hparams_api.HParam("model", hparams_api.Discrete(
                        list(MODELS))),
                     hparams_api.HParam("fit", hparams_api.Discrete(
                        list(FITS))),
                     hparams_api.HParam("method", hparams_api.Discrete(
                        ["dense", PEER_DENSE, *ALL_METHODS])),
                     hparams_api.HParam("target_macs", hparams_api.Discrete(
                        [0.0, *targets])),
                     hparams_api.HParam("seed", hparams_api.IntInterval(
                        0, 2**31 - 1))],
            metrics=[hparams_api.Metric("test_accuracy",
                                        display_name="test accuracy"),
                     hparams_api.Metric("macs_fraction",
                                        display_name="MACs left"),
                     hparams_api.Metric("parameters"),
                     hparams_api.Metric("latency_ms",
                                        display_name="latency (ms)")])


def run_sweep(logdir, models=MODELS, fits=FITS, targets=DEFAULT_TARGETS,
              seeds=DEFAULT_SEEDS, methods=METHODS, stream=None, skip=()):
    """Trains every run but those of the `(model, target)` pairs in
    `skip` (see `unreachable`); returns `{Run: Result}`."""
    stream = stream or sys.stdout
    runs = plan(models, fits, targets, seeds, methods, skip)
    _hparams_config(logdir, targets)
    data, results = {}, {}
    for index, run in enumerate(runs, start=1):
        key = (run.model, run.seed)
        if key not in data:
            data[key] = suite.MODELS[run.model].data(run.seed)
        start = time.perf_counter()
        result = run_one(run, data[key])
        results[run] = result
        stream.write(
            f"[{index}/{len(runs)}] {run.name}: accuracy "
            f"{result.accuracy:.3f}, MACs {result.macs_fraction:.3f}, "
            f"{result.parameters} parameters, {result.latency_ms:.2f} ms "
            f"({time.perf_counter() - start:.0f} s)\n")
        stream.flush()
        with tf.summary.create_file_writer(
                os.path.join(logdir, run.name)).as_default():
            hparams_api.hparams({
                "model": run.model, "fit": run.fit, "method": run.method,
                "target_macs": run.target, "seed": run.seed},
                trial_id=run.name)
            for name, value in (("test_accuracy", result.accuracy),
                                ("macs_fraction", result.macs_fraction),
                                ("parameters", result.parameters),
                                ("latency_ms", result.latency_ms)):
                tf.summary.scalar(name, value, step=0)
    return results


def summarize(results):
    """`{(model, fit, method, target): {field: (mean, std)}, n}`."""
    groups = {}
    for run, result in results.items():
        groups.setdefault((run.model, run.fit, run.method, run.target),
                          []).append(result)
    summary = {}
    for key, values in groups.items():
        cells = {}
        for field in ("accuracy", "macs_fraction", "parameters",
                      "latency_ms"):
            numbers = [float(getattr(v, field)) for v in values]
            cells[field] = (statistics.mean(numbers),
                            statistics.stdev(numbers) if len(numbers) > 1
                            else 0.0)
        summary[key] = (cells, len(values))
    return summary


def format_table(summary):
    """One block per model and fit: a row per method and target."""
    lines = []
    keys = sorted({(m, f) for (m, f, _, _) in summary},
                  key=lambda k: (MODELS.index(k[0]) if k[0] in MODELS else 9,
                                 FITS.index(k[1])))
    for model, fit in keys:
        lines.append(f"{model}, {fit} fit")
        lines.append(f"  {'method':<14}{'MACs removed':>13}{'accuracy':>18}"
                     f"{'MACs left':>11}{'parameters':>12}{'ms/batch':>10}")
        rows = sorted(((method, target) for (m, f, method, target)
                       in summary if (m, f) == (model, fit)),
                      key=lambda r: (r[1], ORDER.index(r[0])))
        for method, target in rows:
            cells, count = summary[(model, fit, method, target)]
            accuracy = cells["accuracy"]
            lines.append(
                f"  {method:<14}{(f'{target:.0%}' if target else '-'):>13}"
                f"{f'{accuracy[0]:.3f} ± {accuracy[1]:.3f}':>18}"
                f"{cells['macs_fraction'][0]:>11.3f}"
                f"{cells['parameters'][0]:>12.0f}"
                f"{cells['latency_ms'][0]:>10.2f}")
        lines.append("")
    return "\n".join(lines)
