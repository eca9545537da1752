"""What each kind of layer does to the channels of its inputs.

A rule takes the analysis (`Spaces`), the call (`Node`), its layer and the
`Channels` of its tensor inputs, records the weight slices the layer holds
for each unit, and returns the `Channels` of its output. Layers that make
new units (Dense, convolutions, recurrent layers, attention heads,
embeddings) open a space; per-channel layers (BatchNormalization,
activations, pooling, dropout, padding) pass the map through and slice
their per-channel weights; merges tie spaces together. A layer without a
rule keeps every unit it touches, with the reason.
"""

import numpy as np

from keras_lk.structure.channels import UNKNOWN, Channels

# Activations that act on each value alone (f applied per element).
ELEMENTWISE = {
    "linear", "relu", "relu6", "leaky_relu", "elu", "selu", "gelu", "silu",
    "swish", "sigmoid", "hard_sigmoid", "hard_silu", "hard_swish", "tanh",
    "softplus", "softsign", "exponential", "mish", "log_sigmoid", "celu",
    "hard_tanh", "tanh_shrink", "soft_shrink", "hard_shrink",
    "squareplus", "sparse_plus", "sparse_sigmoid"}

PASS_THROUGH = {
    "Dropout", "SpatialDropout1D", "SpatialDropout2D", "SpatialDropout3D",
    "GaussianDropout", "GaussianNoise", "AlphaDropout",
    "ActivityRegularization", "Identity", "ReLU", "LeakyReLU", "ELU",
    "ThresholdedReLU",
    "MaxPooling1D", "MaxPooling2D", "MaxPooling3D", "AveragePooling1D",
    "AveragePooling2D", "AveragePooling3D", "GlobalMaxPooling1D",
    "GlobalMaxPooling2D", "GlobalMaxPooling3D", "GlobalAveragePooling1D",
    "GlobalAveragePooling2D", "GlobalAveragePooling3D", "ZeroPadding1D",
    "ZeroPadding2D", "ZeroPadding3D", "Cropping1D", "Cropping2D",
    "Cropping3D", "UpSampling1D", "UpSampling2D", "UpSampling3D",
    "RepeatVector", "Masking"}

MERGES = {"Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum"}
# Operations written as `x + 3.0` or `ops.multiply(a, b)` in a graph.
ELEMENTWISE_OPS = {"Add", "Subtract", "Multiply", "Maximum", "Minimum",
                   "Divide", "TrueDivide", "Power", "Negative", "Abs",
                   "Relu", "Relu6", "Sigmoid", "HardSigmoid", "Silu",
                   "HardSilu", "Gelu", "Tanh", "Elu", "Selu", "Softplus"}


