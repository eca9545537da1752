"""The benchmark model and data, shared by every benchmark script.

An MLP of about 2.1M parameters (512 -> 1024 -> 1024 -> 512 -> 10) trained
with Adam on synthetic data, batch 128, on the CPU. Variants are timed side
by side in one process, alternating, and compared as ratios (see
`report`): absolute times on a shared machine mean little.
"""

import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

BATCH = 128
FEATURES = 512
CLASSES = 10


def make_data(steps, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((steps * BATCH, FEATURES)).astype("float32")
    y = rng.integers(0, CLASSES, size=steps * BATCH)
    return x, y


def make_mlp(regularizer=None, optimizer="adam", seed=0):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((FEATURES,))] + [
        keras.layers.Dense(units, activation="relu",
                           kernel_regularizer=regularizer)
        for units in (1024, 1024, 512)
    ] + [keras.layers.Dense(CLASSES, kernel_regularizer=regularizer)])
    model.compile(optimizer=optimizer,
                  loss="sparse_categorical_crossentropy")
    return model


class StepTimer(keras.callbacks.Callback):
    """Records the wall time of every training step."""

    def __init__(self):
        super().__init__()
        self.times = []

    def on_train_batch_begin(self, batch, logs=None):
        self._start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.times.append(time.perf_counter() - self._start)


def warm_up(models, x, y):
    """Fits each model once, untimed: tracing is not what is measured."""
    for model in models:
        model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0)


def step_times(model, x, y):
    """Wall times of one epoch's training steps, the first one left out."""
    return step_times_with(model, x, y, [])


def step_times_with(model, x, y, callbacks):
    """`step_times` with more callbacks in the fit (the timer last)."""
    timer = StepTimer()
    model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0,
              callbacks=list(callbacks) + [timer])
    return timer.times[1:]


def alternate(variants, run_once, rounds):
    """Runs `run_once(variant)` for each variant, `rounds` times, alternating.

    Returns `{name: [[seconds of round 1], [seconds of round 2], ...]}`.
    """
    samples = {name: [] for name in variants}
    for _ in range(rounds):
        for name, variant in variants.items():
            samples[name].append(list(run_once(variant)))
    return samples


def report(samples, baseline, targets=None):
    """Prints each variant's time and its ratio to `baseline`, two ways.

    The machine is shared and other work slows it down from second to
    second, which only ever adds time. So two ratios are printed: "best",
    the ratio of the variants' fastest rounds (each round's median), which
    interference cannot inflate, and "paired", the median over rounds of
    the ratio within a round (variants run back to back). Targets are
    judged on "best".
    """
    targets = targets or {}
    print(f"{'variant':<28}{'best ms':>10}{'best':>8}{'paired':>9}  target")
    ratios = {}
    best_base = min(statistics.median(r) for r in samples[baseline])
    for name, rounds in samples.items():
        medians = [statistics.median(r) for r in rounds]
        paired = statistics.median(
            m / statistics.median(b) for m, b in zip(medians,
                                                     samples[baseline]))
        ratios[name] = min(medians) / best_base
        target = targets.get(name)
        verdict = ""
        if target is not None:
            verdict = (f"<= {target:.2f}x "
                       f"{'ok' if ratios[name] <= target else 'MISSED'}")
        print(f"{name:<28}{min(medians) * 1e3:>10.2f}{ratios[name]:>7.3f}x"
              f"{paired:>8.3f}x  {verdict}")
    return ratios
