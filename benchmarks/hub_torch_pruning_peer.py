"""The peer, run live: Torch-Pruning 1.6 on the same trained decoder,
copied into Hugging Face `transformers`' `LlamaForCausalLM`, at the same
shares of block parameters removed, on the same held-out bytes.

    pip install transformers torch-pruning==1.6.0   # beside torch (CPU)
    python benchmarks/hub_decoder.py                 # once: trains it
    python benchmarks/hub_torch_pruning_peer.py [--seeds 3]

The weights of `hub_decoder.py`'s MistralBackbone (full causal attention,
so the Llama architecture) are copied into a `LlamaForCausalLM` with the
same configuration; the copy's logits are checked against Keras's before
anything is pruned. Torch-Pruning runs its LLM example's settings
(examples/LLMs/prune_llm.py): `MetaPruner`, `global_pruning=False`, the
same ratio for channels and heads, `prune_num_heads=True`,
`prune_head_dims=False` (the head size kept), `round_to=4`, the output
head ignored, with `GroupMagnitudeImportance(p=2, group_reduction="mean")`
or `GroupTaylorImportance` (the gradients of the loss on the 128
calibration windows a seed draws, as keras_lk's "taylor" reads). Like the
example it also prunes the hidden width, which keras_lk keeps. Its ratio
is bisected (on magnitude: the counts do not depend on the
importance) to remove the same share of the block parameters as keras_lk
(counted alike: the linear layers of the blocks). Written to
benchmarks/results/hub_torch_pruning_peer.json. Not part of the test
command.

With Torch-Pruning 1.6.0, PyTorch 2.13 (CPU) and transformers 4.57.1 (and
4.44.2), `MetaPruner` does not finish building its groups for this
grouped-query model: it stays in `DependencyGraph.get_all_groups` (over
10 minutes for the 4-block model, over 100 s for a one-block
`LlamaForCausalLM` of the same widths), as reported upstream for GQA
models (VainF/Torch-Pruning#527). The copy and its perplexity are checked
first, so the script says where it stops.
"""

import argparse
import copy
import json
import os
import statistics

import hub_decoder as hub
import numpy as np

TARGETS = (0.2, 0.35, 0.5)


def llama_copy(lm):
    import torch
    import transformers
    c = hub.CONFIG
    config = transformers.LlamaConfig(
        vocab_size=c["vocabulary_size"], hidden_size=c["hidden_dim"],
        intermediate_size=c["intermediate_dim"],
        num_hidden_layers=c["num_layers"],
        num_attention_heads=c["num_query_heads"],
        num_key_value_heads=c["num_key_value_heads"], head_dim=c["head_dim"],
        max_position_embeddings=4096, rms_norm_eps=1e-6, rope_theta=10000.0,
        tie_word_embeddings=False, attention_bias=False, mlp_bias=False,
        hidden_act="silu")
    config.use_cache = False
    model = transformers.LlamaForCausalLM(config).eval()
    values = {v.path: np.asarray(v.numpy()) for v in lm.backbone.weights}
    hidden = c["hidden_dim"]

    def put(parameter, value):
        with torch.no_grad():
            parameter.copy_(torch.from_numpy(np.ascontiguousarray(value)))

    put(model.model.embed_tokens.weight, values["token_embedding/embeddings"])
    put(model.lm_head.weight, values["token_embedding/reverse_embeddings"].T)
    put(model.model.norm.weight, values["sequence_output_layernorm/scale"])
    for i, layer in enumerate(model.model.layers):
        p = f"transformer_layer_{i}/"
        a = layer.self_attn
        for name, proj in (("query", a.q_proj), ("key", a.k_proj),
                           ("value", a.v_proj)):
            kernel = values[f"{p}self_attention/{name}/kernel"]
            put(proj.weight, kernel.reshape(hidden, -1).T)
        put(a.o_proj.weight, values[
            f"{p}self_attention/attention_output/kernel"].reshape(-1, hidden).T)
        put(layer.input_layernorm.weight,
            values[f"{p}self_attention_layernorm/scale"])
        put(layer.post_attention_layernorm.weight,
            values[f"{p}feedforward_layernorm/scale"])
        put(layer.mlp.gate_proj.weight,
            values[f"{p}feedforward_gate_dense/kernel"].T)
        put(layer.mlp.up_proj.weight,
            values[f"{p}feedforward_intermediate_dense/kernel"].T)
        put(layer.mlp.down_proj.weight,
            values[f"{p}feedforward_output_dense/kernel"].T)
    return model


def logits(model, ids):
    import torch
    with torch.no_grad():
        return model(torch.from_numpy(ids).long()).logits.numpy()


def perplexity(model, held, count=256, batch=32):
    chunks = hub.windows(held, count, seed=1234)
    x, y = chunks[:, :-1], chunks[:, 1:]
    total = 0.0
    for start in range(0, count, batch):
        z = logits(model, x[start:start + batch]).astype(np.float64)
        z -= z.max(-1, keepdims=True)
        log_z = np.log(np.exp(z).sum(-1))
        picked = np.take_along_axis(z, y[start:start + batch][..., None],
                                    -1)[..., 0]
        total += float(np.sum(log_z - picked))
    return float(np.exp(total / y.size))


