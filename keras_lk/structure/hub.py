"""The units of keras_hub's Transformer layers, described with the public
`describe.LayerUnits` calls (keras_hub is not imported: the rules are
registered by module and class name).

Every block keeps its residual stream (a LayerNorm or RMSNorm normalizes
across it, and the backbone's `hidden_dim` sets it everywhere). Inside a
block:

- the feed-forward units go, gated or not: the columns of the gate and up
  kernels (and their biases) with the row of the down kernel;
- the attention heads go by KV group, each with its query heads (keras_hub
  keeps a KV head's query heads contiguous), where the class takes the head
  size as an argument (Gemma, Mistral, Qwen3); where it derives the head
  size from `hidden_dim // num_heads` (BERT, GPT-2, Llama, Qwen2, Phi-3,
  ViT), a head cannot go and the group says so;
- a pre-norm block whose attention and feed-forward outputs are all zero is
  the identity on the residual stream: it goes whole (`num_layers` drops).
"""

from keras_lk.structure import rules
from keras_lk.structure.describe import BY_NAME

_RESIDUAL = ("'{name}' normalizes the residual stream across its channels "
             "({what}), and its width is the backbone's hidden_dim")
_DERIVED = ("{cls} derives the head size from hidden_dim // {key}: with "
            "fewer heads each head would be wider, a different model")


# keras_hub's own elementwise activations (GPT-2's and BERT's gelu).
_ELEMENTWISE = rules.ELEMENTWISE | {"gelu_approximate"}


def _register(*names):
    def register(rule):
        for name in names:
            BY_NAME[("keras_hub", name)] = rule
        return rule
    return register


def _residual(units, x, what, variables):
    """Slices the residual stream's weights in the block and keeps it."""
    for variable in variables:
        if variable is not None:
            axis = len(variable.shape) - 1
            units.slice(x, variable, axis)
    units.keep(x, _RESIDUAL.format(name=units.name, what=what))


def _norms(units, names):
    found = []
    for name in names:
        for part in ("scale", "gamma", "beta"):
            found.append(units.variable(f"{name}/{part}"))
    return [v for v in found if v is not None]


def _feed_forward(units, x, ins, out, out_bias=None, config="intermediate_dim",
                  per_unit=1, block=None, activation=None, label="ffn"):
    """Units of a feed-forward layer: `ins` the (kernel, bias) pairs that
    make them (gate and up), `out` the kernel that reads them (down)."""
    size = out.shape[0]
    ffn = units.new(size, label, config={config: per_unit}, block=block)
    for kernel, bias in ins:
        units.slice(x, kernel, 0)
        units.slice(ffn, kernel, 1)
        if bias is not None:
            units.slice(ffn, bias, 0)
    units.slice(ffn, out, 0)
    units.slice(x, out, 1)
    if out_bias is not None:
        units.slice(x, out_bias, 0)
    if activation is not None and activation not in _ELEMENTWISE:
        units.keep(ffn, f"the activation of '{units.name}' ({activation}) "
                        "mixes its units")
    return ffn


def _attention(units, x, prefix, heads_first=False, config=None,
               reason=None, also=None, block=None, label="heads"):
    """Heads of an attention layer whose query, key and value kernels are
    `(hidden, heads, head_dim)` (or `(heads, hidden, head_dim)` with
    `heads_first`, Gemma's) and whose output kernel is `(heads, head_dim,
    hidden)`. One unit is one KV head with its query heads."""
    query = units.variable(f"{prefix}query/kernel")
    key = units.variable(f"{prefix}key/kernel")
    value = units.variable(f"{prefix}value/kernel")
    output = units.variable(f"{prefix}attention_output/kernel")
    head_axis, hidden_axis = (0, 1) if heads_first else (1, 0)
    q_heads, kv_heads = query.shape[head_axis], key.shape[head_axis]
    per_group = q_heads // kv_heads
    counts = config(per_group) if callable(config) else config
    heads = units.new(kv_heads, label, config=counts, reason=reason,
                      also=also, block=block)
    for kernel, width in ((query, per_group), (key, 1), (value, 1)):
        units.slice(x, kernel, hidden_axis)
        units.slice(heads, kernel, head_axis, width)
    for part, width in (("query", per_group), ("key", 1), ("value", 1)):
        bias = units.variable(f"{prefix}{part}/bias")
        if bias is not None:
            units.slice(heads, bias, 0, width)
    units.slice(heads, output, 0, per_group)
    units.slice(x, output, len(output.shape) - 1)
    bias = units.variable(f"{prefix}attention_output/bias")
    if bias is not None:
        units.slice(x, bias, 0)
    return heads, output, bias


def _activation_name(layer):
    activation = getattr(layer, "activation", None)
    if activation is None or isinstance(activation, str):
        return activation
    name = getattr(activation, "__name__", None)
    return name if isinstance(name, str) else "a custom one"


