"""Structured pruning, measured: what `prune_units(model, 0.5)` then
`shrink` removes from each `keras.applications` family, and how much faster
the shrunk model runs than the pruned one on the CPU.

    python benchmarks/bench_shrink.py coverage
    python benchmarks/bench_shrink.py speed [--models ...] [--rounds 5]
    KERAS_BACKEND=jax python benchmarks/bench_shrink.py speed

`coverage`: every family with random weights (`weights=None`), 50% of the
units of each removable group zeroed by magnitude, then shrunk: the share of
parameters and multiply-accumulates removed, the largest output difference
relative to the output's scale, and which groups stay, with why.

`speed`: ResNet50 (160 x 160), MobileNetV2 (224 x 224), a Transformer
encoder (4 blocks, width 256, 4 heads, 128 tokens) and an MLP
(1024-4096-4096-10), each pruned (dense, with zeros) and shrunk, timed side
by side in one process with `predict_on_batch`, alternating, for batch 1
and 16. Reported: the ratios dense / shrunk of multiply-accumulates,
parameters and latency (median over rounds of the median call), and the
latency gain as a fraction of the MACs ratio.

Results are written to benchmarks/results/shrink_<command>_<backend>.json
and printed as Markdown tables. Not part of the test command.
"""

import argparse
import json
import os
import pathlib
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_lk  # noqa: E402

RESULTS = pathlib.Path(__file__).resolve().parent / "results"
L = keras.layers

FAMILIES = [
    ("ConvNeXt", "ConvNeXtTiny", 32), ("DenseNet", "DenseNet121", 32),
    ("EfficientNet", "EfficientNetB0", 32),
    ("EfficientNetV2", "EfficientNetV2B0", 32),
    ("InceptionResNetV2", "InceptionResNetV2", 75),
    ("InceptionV3", "InceptionV3", 75), ("MobileNet", "MobileNet", 32),
    ("MobileNetV2", "MobileNetV2", 32),
    ("MobileNetV3", "MobileNetV3Small", 32),
    ("NASNet", "NASNetMobile", 32), ("ResNet", "ResNet50", 32),
    ("ResNetV2", "ResNet50V2", 32), ("VGG", "VGG16", 32),
    ("Xception", "Xception", 71)]


def lively(model, seed=0):
    """Random BatchNormalization statistics, scales and offsets, so that
    outputs are not all near zero."""
    rng = np.random.default_rng(seed)
    for variable in model.weights:
        if variable.path.endswith(("moving_variance", "gamma")):
            variable.assign(rng.uniform(0.5, 1.5, variable.shape))
        elif variable.path.endswith(("moving_mean", "beta")):
            variable.assign(rng.normal(0, 0.1, variable.shape))
    return model


def to_numpy(value):
    return keras.ops.convert_to_numpy(value)


def coverage(args):
    rows = []
    for family, constructor, side in FAMILIES:
        keras.utils.set_random_seed(0)
        model = lively(getattr(keras.applications, constructor)(
            weights=None, input_shape=(side, side, 3), classes=10,
            classifier_activation=None))
        x = np.random.default_rng(0).uniform(0, 255, (2, side, side, 3))
        x = x.astype("float32")
        params, macs = model.count_params(), keras_lk.macs(model)
        groups = keras_lk.unit_groups(model)
        keras_lk.prune_units(model, 0.5)
        pruned = to_numpy(model(x))
        small = keras_lk.shrink(model)
        error = float(np.max(np.abs(to_numpy(small(x)) - pruned))
                      / np.max(np.abs(pruned)))
        kept = [g for g in groups if not g.removable]
        reasons = sorted({_short(r) for g in kept for r in g.reasons})
        row = {
            "family": family, "model": constructor, "input": side,
            "groups": len(groups), "removable": len(groups) - len(kept),
            "params": params, "params_removed":
                1 - small.count_params() / params,
            "macs": macs, "macs_removed": 1 - keras_lk.macs(small) / macs,
            "error": error, "kept": [g.name for g in kept],
            "why_kept": reasons}
        rows.append(row)
        print(_coverage_row(row), flush=True)
    shrunk = sum(r["params_removed"] >= 0.3 for r in rows)
    print(f"\n{shrunk} of {len(rows)} families lose at least 30% of their "
          "parameters.")
    return rows


def _short(reason):
    """A kept group's reason without the layer names, for the table."""
    if "cannot look inside" in reason:
        return "custom layer " + reason.split(" is a ")[1].split(",")[0]
    for key, text in (
            ("input", "model input"), ("output", "model output"),
            ("LayerNormalization", "LayerNormalization across channels"),
            ("(Normalization)", "per-channel input Normalization"),
            ("several layers in different orders",
             "an Add of a Concatenate's channels"),
            ("softmax", "softmax head")):
        if key in reason:
            return text
    return reason