def block_parameters(model):
    return sum(m.weight.numel() for layer in model.model.layers
               for m in layer.modules()
               if type(m).__name__ == "Linear")


def pruned(base, ratio, importance, calibration):
    import torch
    import torch_pruning as tp
    model = copy.deepcopy(base)
    num_heads = {}
    for layer in model.model.layers:
        a = layer.self_attn
        num_heads[a.q_proj] = model.config.num_attention_heads
        num_heads[a.k_proj] = model.config.num_key_value_heads
        num_heads[a.v_proj] = model.config.num_key_value_heads
    if importance == "taylor":
        scorer = tp.importance.GroupTaylorImportance()
    else:
        scorer = tp.importance.GroupMagnitudeImportance(
            p=2, group_reduction="mean")
    example = torch.from_numpy(calibration[:1, :-1]).long()
    pruner = tp.pruner.MetaPruner(
        model, example_inputs=example, importance=scorer,
        global_pruning=False, pruning_ratio=ratio,
        ignored_layers=[model.lm_head], num_heads=num_heads,
        prune_num_heads=True, prune_head_dims=False,
        head_pruning_ratio=ratio, round_to=4,
        output_transform=lambda out: out.logits)
    if importance == "taylor":
        model.zero_grad()
        for start in range(0, len(calibration), 32):
            part = torch.from_numpy(calibration[start:start + 32]).long()
            out = model(part[:, :-1], labels=part[:, :-1].clone())
            loss = torch.nn.functional.cross_entropy(
                out.logits.reshape(-1, out.logits.shape[-1]),
                part[:, 1:].reshape(-1))
            loss.backward()
    for group in pruner.step(interactive=True):
        group.prune()
    model.config.hidden_size = model.lm_head.in_features
    for layer in model.model.layers:
        a = layer.self_attn
        heads = a.q_proj.out_features // a.head_dim
        kv = a.k_proj.out_features // a.head_dim
        a.num_key_value_groups = heads // kv
        model.config.num_attention_heads = heads
        model.config.num_key_value_heads = kv
        model.config.intermediate_size = layer.mlp.gate_proj.out_features
    model.zero_grad(set_to_none=True)
    return model


def ratio_for(base, target, calibration):
    """Torch-Pruning's ratio that removes `target` of the block
    parameters (bisection; the counts do not depend on the importance)."""
    dense = block_parameters(base)
    low, high = 0.0, 0.9
    for _ in range(7):
        middle = (low + high) / 2
        model = pruned(base, middle, "magnitude", calibration)
        if 1 - block_parameters(model) / dense >= target:
            high = middle
        else:
            low = middle
    return high


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    lm, train, held = hub.trained()
    base = llama_copy(lm)
    probe = hub.windows(held, 2, seed=5)[:, :-1]
    keras_logits = np.asarray(lm({"token_ids": probe,
                                  "padding_mask": np.ones_like(probe)}))
    gap = float(np.max(np.abs(logits(base, probe) - keras_logits)))
    print(f"copy: largest logit difference {gap:.2e}")
    assert gap < 1e-3, gap
    results = {"dense_ppl": perplexity(base, held), "copy_gap": gap,
               "rows": []}
    print(f"dense: perplexity {results['dense_ppl']:.3f}")
    dense = block_parameters(base)
    for target in TARGETS:
        ratio = ratio_for(base, target, hub.windows(train, 128, seed=0))
        for importance in ("magnitude", "taylor"):
            seeds = range(1 if importance == "magnitude" else args.seeds)
            rows = []
            for seed in seeds:
                calibration = hub.windows(train, 128, seed=seed)
                model = pruned(base, ratio, importance, calibration)
                removed = 1 - block_parameters(model) / dense
                rows.append({"removed": removed, "ratio": ratio,
                             "ppl": perplexity(model, held),
                             "hidden": model.config.hidden_size,
                             "heads": model.config.num_attention_heads,
                             "ffn": model.config.intermediate_size})
            ppl = [r["ppl"] for r in rows]
            entry = {"method": f"Torch-Pruning {importance}",
                     "target": target, "seeds": len(rows),
                     "removed": statistics.mean(r["removed"] for r in rows),
                     "ppl": {"mean": statistics.mean(ppl),
                             "std": statistics.stdev(ppl) if len(ppl) > 1
                             else 0.0},
                     "shape": {k: rows[0][k] for k in
                               ("hidden", "heads", "ffn")}}
            print(entry, flush=True)
            results["rows"].append(entry)
    path = os.path.join(hub.HERE, "results", "hub_torch_pruning_peer.json")
    with open(path, "w") as handle:
        json.dump(results, handle, indent=1)


if __name__ == "__main__":
    main()