def activation_name(value):
    """The name of a config's activation, or None when it is not a
    built-in one."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and value.get("module") in (
            "keras.activations", "builtins", None):
        name = value.get("config", value.get("class_name"))
        return name if isinstance(name, str) else None
    return None


def channels_last(node):
    return node.config.get("data_format", "channels_last") in (
        None, "channels_last")


def _variable(layer, suffix):
    """The variable of `layer` whose path ends with `suffix`."""
    for variable in layer.weights:
        if variable.path.endswith(suffix):
            return variable
    return None


def _single(positions):
    return positions[:, None]


def dense(spaces, node, layer, maps, shape):
    (x,) = maps[:1]
    spaces.record(x, node.name, layer.kernel, 0, _single)
    out = spaces.new(layer.units, node.name)
    spaces.record(out, node.name, layer.kernel, 1, _single)
    if layer.bias is not None:
        spaces.record(out, node.name, layer.bias, 0, _single)
    spaces.edit(node.name, "units", out)
    _check_activation(spaces, node, out)
    return out


def _check_activation(spaces, node, out):
    name = activation_name(node.config.get("activation", "linear"))
    if name not in ELEMENTWISE:
        what = name or "a custom one"
        spaces.keep(out, f"the activation of '{node.name}' ({what}) mixes "
                         "its units")


def conv(spaces, node, layer, maps, shape):
    x = maps[0]
    transpose = "Transpose" in node.class_name
    groups = node.config.get("groups", 1)
    if not transpose and groups == len(x) == layer.filters and groups > 1:
        return _channelwise(spaces, node, layer, x)
    if not channels_last(node) or groups != 1:
        return unknown(spaces, node, maps, shape,
                       "channels_first or grouped convolutions")
    rank = len(layer.kernel.shape)
    in_axis, out_axis = (rank - 1, rank - 2) if transpose else (
        rank - 2, rank - 1)
    spaces.record(x, node.name, layer.kernel, in_axis, _single)
    out = spaces.new(layer.filters, node.name)
    spaces.record(out, node.name, layer.kernel, out_axis, _single)
    if layer.bias is not None:
        spaces.record(out, node.name, layer.bias, 0, _single)
    spaces.edit(node.name, "filters", out)
    _check_activation(spaces, node, out)
    return out


def _channelwise(spaces, node, layer, x):
    """A convolution with one group per channel (ConvNeXt's depthwise
    convolution): each channel keeps its own filter and bias."""
    rank = len(layer.kernel.shape)
    spaces.record(x, node.name, layer.kernel, rank - 1, _single)
    if layer.bias is not None:
        spaces.record(x, node.name, layer.bias, 0, _single)
    spaces.edit(node.name, "filters", x)
    spaces.edit(node.name, "groups", x)
    _check_activation(spaces, node, x)
    return x


def depthwise(spaces, node, layer, maps, shape):
    x = maps[0]
    if not channels_last(node):
        return unknown(spaces, node, maps, shape, "channels_first")
    m = layer.depth_multiplier
    kernel = _variable(layer, "kernel")
    rank = len(kernel.shape)
    spaces.record(x, node.name, kernel, rank - 2, _single)
    bias = _variable(layer, "bias")
    if bias is not None:
        spaces.record(x, node.name, bias, 0,
                      lambda p: p[:, None] * m + np.arange(m))
    out = x.repeat(m)
    _check_activation(spaces, node, out)
    return out


def separable(spaces, node, layer, maps, shape):
    x = maps[0]
    if not channels_last(node):
        return unknown(spaces, node, maps, shape, "channels_first")
    m = layer.depth_multiplier
    dw, pw = layer.depthwise_kernel, layer.pointwise_kernel
    rank = len(dw.shape)
    spaces.record(x, node.name, dw, rank - 2, _single)
    spaces.record(x, node.name, pw, rank - 2,
                  lambda p: p[:, None] * m + np.arange(m))
    out = spaces.new(layer.filters, node.name)
    spaces.record(out, node.name, pw, rank - 1, _single)
    if layer.bias is not None:
        spaces.record(out, node.name, layer.bias, 0, _single)
    spaces.edit(node.name, "filters", out)
    _check_activation(spaces, node, out)
    return out


def batch_norm(spaces, node, layer, maps, shape):
    x = maps[0]
    axis = node.config.get("axis", -1)
    axis = axis[0] if isinstance(axis, (list, tuple)) and len(axis) == 1 \
        else axis
    if not isinstance(axis, int) or axis not in (-1, len(shape) - 1):
        spaces.keep(x, f"'{node.name}' normalizes along axis {axis}, not "
                       "the channel axis")
        return x
    for variable in layer.weights:
        statistic = variable.path.endswith(("moving_mean", "moving_variance"))
        spaces.record(x, node.name, variable, 0, _single,
                      counted=not statistic)
    return x


def per_channel(spaces, node, layer, maps, shape):
    """PReLU: its alpha has one entry per channel unless shared."""
    x = maps[0]
    for variable in layer.weights:
        if variable.shape and variable.shape[-1] == len(x) > 1:
            spaces.record(x, node.name, variable, len(variable.shape) - 1,
                          _single)
    return x


def _recurrent_units(spaces, name, layer, x):
    """Records an LSTM's, GRU's or SimpleRNN's slices: `x`'s units slice its
    kernel's rows; each of its units is a column per gate of the kernel, of
    the recurrent kernel and of the bias, and a row of the recurrent
    kernel. Returns its units."""
    units = layer.units
    kernel = _variable(layer, "/kernel")
    recurrent_kernel = _variable(layer, "recurrent_kernel")
    bias = _variable(layer, "/bias")
    gates = kernel.shape[-1] // units
    by_gate = lambda p: p[:, None] + units * np.arange(gates)  # noqa: E731
    spaces.record(x, name, kernel, 0, _single)
    out = spaces.new(units, name)
    spaces.record(out, name, kernel, 1, by_gate)
    spaces.record(out, name, recurrent_kernel, 1, by_gate)
    spaces.record(out, name, recurrent_kernel, 0, _single)
    if bias is not None:
        spaces.record(out, name, bias, len(bias.shape) - 1, by_gate)
    return out


def _plain_recurrent(node, config, maps):
    return not (config.get("stateful") or len(maps) > 1
                or node.kwargs.get("initial_state"))


def recurrent(spaces, node, layer, maps, shape):
    if not _plain_recurrent(node, node.config, maps):
        return unknown(spaces, node, maps, shape,
                       "stateful recurrent layers or initial states")
    out = _recurrent_units(spaces, node.name, layer, maps[0])
    spaces.edit(node.name, "units", out)
    _check_activation(spaces, node, out)
    return out


def bidirectional(spaces, node, layer, maps, shape):
    """Both directions lose the same units; their outputs are
    concatenated, or combined position by position."""
    forward, backward = layer.forward_layer, layer.backward_layer
    inner = node.config.get("layer", {})
    mode = node.config.get("merge_mode", "concat")
    if (inner.get("class_name") not in ("LSTM", "GRU", "SimpleRNN")
            or not _plain_recurrent(node, inner.get("config", {}), maps)
            or mode not in ("concat", "sum", "mul", "ave")
            or inner.get("config", {}).get("return_state")):
        return unknown(spaces, node, maps, shape,
                       "this Bidirectional layer (a stateful or custom "
                       "layer, states returned, or no merge)")
    ahead = _recurrent_units(spaces, node.name, forward, maps[0])
    behind = _recurrent_units(spaces, node.name, backward, maps[0])
    spaces.tie([ahead, behind], node.name)
    spaces.edit(node.name, ("layer", "config", "units"), ahead, kind="path")
    if node.config.get("backward_layer"):
        spaces.edit(node.name, ("backward_layer", "config", "units"), ahead,
                    kind="path")
    return Channels.join([ahead, behind]) if mode == "concat" else ahead


def embedding(spaces, node, layer, maps, shape):
    out = spaces.new(layer.output_dim, node.name)
    spaces.record(out, node.name, layer.embeddings, 1, _single)
    spaces.edit(node.name, "output_dim", out)
    return out


def reversible_embedding(spaces, node, layer, maps, shape):
    """Embedding with its reverse projection (the output head of a
    language model when untied): one space for both. Called with
    `reverse=True` (a CausalLM's logits), it reads its input's channels
    through the embeddings and makes the vocabulary."""
    if node.options.get("reverse"):
        x = maps[0]
        spaces.record(x, node.name, layer.embeddings, 1, _single)
        reverse = _variable(layer, "reverse_embeddings")
        if reverse is not None:
            spaces.record(x, node.name, reverse, 0, _single)
        return spaces.new(layer.input_dim, node.name)
    out = embedding(spaces, node, layer, maps, shape)
    reverse = _variable(layer, "reverse_embeddings")
    if reverse is not None:
        spaces.record(out, node.name, reverse, 0, _single)
    return out


def attention(spaces, node, layer, maps, shape):
    """MultiHeadAttention: the heads are one space (query, key, value and
    output slices together); its inputs' units slice the projections."""
    query = maps[0]
    value = maps[1] if len(maps) > 1 else query
    key = maps[2] if len(maps) > 2 else value
    if "key" in node.kwargs or "value" in node.kwargs:
        return unknown(spaces, node, maps, shape,
                       "query, key or value passed by keyword")
    find = lambda suffix: _variable(layer, suffix)  # noqa: E731
    for part, channels in (("query", query), ("key", key), ("value", value)):
        spaces.record(channels, node.name, find(f"{part}/kernel"), 0,
                      _single)
    heads = spaces.new(layer.num_heads, f"{node.name}/heads")
    for part in ("query", "key", "value"):
        spaces.record(heads, node.name, find(f"{part}/kernel"), 1, _single)
        bias = find(f"{part}/bias")
        if bias is not None:
            spaces.record(heads, node.name, bias, 0, _single)
    output_kernel = find("attention_output/kernel")
    spaces.record(heads, node.name, output_kernel, 0, _single)
    spaces.edit(node.name, "num_heads", heads)
    if node.options.get("return_attention_scores"):
        spaces.keep(heads, f"'{node.name}' returns its attention scores")
    out = spaces.new(output_kernel.shape[-1], node.name)
    spaces.record(out, node.name, output_kernel,
                  len(output_kernel.shape) - 1, _single)
    output_bias = find("attention_output/bias")
    if output_bias is not None:
        spaces.record(out, node.name, output_bias, 0, _single)
    spaces.edit(node.name, "output_shape", out, kind="output_shape")
    return out


def merge(spaces, node, layer, maps, shape):
    full = [m for m in maps if len(m) == max(len(m) for m in maps)]
    for m in maps:
        if len(m) != len(full[0]):
            spaces.keep(m, f"'{node.name}' broadcasts it over channels")
    if node.class_name in ("Divide", "TrueDivide", "Power") and len(maps) > 1:
        spaces.keep(maps[1], f"'{node.name}' divides by it or raises to it")
    if node.constants and any(np.ndim(c) > 0 for c in node.constants):
        spaces.keep(full[0], f"'{node.name}' combines it with a constant "
                             "array")
    spaces.tie(full, node.name)
    return full[0]


def pad(spaces, node, layer, maps, shape):
    """`keras.ops.pad` on a symbolic tensor: a pass-through when the
    channel axis is not padded."""
    widths = node.config.get("pad_width")
    try:
        last = [int(w) for w in widths[-1]]
    except (TypeError, ValueError, IndexError):
        last = None
    if last != [0, 0]:
        spaces.keep(maps[0], f"'{node.name}' pads the channel axis")
    return maps[0]


def concatenate(spaces, node, layer, maps, shape):
    axis = node.config.get("axis", -1)
    if axis in (-1, len(shape) - 1):
        return Channels.join(maps)
    return merge(spaces, node, layer, maps, shape)


def flatten(spaces, node, layer, maps, shape, in_shape):
    x = maps[0]
    if not channels_last(node):
        return unknown(spaces, node, maps, shape, "channels_first")
    positions = int(np.prod(in_shape[1:-1])) if len(in_shape) > 2 else 1
    return x.tile(positions)


def reshape(spaces, node, layer, maps, shape, in_shape):
    x = maps[0]
    target = list(node.config.get("target_shape", ()))
    if target and target[-1] == len(x) and in_shape[-1] == len(x):
        spaces.edit(node.name, "target_shape", x, kind="last")
        return x
    spaces.keep(x, f"'{node.name}' (Reshape to {tuple(target)}) moves the "
                   "channel axis")
    return spaces.new(shape[-1] or 0, node.name, "made by a Reshape")


def activation(spaces, node, layer, maps, shape):
    name = activation_name(node.config.get("activation"))
    if name not in ELEMENTWISE:
        what = name or "a custom activation"
        spaces.keep(maps[0], f"'{node.name}' applies {what}, which mixes "
                             "channels")
    return maps[0]


def rescaling(spaces, node, layer, maps, shape):
    scale, offset = node.config.get("scale"), node.config.get("offset")
    if np.ndim(scale) or np.ndim(offset):
        spaces.keep(maps[0], f"'{node.name}' scales each channel by its own "
                             "constant")
    return maps[0]


def unknown(spaces, node, maps, shape, what=None):
    because = (f"keras_lk cannot rebuild {what} ('{node.name}')" if what
               else f"'{node.name}' is a {node.class_name}, a layer "
               "keras_lk cannot look inside")
    for m in maps:
        spaces.keep(m, because, kind=UNKNOWN)
    return None


def keep_all(reason):
    """A rule for layers that mix the channels of their input (the
    normalizations across channels, softmax)."""
    def rule(spaces, node, layer, maps, shape):
        for m in maps:
            spaces.keep(m, f"'{node.name}' ({node.class_name}) {reason}")
        return maps[0] if maps else None
    return rule


RULES = {
    "Dense": dense, "Conv1D": conv, "Conv2D": conv, "Conv3D": conv,
    "Conv1DTranspose": conv, "Conv2DTranspose": conv,
    "Conv3DTranspose": conv, "DepthwiseConv1D": depthwise,
    "DepthwiseConv2D": depthwise, "SeparableConv1D": separable,
    "SeparableConv2D": separable, "BatchNormalization": batch_norm,
    "PReLU": per_channel, "LSTM": recurrent, "GRU": recurrent,
    "SimpleRNN": recurrent, "Bidirectional": bidirectional,
    "Embedding": embedding, "ReversibleEmbedding": reversible_embedding,
    "MultiHeadAttention": attention, "Concatenate": concatenate,
    "Activation": activation, "Rescaling": rescaling,
    "LayerNormalization": keep_all("normalizes across the channel axis"),
    "GroupNormalization": keep_all("normalizes across groups of channels"),
    "UnitNormalization": keep_all("normalizes across the channel axis"),
    "RMSNormalization": keep_all("normalizes across the channel axis"),
    "Softmax": keep_all("normalizes across the channel axis"),
    "Normalization": keep_all("shifts and scales each channel by its own "
                              "constants"),
}
for _name in MERGES:
    RULES[_name] = merge
# InceptionResNetV2's residual: inputs[0] + inputs[1] * scale.
RULES["CustomScaleLayer"] = merge