@_register("TransformerEncoder", "TransformerDecoder")
def transformer_block(layer, units):
    """keras_hub's TransformerEncoder and TransformerDecoder (BERT, RoBERTa,
    DistilBERT, ALBERT, GPT-2, OPT...): keras.layers.MultiHeadAttention
    inside, a two-layer feed-forward, LayerNorm before (`normalize_first`)
    or after the residual add."""
    x = units.inputs[0]
    cls = type(layer).__name__
    pre_norm = bool(getattr(layer, "normalize_first", False))
    attention = ("self_attention_layer/" if units.variable(
        "self_attention_layer/query/kernel") is not None
        else "self_attention/")
    zero = [units.variable("feedforward_output_dense/kernel"),
            units.variable("feedforward_output_dense/bias")]
    heads_reason = _DERIVED.format(cls=cls, key="num_heads")
    block = None
    if pre_norm:
        block = units.block(zero + [
            units.variable(f"{attention}attention_output/kernel"),
            units.variable(f"{attention}attention_output/bias"),
            units.variable("cross_attention/attention_output/kernel"),
            units.variable("cross_attention/attention_output/bias")])
    _attention(units, x, attention, config={"num_heads": 1},
               reason=heads_reason, block=block)
    if units.variable("cross_attention/query/kernel") is not None:
        _attention(units, x, "cross_attention/", config={"num_heads": 1},
                   reason=heads_reason, block=block, label="cross_heads")
        for other in units.inputs[1:]:
            units.keep(other, f"'{units.name}' reads it in cross-attention")
    _feed_forward(units, x, [
        (units.variable("feedforward_intermediate_dense/kernel"),
         units.variable("feedforward_intermediate_dense/bias"))],
        zero[0], zero[1], block=block, activation=_activation_name(layer))
    _residual(units, x, "LayerNorm", _norms(units, (
        "self_attention_layer_norm", "feedforward_layer_norm",
        "cross_attention_layer_norm")))
    if not pre_norm:
        units.keep(x, f"'{units.name}' normalizes after the residual add "
                      "(normalize_first=False), so it is never the identity "
                      "and cannot go whole")
    return x


# Decoders that take the head size as an argument: a head can go.
_EXPLICIT_HEAD_SIZE = {"GemmaDecoderBlock", "Gemma3DecoderBlock",
                       "MistralTransformerDecoder", "Qwen3TransformerDecoder"}


def _gqa_counts(per_group):
    return {"num_query_heads": per_group, "num_key_value_heads": 1}


@_register("LlamaTransformerDecoder", "MistralTransformerDecoder",
           "QwenTransformerDecoder", "Qwen3TransformerDecoder",
           "Phi3Decoder")
def llama_block(layer, units):
    """The pre-norm decoders of Llama 2 and 3, Mistral, Qwen 2 and 3 and
    Phi-3: grouped-query attention and a gated (SwiGLU) feed-forward."""
    x = units.inputs[0]
    cls = type(layer).__name__
    attention = ("attention/" if units.variable("attention/query/kernel")
                 is not None else "self_attention/")
    down = units.variable("feedforward_output_dense/kernel")
    output = units.variable(f"{attention}attention_output/kernel")
    block = units.block([down, output, units.variable(
        f"{attention}attention_output/bias")])
    explicit = cls in _EXPLICIT_HEAD_SIZE
    query = units.variable(f"{attention}query/kernel")
    also = {"head_dim": int(query.shape[-1])} if explicit else None
    _attention(units, x, attention, config=_gqa_counts,
               reason=None if explicit else _DERIVED.format(
                   cls=cls, key="num_query_heads"),
               also=also, block=block)
    _feed_forward(units, x, [
        (units.variable("feedforward_gate_dense/kernel"), None),
        (units.variable("feedforward_intermediate_dense/kernel"), None)],
        down, block=block)
    _residual(units, x, "RMSNorm", _norms(units, (
        "self_attention_layernorm", "feedforward_layernorm",
        "pre_attention_layernorm", "post_attention_layernorm")))
    return x


@_register("GemmaDecoderBlock", "Gemma3DecoderBlock")
def gemma_block(layer, units):
    """Gemma 1 to 3: `(heads, hidden, head_dim)` query, key and value
    kernels, a gated feed-forward (`ffw_gating`, `ffw_gating_2`,
    `ffw_linear`) whose `intermediate_dim` counts units in Gemma 1 and 2
    twice."""
    x = units.inputs[0]
    down = units.variable("ffw_linear/kernel")
    output = units.variable("attention/attention_output/kernel")
    block = units.block([down, output])
    query = units.variable("attention/query/kernel")
    _attention(units, x, "attention/", heads_first=True, config=_gqa_counts,
               also={"head_dim": int(query.shape[-1])}, block=block)
    size = int(down.shape[0])
    intermediate = int(getattr(layer, "intermediate_dim", size) or size)
    per_unit = intermediate // size if intermediate % size == 0 else None
    ffn = _feed_forward(
        units, x, [(units.variable("ffw_gating/kernel"), None),
                   (units.variable("ffw_gating_2/kernel"), None)],
        down, per_unit=per_unit or 1, block=block)
    if per_unit is None:
        units.keep(ffn, f"'{units.name}' has {size} feed-forward units for "
                        f"intermediate_dim={intermediate}, not a multiple")
    _residual(units, x, "RMSNorm", _norms(units, (
        "pre_attention_norm", "pre_ffw_norm", "post_attention_norm",
        "post_ffw_norm")))
    return x


