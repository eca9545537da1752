"""Step time of ProximalOptimizer against the penalty applied as a gradient.

Run: `.venv/bin/python benchmarks/bench_proximal.py [--rounds R] [--steps S]`

On the regularizer benchmark's MLP, side by side and alternated: SGD and
Adam with `LkRegularizer(k)` as a gradient penalty, against
`ProximalOptimizer(SGD)` and `ProximalOptimizer(Adam)` with
`LkRegularizer(k, proximal=True)`, for k = 1 (soft threshold) and k = 0.5
(half thresholding). Target: <= 1.10x the gradient penalty.
"""

import argparse

import keras

import common
import keras_lk

ALPHA = 1e-4


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    x, y = common.make_data(args.steps)

    optimizers = {"SGD": lambda: keras.optimizers.SGD(0.01),
                  "Adam": lambda: keras.optimizers.Adam(1e-3)}
    models = {}
    targets = {}
    for k in (1.0, 0.5):
        for name, make in optimizers.items():
            gradient = f"{name} gradient k={k:g}"
            proximal = f"Proximal({name}) k={k:g}"
            models[gradient] = common.make_mlp(
                keras_lk.LkRegularizer(k=k, alpha=ALPHA), make())
            models[proximal] = common.make_mlp(
                keras_lk.LkRegularizer(k=k, alpha=ALPHA, proximal=True),
                keras_lk.ProximalOptimizer(make()))
            targets[proximal] = gradient
    common.warm_up(models.values(), x, y)

    def run_once(model):
        return common.step_times(model, x, y)

    samples = common.alternate(models, run_once, args.rounds)
    print(f"{args.rounds} rounds x {args.steps} steps, batch {common.BATCH}, "
          "alternated; each proximal run against its gradient twin")
    for proximal, gradient in targets.items():
        common.report({gradient: samples[gradient],
                       proximal: samples[proximal]}, gradient,
                      {proximal: 1.10})
        print()


if __name__ == "__main__":
    main()