def _coverage_row(row):
    return (f"| {row['family']} ({row['model']}, {row['input']}px) | "
            f"{row['removable']} / {row['groups']} | "
            f"{row['params_removed']:.1%} | {row['macs_removed']:.1%} | "
            f"{row['error']:.0e} | {', '.join(row['why_kept'])} |")


def resnet50():
    model = keras.applications.ResNet50(weights=None,
                                        input_shape=(160, 160, 3))
    return lively(model), lambda b: _images(b, 160)


def mobilenet_v2():
    model = keras.applications.MobileNetV2(weights=None,
                                           input_shape=(224, 224, 3))
    return lively(model), lambda b: _images(b, 224)


def _images(batch, side):
    rng = np.random.default_rng(batch)
    return rng.uniform(0, 255, (batch, side, side, 3)).astype("float32")


def transformer(blocks=4, width=256, heads=4, length=128, vocab=1000):
    tokens = keras.Input((length,), dtype="int32")
    x = L.Embedding(vocab, width)(tokens)
    for b in range(blocks):
        a = L.MultiHeadAttention(heads, width // heads, name=f"mha{b}")(x, x)
        x = L.LayerNormalization()(L.Add()([x, a]))
        h = L.Dense(4 * width, "gelu", name=f"ffn{b}_in")(x)
        x = L.LayerNormalization()(L.Add()([x, L.Dense(width)(h)]))
    outputs = L.Dense(2)(L.GlobalAveragePooling1D()(x))
    model = keras.Model(tokens, outputs, name="transformer")
    rng = np.random.default_rng(0)
    return model, lambda b: rng.integers(0, vocab, (b, length))


def mlp():
    model = keras.Sequential([
        keras.Input((1024,)), L.Dense(4096, "relu"), L.Dense(4096, "relu"),
        L.Dense(10)], name="mlp")
    rng = np.random.default_rng(0)
    return model, lambda b: rng.standard_normal((b, 1024)).astype("float32")


SPEED_MODELS = {"resnet50": resnet50, "mobilenet_v2": mobilenet_v2,
                "transformer": transformer, "mlp": mlp}


def median_call(function, x, calls):
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        function(x)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def speed(args):
    rows = []
    for name in args.models:
        keras.utils.set_random_seed(0)
        model, data = SPEED_MODELS[name]()
        keras_lk.prune_units(model, 0.5)
        small = keras_lk.shrink(model)
        macs = keras_lk.macs(model) / keras_lk.macs(small)
        params = model.count_params() / small.count_params()
        for batch in args.batches:
            x = data(batch)
            for m in (model, small):  # traced and warm, untimed
                for _ in range(3):
                    m.predict_on_batch(x)
            calls = max(3, args.calls // batch)
            dense, shrunk = [], []
            for _ in range(args.rounds):
                dense.append(median_call(model.predict_on_batch, x, calls))
                shrunk.append(median_call(small.predict_on_batch, x, calls))
            dense_ms = 1e3 * statistics.median(dense)
            shrunk_ms = 1e3 * statistics.median(shrunk)
            row = {"model": name, "batch": batch, "macs_ratio": macs,
                   "params_ratio": params, "dense_ms": dense_ms,
                   "shrunk_ms": shrunk_ms, "speedup": dense_ms / shrunk_ms,
                   "rounds": args.rounds, "calls": calls}
            row["of_macs_ratio"] = row["speedup"] / macs
            rows.append(row)
            print(f"| {name} | {batch} | {macs:.2f}x | {params:.2f}x | "
                  f"{dense_ms:.1f} | {shrunk_ms:.1f} | "
                  f"{row['speedup']:.2f}x | {row['of_macs_ratio']:.2f} |",
                  flush=True)
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=["coverage", "speed"])
    parser.add_argument("--models", nargs="+", default=list(SPEED_MODELS),
                        choices=list(SPEED_MODELS))
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 16])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=32,
                        help="calls per round at batch 1 (divided by the "
                             "batch size, at least 3)")
    args = parser.parse_args(argv)
    backend = keras.backend.backend()
    print(f"keras {keras.__version__}, backend {backend}, "
          f"{os.cpu_count()} CPUs")
    if args.command == "coverage":
        print("| family | removable groups | params removed | MACs removed "
              "| max error | groups kept because |\n|---|---|---|---|---|---|")
        rows = coverage(args)
    else:
        print("| model | batch | MACs ratio | params ratio | dense ms | "
              "shrunk ms | speedup | speedup / MACs ratio |\n"
              "|---|---|---|---|---|---|---|---|")
        rows = speed(args)
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"shrink_{args.command}_{backend}.json"
    path.write_text(json.dumps({"backend": backend, "rows": rows,
                                "argv": sys.argv[1:]}, indent=1))
    print(f"written to {path}")


if __name__ == "__main__":
    main()