@_register("GPTNeoXDecoder")
def gpt_neox_block(layer, units):
    """GPT-NeoX (Pythia): a fused query-key-value kernel `(hidden, heads,
    3 * head_dim)`, an output Dense over the heads side by side."""
    x = units.inputs[0]
    fused = units.variable("self_attention/query_key_value/kernel")
    output = units.variable("self_attention/attention_output/kernel")
    down = units.variable("feedforward_output_dense/kernel")
    block = units.block([down, units.variable(
        "feedforward_output_dense/bias"), output, units.variable(
        "self_attention/attention_output/bias")])
    heads = units.new(fused.shape[1], "heads", config={"num_heads": 1},
                      reason=_DERIVED.format(cls=type(layer).__name__,
                                             key="num_heads"), block=block)
    units.slice(x, fused, 0)
    units.slice(heads, fused, 1)
    units.slice(heads, units.variable("self_attention/query_key_value/bias"),
                0)
    units.slice(heads, output, 0, fused.shape[2] // 3)
    units.slice(x, output, 1)
    units.slice(x, units.variable("self_attention/attention_output/bias"), 0)
    _feed_forward(units, x, [
        (units.variable("feedforward_intermediate_dense/kernel"),
         units.variable("feedforward_intermediate_dense/bias"))],
        down, units.variable("feedforward_output_dense/bias"), block=block,
        activation=_activation_name(layer))
    _residual(units, x, "LayerNorm", _norms(units, (
        "self_attention_layer_norm", "feedforward_layer_norm")))
    return x


@_register("ViTEncoder")
def vit_encoder(layer, units):
    """ViT's encoder: one layer that builds `num_layers` pre-norm blocks
    (`transformer_block_1` ...) in `build()`, with one `mlp_dim` for all."""
    x = units.inputs[0]
    count = 0
    while units.variable(f"transformer_block_{count + 1}/mlp/dense_1/kernel"
                         ) is not None:
        count += 1
    for index in range(1, count + 1):
        prefix = f"transformer_block_{index}/"
        owned = [v for v in layer.weights if f"/{prefix}" in v.path]
        down = units.variable(f"{prefix}mlp/dense_2/kernel")
        down_bias = units.variable(f"{prefix}mlp/dense_2/bias")
        block = units.block([down, down_bias, units.variable(
            f"{prefix}mha/attention_output/kernel"), units.variable(
            f"{prefix}mha/attention_output/bias")], weights=owned,
            config="num_layers")
        _attention(units, x, f"{prefix}mha/", config={"num_heads": 1},
                   reason=_DERIVED.format(cls="ViTEncoder", key="num_heads"),
                   block=block, label=f"{prefix}heads")
        _feed_forward(units, x, [
            (units.variable(f"{prefix}mlp/dense_1/kernel"),
             units.variable(f"{prefix}mlp/dense_1/bias"))],
            down, down_bias, config="mlp_dim", block=block,
            label=f"{prefix}mlp")
        _residual(units, x, "LayerNorm", _norms(units, (
            f"{prefix}ln_1", f"{prefix}ln_2")))
    _residual(units, x, "LayerNorm", _norms(units, ("ln",)))
    return x


@_register("PositionEmbedding")
def position_embedding(layer, units):
    """A learned position embedding: its width is its input's, so its
    channels are its input's."""
    x = units.inputs[0]
    for variable in layer.weights:
        units.slice(x, variable, len(variable.shape) - 1)
    return x


@_register("TokenAndPositionEmbedding")
def token_and_position(layer, units):
    out = units.new(layer.embedding_dim, "embedding",
                    config="embedding_dim")
    for variable in layer.weights:
        units.slice(out, variable, len(variable.shape) - 1)
    return out


@_register("ViTPatchingAndEmbedding")
def vit_embedding(layer, units):
    hidden = int(layer.hidden_dim)
    out = units.new(hidden, "embedding", config="hidden_dim")
    for variable in layer.weights:
        if variable.shape and variable.shape[-1] == hidden:
            units.slice(out, variable, len(variable.shape) - 1)
    return out


@_register("RMSNormalization", "LlamaLayerNorm", "MistralLayerNormalization",
           "QwenLayerNorm", "Qwen3LayerNorm", "Phi3LayerNorm",
           "GemmaLayerNorm")
def rms_norm(layer, units):
    x = units.inputs[0]
    for variable in layer.weights:
        units.slice(x, variable, len(variable.shape) - 1)
    units.keep(x, f"'{units.name}' ({type(layer).__name__}) normalizes "
                  "across the channel axis")
    return x
