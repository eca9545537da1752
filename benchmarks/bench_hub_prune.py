"""Structured pruning of a keras_hub decoder: held-out perplexity at 20%,
35% and 50% of the block parameters removed, one-shot for each score,
after a short recovery fine-tune, and trained toward the size with
`SparsityTarget(structure="units")`; `generate` speed, shrunk against
dense.

    python benchmarks/hub_decoder.py          # once: trains the decoder
    python benchmarks/bench_hub_prune.py [--seeds 3] [--recover 100]

The decoder and the data are `hub_decoder.py`'s. Every method removes the
same share of the block parameters (the kernels of attention and
feed-forward, which equal the multiply-accumulates per token), each block
alike (`allocation="uniform"`): heads by KV group, feed-forward units, or
whole blocks. The data scores read 128 calibration windows of 128 bytes
from the training bytes; a seed draws them (and the recovery's batches).
Written to benchmarks/results/hub_prune.json and printed as the docs'
table. Not part of the test command.
"""

import argparse
import json
import os
import statistics
import time
import warnings

import hub_decoder as hub
import keras
import numpy as np

import keras_lk

TARGETS = (0.2, 0.35, 0.5)
SCORES = ("l2", "taylor", "activation")
CALIBRATION = 128


def restore(lm, values):
    for variable, value in zip(lm.weights, values):
        variable.assign(value)


def removed_share(lm):
    """The share of the block parameters whose units are all zero."""
    return 1.0 - keras_lk.macs(lm.backbone, live=True) / keras_lk.macs(
        lm.backbone)


def fraction_for(lm, dense, target):
    """The fraction of each group's units that removes `target` of the
    block parameters (the least that reaches it, by bisection; the counts
    do not depend on the score)."""
    low, high = 0.0, 0.95
    for _ in range(14):
        middle = (low + high) / 2
        restore(lm, dense)
        keras_lk.prune_units(lm.backbone, middle)
        if removed_share(lm) >= target:
            high = middle
        else:
            low = middle
    restore(lm, dense)
    return high


def recover(lm, train, steps, seed, rate=5e-4):
    """A short fine-tune: the same batches and steps for every method."""
    hub.compile_lm(lm, rate=rate, steps=steps)
    x, y = hub.as_xy(hub.windows(train, steps * 32, seed=100 + seed))
    lm.fit(x, y, batch_size=32, epochs=1, verbose=0)
    return lm


def shrunk_lm(lm):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return hub.causal_lm(keras_lk.shrink(lm.backbone))


def one_shot(lm, dense, train, held, score, fraction, seed, steps):
    restore(lm, dense)
    calibration = hub.as_xy(hub.windows(train, CALIBRATION, seed=seed))
    data = calibration if score == "taylor" else calibration[0]
    start = time.perf_counter()
    keras_lk.prune_units(lm if score == "taylor" else lm.backbone, fraction,
                         score=score, data=None if score == "l2" else data)
    seconds = time.perf_counter() - start
    share = removed_share(lm)
    small = shrunk_lm(lm)
    row = {"removed": share, "ppl": hub.perplexity(small, held),
           "prune_s": seconds,
           "parameters": hub.core_parameters(small.backbone)}
    row["ppl_recovered"] = hub.perplexity(
        recover(small, train, steps, seed), held)
    return row


def blocks_one_shot(lm, dense, train, held, count, seed, steps):
    restore(lm, dense)
    x = hub.as_xy(hub.windows(train, CALIBRATION, seed=seed))[0]
    keras_lk.prune_units(lm.backbone, 0.0, blocks=count / 4 + 1e-9, data=x)
    small = shrunk_lm(lm)
    row = {"removed": removed_share(lm), "ppl": hub.perplexity(small, held),
           "parameters": hub.core_parameters(small.backbone)}
    row["ppl_recovered"] = hub.perplexity(
        recover(small, train, steps, seed), held)
    return row


