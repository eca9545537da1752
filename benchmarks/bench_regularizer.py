"""Step time of `fit` with LkRegularizer against Keras's own L2.

Run: `.venv/bin/python benchmarks/bench_regularizer.py [--rounds R] [--steps S]`

Each round fits every variant for S steps, in turn, on the same data; the
first fit of each model (tracing) is not timed. Targets: <= 1.05x Keras L2
for k in {1, 2}, <= 1.15x for the other k.
"""

import argparse

import keras

import common
import keras_lk

K_VALUES = (0.5, 1.0, 1.5, 2.0, 3.0, 10.0, float("inf"))
ALPHA = 1e-4


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()

    x, y = common.make_data(args.steps)
    regularizers = {"none": None, "keras L2": keras.regularizers.L2(ALPHA)}
    for k in K_VALUES:
        regularizers[f"Lk k={k:g}"] = keras_lk.LkRegularizer(
            k=k, alpha=ALPHA, reduction="sum")
    models = {name: common.make_mlp(reg) for name, reg in regularizers.items()}
    common.warm_up(models.values(), x, y)

    def run_once(model):
        return common.step_times(model, x, y)

    samples = common.alternate(models, run_once, args.rounds)
    targets = {name: (1.05 if name in ("Lk k=1", "Lk k=2") else 1.15)
               for name in models if name.startswith("Lk")}
    params = models["none"].count_params()
    print(f"MLP with {params:,} parameters, batch {common.BATCH}, Adam, "
          f"{args.rounds} rounds x {args.steps} steps, alternated")
    common.report(samples, "keras L2", targets)


if __name__ == "__main__":
    main()
