"""The sparsity suite's initial weights, for the peer to start from.

Run: `.venv/bin/python benchmarks/suite_init.py DIR [--models ...]
[--seeds 0 1 2]`

Writes `DIR/<model>_seed<S>.npz`: the weights of every layer of the suite's
model (`keras_lk.study.suite`) as `keras-lk sweep` builds it for seed S,
before any training, keyed `<layer name>:<index>` in the layer's
`get_weights()` order. `benchmarks/tfmot_peer.py --init DIR` loads them
into its tf-keras copy of the model, so that tfmot and keras_lk prune the
same network from the same starting point (the batch order still differs:
each framework shuffles with its own generator).
"""

import argparse
import os

import numpy as np

from keras_lk.penalties.regularizers import LkRegularizer
from keras_lk.study import suite

PEER_MODELS = ("digits_mlp", "small_output_mlp", "digits_conv",
               "embedding", "transformer")


def initial_weights(model_name, seed):
    """`{"<layer>:<i>": array}` of the suite's model for `seed`; the same
    with or without the proximal regularizer the sweep attaches (checked:
    the regularizer draws nothing)."""
    plain = suite.MODELS[model_name].build(None, seed)
    pruned = suite.MODELS[model_name].build(
        LkRegularizer(0.0, 1e-3, proximal=True), seed)
    weights = {}
    for a, b in zip(plain.layers, pruned.layers):
        for index, (x, y) in enumerate(zip(a.get_weights(),
                                           b.get_weights())):
            if not np.array_equal(x, y):
                raise RuntimeError(f"{model_name} seed {seed}: layer "
                                   f"{a.name} starts differently with the "
                                   "regularizer")
            weights[f"{a.name}:{index}"] = x
    return weights


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory")
    parser.add_argument("--models", nargs="+", default=list(PEER_MODELS),
                        choices=list(suite.MODELS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    os.makedirs(args.directory, exist_ok=True)
    for model_name in args.models:
        for seed in args.seeds:
            path = os.path.join(args.directory,
                                f"{model_name}_seed{seed}.npz")
            np.savez(path, **initial_weights(model_name, seed))
            print(path)


if __name__ == "__main__":
    main()
