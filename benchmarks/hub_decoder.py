"""The decoder the keras_hub benchmarks prune: a Llama-style keras_hub
model trained here on bytes every machine has, Python's standard library.

- Data: the `.py` files of the running Python's standard library, sorted by
  path, read as bytes (vocabulary 256). Every 10th file is held out.
- Model: `keras_hub.models.MistralBackbone`, the Llama architecture (RMSNorm,
  rotary positions, grouped-query attention, a SwiGLU feed-forward) with
  the head size as an argument, so that heads can go: 4 blocks, hidden 128,
  8 query and 4 KV heads of 16, feed-forward 512, the sliding window wider
  than the sequence (full causal attention, as Llama), untied output head.
- Training: `MistralCausalLM`, Adam 2e-3 with a cosine decay, windows of
  128 bytes, batch 32. The trained weights are cached in
  benchmarks/results/hub_decoder.weights.h5 (delete it to train again).

    python benchmarks/hub_decoder.py [--steps 800]   # trains, prints ppl
"""

import argparse
import os
import sysconfig
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
WEIGHTS = os.path.join(HERE, "results", "hub_decoder.weights.h5")
LENGTH = 128
CONFIG = dict(vocabulary_size=256, num_layers=4, hidden_dim=128,
              num_query_heads=8, num_key_value_heads=4, head_dim=16,
              intermediate_dim=512, sliding_window=1024)


def stdlib_bytes(limit=6_000_000):
    """(train, held out) byte arrays of the standard library's sources."""
    root = sysconfig.get_paths()["stdlib"]
    paths = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in (
            "site-packages", "__pycache__", "test", "tests", "idlelib"))
        paths += [os.path.join(folder, f) for f in sorted(files)
                  if f.endswith(".py")]
    train, held = [], []
    total = 0
    for index, path in enumerate(sorted(paths)):
        with open(path, "rb") as handle:
            data = handle.read()
        (held if index % 10 == 9 else train).append(data)
        total += len(data)
        if total > limit:
            break
    as_array = lambda parts: np.frombuffer(b"".join(parts), np.uint8)  # noqa
    return as_array(train).astype("int32"), as_array(held).astype("int32")


def windows(data, count, seed, length=LENGTH):
    """`count` random windows of `length + 1` bytes."""
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, len(data) - length - 1, count)
    return np.stack([data[s:s + length + 1] for s in starts])


def as_xy(chunks):
    """CausalLM inputs and next-byte targets of windows."""
    x = {"token_ids": chunks[:, :-1],
         "padding_mask": np.ones_like(chunks[:, :-1])}
    return x, chunks[:, 1:]


def backbone(**overrides):
    import keras_hub
    return keras_hub.models.MistralBackbone(**{**CONFIG, **overrides})


def causal_lm(model):
    import keras_hub
    lm = keras_hub.models.MistralCausalLM(backbone=model, preprocessor=None)
    return lm


def compile_lm(lm, rate=2e-3, steps=1000, optimizer=None):
    schedule = keras.optimizers.schedules.CosineDecay(rate, steps)
    lm.compile(optimizer or keras.optimizers.Adam(schedule),
               keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return lm


def perplexity(lm, held, count=256, batch=32):
    """exp(mean next-byte NLL) over `count` fixed held-out windows."""
    chunks = windows(held, count, seed=1234)
    x, y = as_xy(chunks)
    total = 0.0
    for start in range(0, count, batch):
        part = {k: v[start:start + batch] for k, v in x.items()}
        logits = keras.ops.convert_to_numpy(lm(part, training=False))
        logits = logits.astype(np.float64)
        logits -= logits.max(-1, keepdims=True)
        log_z = np.log(np.exp(logits).sum(-1))
        picked = np.take_along_axis(
            logits, y[start:start + batch][..., None], -1)[..., 0]
        total += float(np.sum(log_z - picked))
    return float(np.exp(total / y.size))


def trained(steps=800, seed=0, verbose=True):
    """The trained CausalLM (cached), and the data."""
    train, held = stdlib_bytes()
    keras.utils.set_random_seed(seed)
    lm = compile_lm(causal_lm(backbone()), steps=steps)
    if os.path.exists(WEIGHTS):
        lm.backbone.load_weights(WEIGHTS)
        return lm, train, held
    x, y = as_xy(windows(train, steps * 32, seed=seed))
    start = time.perf_counter()
    lm.fit(x, y, batch_size=32, epochs=1, verbose=2 if verbose else 0)
    if verbose:
        print(f"trained {steps} steps in {time.perf_counter() - start:.0f} s;"
              f" held-out perplexity {perplexity(lm, held):.3f}")
    os.makedirs(os.path.dirname(WEIGHTS), exist_ok=True)
    lm.backbone.save_weights(WEIGHTS)
    return lm, train, held


def core_parameters(model):
    """Parameters of the blocks' kernels: everything but the embeddings
    and the norms."""
    return sum(int(np.prod(v.shape)) for v in model.weights
               if v.path.endswith("kernel"))


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=800)
    args = parser.parse_args()
    lm, train, held = trained(args.steps)
    print(f"{len(train)} training bytes, {len(held)} held out; "
          f"{core_parameters(lm.backbone)} block parameters; perplexity "
          f"{perplexity(lm, held):.3f}")