def trained_toward(lm, dense, train, held, target, seed, steps):
    """From the dense weights, `steps` of training with the group penalty
    and SparsityTarget(structure="units", target_macs=target): the same
    batches as the recovery; then shrink."""
    restore(lm, dense)
    model = hub.causal_lm(hub.backbone())
    model.backbone.set_weights(lm.backbone.get_weights())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        keras_lk.attach(model, keras_lk.LkRegularizer(0, 1e-3,
                                                      proximal=True),
                        structure="units")
    schedule = keras.optimizers.schedules.CosineDecay(5e-4, steps)
    hub.compile_lm(model, optimizer=keras_lk.ProximalOptimizer(
        keras.optimizers.Adam(schedule)))
    x, y = hub.as_xy(hub.windows(train, steps * 32, seed=100 + seed))
    target = keras_lk.SparsityTarget(
        structure="units", target_macs=target, begin_step=0,
        end_step=int(steps * 0.6))
    model.fit(x, y, batch_size=32, epochs=1, verbose=0, callbacks=[target])
    share = 1.0 - keras_lk.macs(model.backbone, live=True) / keras_lk.macs(
        model.backbone)
    small = hub.causal_lm(keras_lk.strip(model.backbone, shrink=True))
    return {"removed": share, "ppl": hub.perplexity(small, held),
            "parameters": hub.core_parameters(small.backbone)}


def tokens_per_second(lm, rounds=3, length=128):
    lm.compile(sampler="greedy")
    prompt = {"token_ids": np.zeros((1, length), "int32"),
              "padding_mask": np.zeros((1, length), bool)}
    prompt["token_ids"][0, :8] = np.frombuffer(b"def main", np.uint8)
    prompt["padding_mask"][0, :8] = True
    lm.generate(prompt, stop_token_ids=None)  # compiles
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        lm.generate(prompt, stop_token_ids=None)
        times.append(time.perf_counter() - start)
    return (length - 8) / statistics.median(times)


def summary(rows, key):
    values = [r[key] for r in rows]
    return {"mean": statistics.mean(values),
            "std": statistics.stdev(values) if len(values) > 1 else 0.0}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--recover", type=int, default=100)
    args = parser.parse_args()
    lm, train, held = hub.trained()
    dense = [v.numpy() for v in lm.weights]
    results = {"dense_ppl": hub.perplexity(lm, held),
               "dense_parameters": hub.core_parameters(lm.backbone),
               "recover_steps": args.recover, "rows": []}
    print(f"dense: perplexity {results['dense_ppl']:.3f}")
    for target in TARGETS:
        fraction = fraction_for(lm, dense, target)
        for score in SCORES:
            seeds = range(1 if score == "l2" else args.seeds)
            rows = [one_shot(lm, dense, train, held, score, fraction, s,
                             args.recover) for s in seeds]
            results["rows"].append(_entry(f"one-shot {score}", target, rows))
        rows = [trained_toward(lm, dense, train, held, target, s,
                               args.recover) for s in range(args.seeds)]
        results["rows"].append(_entry("SparsityTarget", target, rows))
    for count in (1, 2):
        rows = [blocks_one_shot(lm, dense, train, held, count, s,
                                args.recover) for s in range(args.seeds)]
        results["rows"].append(_entry("blocks (influence)", count / 4, rows))
    restore(lm, dense)
    speed = {"dense": tokens_per_second(hub.causal_lm(lm.backbone))}
    for target in (0.35, 0.5):
        restore(lm, dense)
        fraction = fraction_for(lm, dense, target)
        keras_lk.prune_units(lm.backbone, fraction)
        speed[f"{target:.0%} removed"] = tokens_per_second(shrunk_lm(lm))
    results["tokens_per_second"] = speed
    path = os.path.join(hub.HERE, "results", "hub_prune.json")
    with open(path, "w") as handle:
        json.dump(results, handle, indent=1)
    print(table(results))


def _entry(method, target, rows):
    entry = {"method": method, "target": target, "seeds": len(rows),
             "removed": statistics.mean(r["removed"] for r in rows),
             "ppl": summary(rows, "ppl")}
    if "ppl_recovered" in rows[0]:
        entry["ppl_recovered"] = summary(rows, "ppl_recovered")
    if "prune_s" in rows[0]:
        entry["prune_s"] = statistics.mean(r["prune_s"] for r in rows)
    print(entry, flush=True)
    return entry


def _cell(value):
    if value is None:
        return ""
    return f"{value['mean']:.3f} ± {value['std']:.3f}"


def table(results):
    lines = ["| method | removed | one-shot ppl | after recovery |",
             "|---|---|---|---|"]
    for row in results["rows"]:
        lines.append(f"| {row['method']} | {row['removed']:.1%} | "
                     f"{_cell(row['ppl'])} | "
                     f"{_cell(row.get('ppl_recovered'))} |")
    lines.append("")
    lines.append("| model | generate tokens/s |")
    lines.append("|---|---|")
    for name, value in results["tokens_per_second"].items():
        lines.append(f"| {name} | {value:.0f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
