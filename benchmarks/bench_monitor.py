"""Cost of LkMonitor: fit wall time, and one statistics pass at scale.

Run: `.venv/bin/python benchmarks/bench_monitor.py [--rounds R]`

1. Fit wall time on the regularizer benchmark's MLP (LkRegularizer k=1 on
   every kernel), side by side, alternated: no monitor; LkMonitor at
   update_freq="epoch" (default, and with the opt-in per-step sign tracking
   `step_stats=True`) and at 10; keras.callbacks.TensorBoard(
   histogram_freq=1). Targets: <= 1.03x no-monitor at "epoch", <= 1.15x at
   10.
2. The sweep pattern: a fresh LkMonitor for every fit (2 epochs of 100
   steps each), as in a hyperparameter sweep or a notebook cell run again,
   against no monitor; and plain fits of a model that has had 17 monitored
   fits against those of a model that never had one. Targets: <= 1.03x at
   "epoch", <= 1.15x every 10 batches, <= 1.05x after monitored fits.
3. One statistics pass (`weight_statistics`: both histograms and all
   counts, compiled as the callbacks run it) over 1e6, 1e7 and 5e7 weights,
   against one plain NumPy reduction over the same array
   (`np.abs(w).max()`), and TensorBoard's own histogram op
   (`tf.summary.histogram`) where it fits in memory. Each is run in a fresh
   process so that its peak memory (max RSS) above the weights is its own:
   "extra MB" for a log after the first, "1st log MB" for the first one
   (tracing and XLA compilation, once). Targets: the pass <= 3x the NumPy
   reduction, its extra memory <= 64 MB whatever the size.
4. Many tensors (200 kernels of 500x500, 50 of 1000x1000, 12 of
   2048x2048): the first log (tracing and compiling included) and later
   logs, against a NumPy pass (`np.abs(w).max()` per tensor, run after
   each log in the same process) and the eager `tf.summary.histogram` per
   weight that keras.callbacks.TensorBoard(histogram_freq=1) runs.
   Targets: first log <= 3 s; later <= 4x NumPy.
5. `--tables deep` (not run by default): fit wall time of a deep, narrow
   MLP (41 regularized kernels of 64x64, 500 steps of batch 128), no
   monitor against LkMonitor at "epoch", with and without `step_stats`:
   what recording costs per step when a model has many small weights (on
   JAX, one host callback per step whatever their number).
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import common

SIZES = (10**6, 10**7, 5 * 10**7)
TABLES = ("fit", "sweep", "stats", "many")
OPTIONAL_TABLES = ("deep",)
TB_HISTOGRAM_MAX_SIZE = 10**7  # its N x 30 float64 one-hot: 2.4 GB at 1e7


def on_device(array):
    """What the monitors pass on this backend: a tf.Variable's value on
    TensorFlow, a device array on JAX and PyTorch."""
    import keras
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf
        return tf.Variable(array)
    return keras.ops.convert_to_tensor(array)


def max_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(kind, size, repeats):
    """Times `kind` over `size` weights; prints JSON."""
    import keras
    import numpy as np
    import tensorflow as tf

    # The statistics function the monitors run (traced, XLA-fused blocks).
    from keras_lk.monitoring.measures.weights import _compiled_statistics, _per_weight

    if kind.startswith("many_"):
        # "many_<kind>": `size` encodes count x side (e.g. 200x500).
        count, side = (int(x) for x in MANY[size])
        rng = np.random.default_rng(0)
        arrays = [rng.standard_normal((side, side)).astype("float32")
                  for _ in range(count)]
        return many_child(kind[5:], arrays, repeats)
    weights = np.random.default_rng(0).standard_normal(size).astype("float32")
    variable = on_device(weights)
    if kind == "numpy":
        def run():
            return np.abs(weights).max()
    elif kind == "keras_lk":
        def run():
            stats = _compiled_statistics()(
                [variable], [None], np.float32(1e-3), relative=False,
                buckets=30)
            # To the host, as the monitors do (on JAX this also waits for
            # the asynchronous dispatch to finish).
            return _per_weight([variable], *keras.tree.map_structure(
                keras.ops.convert_to_numpy, stats))
    else:
        writer = tf.summary.create_file_writer(tempfile.mkdtemp())

        @tf.function(autograph=False)
        def histogram():
            with writer.as_default():
                return tf.summary.histogram("w", variable, step=0)

        def run():
            return histogram()
    base = max_rss_mb()
    run()  # trace (and compile) and warm up
    first = max_rss_mb()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    # Peak memory of later logs: above what the first one left (a one-time
    # trace and XLA compilation of some 70-100 MB).
    print(json.dumps({"seconds": statistics.median(times),
                      "peak_mb": max(0.0, max_rss_mb() - first),
                      "first_mb": max(0.0, first - base),
                      "weights_mb": weights.nbytes / 2**20}))


# The "many tensors" cases: count x (side x side) kernels.
MANY = {0: (200, 500), 1: (50, 1000), 2: (12, 2048)}


def many_child(kind, arrays, repeats):
    """First log and later logs over many tensors; prints JSON."""
    import keras
    import numpy as np
    import tensorflow as tf

    from keras_lk.monitoring.measures.weights import _compiled_statistics, _per_weight

    variables = [on_device(a) for a in arrays]

    def numpy_pass():
        return [np.abs(np.asarray(v)).max() for v in variables]

    if kind == "numpy":
        run = numpy_pass
    elif kind == "keras_lk":
        def run():
            values = list(variables)
            stacked, single, signs = _compiled_statistics()(
                values, [None] * len(values), np.float32(1e-3),
                relative=False, buckets=30)
            return _per_weight(values, *keras.tree.map_structure(
                keras.ops.convert_to_numpy, (stacked, single, signs)))
    else:
        # What keras.callbacks.TensorBoard(histogram_freq=1) runs at every
        # epoch end: an eager histogram summary per weight.
        writer = tf.summary.create_file_writer(tempfile.mkdtemp())

        def run():
            with writer.as_default():
                for index, variable in enumerate(variables):
                    tf.summary.histogram(f"w{index}", variable, step=0)
            writer.flush()
    start = time.perf_counter()
    run()
    first = time.perf_counter() - start
    # Side by side: the NumPy pass over the same tensors runs after each
    # log, and the ratio is the median of the rounds' ratios.
    times, numpy_times = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
        start = time.perf_counter()
        numpy_pass()
        numpy_times.append(time.perf_counter() - start)
    print(json.dumps({
        "first": first, "seconds": statistics.median(times),
        "ratio": statistics.median(t / n for t, n in zip(times,
                                                         numpy_times)),
        "best": min(times) / min(numpy_times)}))


def many_tensors_table(repeats):
    print("\nMany tensors: one log over every kernel, each case in a fresh "
          "process (first log: tracing and compiling included; later: "
          "median; vs the NumPy pass, run right after each log in the same "
          "process: paired, the median of the rounds' ratios; best, the "
          "fastest log over the fastest NumPy pass)")
    print(f"{'kernels':>14} {'what':<26}{'1st log s':>10}{'later ms':>10}"
          f"{'paired':>10}{'best':>8}")
    for case, (count, side) in MANY.items():
        numpy = measure("many_numpy", case, repeats)
        for name, kind in (("numpy abs().max() each", "many_numpy"),
                           ("keras_lk statistics", "many_keras_lk"),
                           ("tf.summary.histogram each", "many_tensorboard")):
            row = numpy if kind == "many_numpy" else measure(kind, case,
                                                             repeats)
            print(f"{f'{count}x{side}x{side}':>14} {name:<26}"
                  f"{row['first']:>10.2f}{row['seconds'] * 1e3:>10.1f}"
                  f"{row['ratio']:>9.2f}x{row['best']:>7.2f}x")


def measure(kind, size, repeats):
    result = subprocess.run(
        [sys.executable, __file__, "--child", kind, str(size), str(repeats)],
        capture_output=True, text=True, check=True,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    return json.loads(result.stdout.strip().splitlines()[-1])


def statistics_pass_table(repeats):
    print("\nOne statistics pass (median of repeats; peak = max RSS "
          "above the process with its weights)")
    print(f"{'weights':>10} {'what':<22}{'ms':>10}{'vs numpy':>10}"
          f"{'extra MB':>10}{'1st log MB':>12}{'weights MB':>12}")
    for size in SIZES:
        numpy = measure("numpy", size, repeats)
        rows = [("numpy abs().max()", numpy),
                ("keras_lk statistics", measure("keras_lk", size, repeats))]
        if size <= TB_HISTOGRAM_MAX_SIZE:
            rows.append(("tf.summary.histogram", measure("tensorboard", size,
                                                         repeats)))
        for name, row in rows:
            ratio = row["seconds"] / numpy["seconds"]
            print(f"{size:>10.0e} {name:<22}{row['seconds'] * 1e3:>10.1f}"
                  f"{ratio:>9.2f}x{row['peak_mb']:>10.0f}"
                  f"{row['first_mb']:>12.0f}{row['weights_mb']:>12.0f}")


def _fit_times(variants, x, y, reg, epochs, rounds):
    """Fit wall times of `{name: callbacks}`, each on its own MLP, traced
    first, then alternated for `rounds` rounds."""
    runs = {name: (common.make_mlp(reg), callbacks)
            for name, callbacks in variants.items()}
    for model, callbacks in runs.values():  # trace; not timed
        model.fit(x, y, batch_size=common.BATCH, epochs=1, verbose=0,
                  callbacks=callbacks)

    def run_once(run):
        model, callbacks = run
        start = time.perf_counter()
        model.fit(x, y, batch_size=common.BATCH, epochs=epochs, verbose=0,
                  callbacks=callbacks)
        return [time.perf_counter() - start]

    return common.alternate(runs, run_once, rounds)


def fit_table(rounds, epochs, steps):
    import keras

    import keras_lk

    x, y = common.make_data(steps)
    log_root = tempfile.mkdtemp()
    reg = keras_lk.LkRegularizer(k=1.0, alpha=1e-4)
    if keras.backend.backend() != "tensorflow":
        return stateless_fit_table(rounds, epochs, x, y, reg, log_root)
    variants = {
        "no monitor": [],
        "LkMonitor epoch": [keras_lk.LkMonitor(f"{log_root}/epoch")],
        "LkMonitor epoch step_stats": [keras_lk.LkMonitor(
            f"{log_root}/epoch_steps", step_stats=True)],
        "LkMonitor every 10": [keras_lk.LkMonitor(f"{log_root}/ten",
                                                  update_freq=10)],
        "keras TensorBoard hist=1": [keras.callbacks.TensorBoard(
            f"{log_root}/keras", histogram_freq=1)],
    }
    samples = _fit_times(variants, x, y, reg, epochs, rounds)
    print(f"fit wall time: {epochs} epochs x {steps} steps, batch "
          f"{common.BATCH}, {rounds} rounds alternated")
    common.report(samples, "no monitor", {"LkMonitor epoch": 1.03,
                                          "LkMonitor every 10": 1.15})


def stateless_fit_table(rounds, epochs, x, y, reg, log_root):
    """The fit table on JAX and PyTorch, whose recorders hand each step's
    values to the host: LkMonitor, and the two monitors that only read
    the weights at each log (AbsWeightHistograms and ZeroCounts)."""
    import keras

    import keras_lk

    def weights(name, **kwargs):
        return [keras_lk.AbsWeightHistograms(f"{log_root}/{name}", **kwargs),
                keras_lk.ZeroCounts(f"{log_root}/{name}", **kwargs)]

    variants = {"no monitor": [],
                "LkMonitor epoch": [keras_lk.LkMonitor(f"{log_root}/lk")],
                "LkMonitor every 10": [keras_lk.LkMonitor(
                    f"{log_root}/lk10", update_freq=10)],
                "histograms + zeros epoch": weights("epoch"),
                "histograms + zeros every 10": weights("ten",
                                                       update_freq=10)}
    samples = _fit_times(variants, x, y, reg, epochs, rounds)
    print(f"fit wall time on {keras.backend.backend()}: {epochs} epochs x "
          f"{len(x) // common.BATCH}"
          f" steps, batch {common.BATCH}, {rounds} rounds alternated")
    common.report(samples, "no monitor", {
        "LkMonitor epoch": 1.03, "LkMonitor every 10": 1.15,
        "histograms + zeros epoch": 1.03,
        "histograms + zeros every 10": 1.15})


def deep_table(rounds, layers=40, width=64, steps=500):
    import keras
    import numpy as np

    import keras_lk

    rng = np.random.default_rng(0)
    x = rng.standard_normal((steps * common.BATCH, width)).astype("float32")
    y = rng.integers(0, common.CLASSES, size=len(x))
    reg = keras_lk.LkRegularizer(k=1.0, alpha=1e-4)

    def deep_mlp():
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((width,))] + [
            keras.layers.Dense(width, activation="relu",
                               kernel_regularizer=reg)
            for _ in range(layers)] + [
            keras.layers.Dense(common.CLASSES, kernel_regularizer=reg)])
        model.compile("sgd", "sparse_categorical_crossentropy")
        return model

    log_root = tempfile.mkdtemp()
    variants = {
        "no monitor": lambda: [],
        "LkMonitor epoch": lambda: [keras_lk.LkMonitor(
            tempfile.mkdtemp(dir=log_root))],
        "LkMonitor epoch step_stats": lambda: [keras_lk.LkMonitor(
            tempfile.mkdtemp(dir=log_root), step_stats=True)],
    }
    runs = {name: (deep_mlp(), make) for name, make in variants.items()}
    for model, make in runs.values():  # trace; not timed
        model.fit(x, y, batch_size=common.BATCH, verbose=0, callbacks=make())

    def run_once(run):
        model, make = run
        callbacks = make()
        start = time.perf_counter()
        model.fit(x, y, batch_size=common.BATCH, verbose=0,
                  callbacks=callbacks)
        return [time.perf_counter() - start]

    samples = common.alternate(runs, run_once, rounds)
    print(f"\ndeep MLP on {keras.backend.backend()}: {layers + 1} regularized "
          f"kernels, {steps} steps, batch {common.BATCH}, {rounds} rounds "
          "alternated")
    common.report(samples, "no monitor", {"LkMonitor epoch": 1.03})


def sweep_table(rounds, epochs, steps, monitored_fits=17):
    import keras_lk

    x, y = common.make_data(steps)
    log_root = tempfile.mkdtemp()
    reg = keras_lk.LkRegularizer(k=1.0, alpha=1e-4)
    fresh = {
        "no monitor": lambda: [],
        "fresh LkMonitor epoch": lambda: [keras_lk.LkMonitor(
            tempfile.mkdtemp(dir=log_root))],
        "fresh LkMonitor every 10": lambda: [keras_lk.LkMonitor(
            tempfile.mkdtemp(dir=log_root), update_freq=10)],
        "no monitor, after 17": lambda: [],
    }
    runs = {name: (common.make_mlp(reg), make) for name, make in fresh.items()}
    for model, make in runs.values():  # trace; not timed
        model.fit(x, y, batch_size=common.BATCH, epochs=1, verbose=0,
                  callbacks=make())
    after, _ = runs["no monitor, after 17"]
    for fit in range(monitored_fits):
        callbacks = [keras_lk.LkMonitor(tempfile.mkdtemp(dir=log_root),
                                        update_freq=10, step_stats=True)]
        if fit % 2:
            callbacks.append(keras_lk.RegularizationShare(
                tempfile.mkdtemp(dir=log_root)))
        after.fit(x[:10 * common.BATCH], y[:10 * common.BATCH],
                  batch_size=common.BATCH, verbose=0, callbacks=callbacks)

    def run_once(run):
        model, make = run
        callbacks = make()
        start = time.perf_counter()
        model.fit(x, y, batch_size=common.BATCH, epochs=epochs, verbose=0,
                  callbacks=callbacks)
        return [time.perf_counter() - start]

    samples = common.alternate(runs, run_once, rounds)
    print(f"\nsweep: a new callback per fit of {epochs} epochs x {steps} "
          f"steps, {rounds} rounds alternated")
    common.report(samples, "no monitor", {"fresh LkMonitor epoch": 1.03,
                                          "fresh LkMonitor every 10": 1.15,
                                          "no monitor, after 17": 1.05})


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--tables", nargs="+", default=list(TABLES),
                        choices=list(TABLES + OPTIONAL_TABLES))
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, size, repeats = args.child
        child(kind, int(size), int(repeats))
        return
    if "fit" in args.tables:
        fit_table(args.rounds, args.epochs, args.steps)
    if "sweep" in args.tables:
        sweep_table(args.rounds, 2, 100)
    if "stats" in args.tables:
        statistics_pass_table(args.repeats)
    if "many" in args.tables:
        many_tensors_table(args.repeats)
    if "deep" in args.tables:
        deep_table(args.rounds)


if __name__ == "__main__":
    main()
