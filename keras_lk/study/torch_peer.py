"""Torch-Pruning, run live for `keras-lk sweep --structure units`.

The suite's models written in PyTorch (the same layers, sizes,
BatchNormalization momentum and epsilon, optimizer and learning rate),
trained from the same initial weights (copied from the Keras model the
seed builds) on the same batches in the same order, for the same steps.
Torch-Pruning removes the same fraction
of every prunable layer's channels (uniform; the output layer ignored)
progressively: `ITERATIVE_STEPS` pruning steps on the cubic schedule over
the first 3/4 of training, then fine-tuning.

- `torch_dense`: the same training without pruning, the baseline of the
  PyTorch runs (the same initial weights, PyTorch's kernels);
- `tp_magnitude`: `MagnitudePruner` with `MagnitudeImportance(p=2)`;
- `tp_group_norm`: `GroupNormPruner` with `GroupMagnitudeImportance(p=2)`
  and its sparse training (`pruner.regularize(model)` after every backward
  pass until the schedule ends, its default `reg`; `update_regularizer()`
  after each pruning step).

On the Transformer (heads and feed-forward units, its residual stream
kept) Torch-Pruning prunes in one step at the end of the schedule: its
iterated head pruning fails on two heads (see `run`).

Needs `torch` and `torch-pruning` (`pip install torch torch-pruning`).
"""

import math
import statistics
import time

import numpy as np

from keras_lk.sparsity.schedule import POWER
from keras_lk.study import suite, suite_data

ITERATIVE_STEPS = 10
END_FRACTION = 0.75
LATENCY_BATCH = 32


def _modules():
    try:
        import torch
        import torch_pruning
    except ImportError as error:
        raise RuntimeError(
            "The Torch-Pruning methods (tp_magnitude, tp_group_norm) run "
            "Torch-Pruning in PyTorch: pip install torch torch-pruning. "
            f"({error})") from error
    return torch, torch_pruning


def copy_weights(keras_model, net):
    """Gives `net` the initial weights of `keras_model`, the same suite
    model written in Keras: each Dense, Conv2D and BatchNormalization
    layer to the PyTorch module of the same name (`net.keras_names`) or,
    without names, in order; kernels transposed to PyTorch's layout."""
    torch, _ = _modules()
    nn = torch.nn
    if keras_model.name == "transformer":
        return _copy_transformer(keras_model, net)
    layers = [layer for layer in keras_model.layers if layer.weights]
    names = getattr(net, "keras_names", None)
    if names is not None:
        modules = [names[layer.name] for layer in layers]
    else:
        modules = [m for m in net.modules()
                   if isinstance(m, (nn.Linear, nn.Conv2d, nn.BatchNorm2d))]
    if len(layers) != len(modules):
        raise RuntimeError(
            f"{keras_model.name}: {len(layers)} Keras layers with weights, "
            f"{len(modules)} PyTorch ones")
    with torch.no_grad():
        for layer, module in zip(layers, modules):
            values = [np.asarray(w) for w in layer.get_weights()]
            if isinstance(module, nn.BatchNorm2d):
                targets = [module.weight, module.bias, module.running_mean,
                           module.running_var]
            else:
                kernel = values[0]
                values[0] = (kernel.T if kernel.ndim == 2
                             else kernel.transpose(3, 2, 0, 1))
                targets = [module.weight] + (
                    [module.bias] if module.bias is not None else [])
            for target, value in zip(targets, values, strict=True):
                if tuple(target.shape) != value.shape:
                    raise RuntimeError(
                        f"{layer.name}: shape {value.shape} for PyTorch's "
                        f"{tuple(target.shape)}")
                target.copy_(torch.from_numpy(np.ascontiguousarray(value)))


def build(model, seed):
    """`(torch module, its output layer, optimizer factory)`, with the
    initial weights of the suite's Keras model for `seed`."""
    torch, _ = _modules()
    nn = torch.nn
    torch.manual_seed(seed)

    def bn(channels):
        # Keras's BatchNormalization: momentum 0.99, epsilon 1e-3.
        return nn.BatchNorm2d(channels, eps=1e-3, momentum=0.01)

    if model == "digits_mlp":
        output = nn.Linear(64, 10)
        net = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), output)
        return net, output, lambda p: torch.optim.SGD(p, lr=0.1)
    if model == "digits_conv":

        class ChannelsLast(nn.Module):
            # Keras flattens channels last.
            def forward(self, x):
                return x.permute(0, 2, 3, 1)

        output = nn.Linear(32 * 4 * 4, 10)
        net = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            ChannelsLast(), nn.Flatten(), output)
        return net, output, lambda p: torch.optim.SGD(p, lr=0.05)
    if model == "digits_resnet":

        class Block(nn.Module):
            def __init__(self, inputs, filters, stride):
                super().__init__()
                # Keras's "same" padding with stride 2 pads one row and
                # column after, none before.
                self.pad = (nn.ZeroPad2d((0, 1, 0, 1)) if stride != 1
                            else nn.ZeroPad2d(1))
                self.a = nn.Conv2d(inputs, filters, 3, stride, 0, bias=False)
                self.a_bn = bn(filters)
                self.b = nn.Conv2d(filters, filters, 3, 1, 1, bias=False)
                self.b_bn = bn(filters)
                self.skip = None
                if stride != 1:
                    self.skip = nn.Sequential(
                        nn.Conv2d(inputs, filters, 1, stride, bias=False),
                        bn(filters))

            def forward(self, x):
                y = self.b_bn(self.b(torch.relu(self.a_bn(self.a(
                    self.pad(x))))))
                return torch.relu((x if self.skip is None
                                   else self.skip(x)) + y)

        output = nn.Linear(32, 10)
        blocks = [Block(16, 16, 1), Block(16, 32, 2)]
        net = nn.Sequential(
            nn.Conv2d(1, 16, 3, 1, 1, bias=False), bn(16), nn.ReLU(),
            *blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten(), output)
        names = {"stem": net[0], "stem_bn": net[1], "output": output}
        for index, block in enumerate(blocks, 1):
            names.update({f"block_{index}_a": block.a,
                          f"block_{index}_a_bn": block.a_bn,
                          f"block_{index}_b": block.b,
                          f"block_{index}_b_bn": block.b_bn})
            if block.skip is not None:
                names.update({f"block_{index}_skip": block.skip[0],
                              f"block_{index}_skip_bn": block.skip[1]})
        # A plain attribute (not a module dict): the modules stay where
        # they are in the graph Torch-Pruning traces.
        object.__setattr__(net, "keras_names", names)
        return net, output, lambda p: torch.optim.SGD(p, lr=0.05,
                                                      momentum=0.9)
    if model == "transformer":
        return _transformer(torch), None, lambda p: torch.optim.Adam(
            p, lr=3e-3, eps=1e-7)  # Keras's Adam epsilon
    raise ValueError(f"No PyTorch version of suite model {model!r}; the "
                     "Torch-Pruning methods run on digits_mlp, digits_conv, "
                     "digits_resnet and transformer.")


def _transformer(torch):
    """The suite's Transformer block: attention written with separate
    query/key/value projections, the form whose heads Torch-Pruning
    removes (`num_heads`, `prune_num_heads`)."""
    nn = torch.nn

    class Attention(nn.Module):
        def __init__(self, dim=32, heads=2, head_dim=16):
            super().__init__()
            self.num_heads, self.head_dim = heads, head_dim
            self.q = nn.Linear(dim, heads * head_dim)
            self.k = nn.Linear(dim, heads * head_dim)
            self.v = nn.Linear(dim, heads * head_dim)
            self.out = nn.Linear(heads * head_dim, dim)

        def forward(self, x):
            b, length, _ = x.shape

            def split(t):
                return t.reshape(b, length, self.num_heads,
                                 self.head_dim).transpose(1, 2)

            q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))
            weights = torch.softmax(
                q @ k.transpose(-1, -2) / self.head_dim ** 0.5, -1)
            mixed = (weights @ v).transpose(1, 2).reshape(
                b, length, self.num_heads * self.head_dim)
            return self.out(mixed)

    class Transformer(nn.Module):
        def __init__(self):
            super().__init__()
            self.tokens = nn.Embedding(suite_data.TOKENS, 32)
            self.position = nn.Parameter(torch.zeros(suite_data.SEQUENCE,
                                                     32))
            self.mha = Attention()
            # Keras's LayerNormalization: epsilon 1e-3.
            self.norm_1 = nn.LayerNorm(32, eps=1e-3)
            self.ffn_1 = nn.Linear(32, 64)
            self.ffn_2 = nn.Linear(64, 32)
            self.norm_2 = nn.LayerNorm(32, eps=1e-3)
            self.output = nn.Linear(32, 6)

        def forward(self, tokens):
            x = self.tokens(tokens) + self.position
            x = self.norm_1(x + self.mha(x))
            x = self.norm_2(x + self.ffn_2(torch.relu(self.ffn_1(x))))
            return self.output(x.mean(1))

    return Transformer()


def _copy_transformer(keras_model, net):
    torch, _ = _modules()
    weights = {layer.name: [np.asarray(w) for w in layer.get_weights()]
               for layer in keras_model.layers if layer.weights}

    def put(target, value):
        if tuple(target.shape) != value.shape:
            raise RuntimeError(f"shape {value.shape} for PyTorch's "
                               f"{tuple(target.shape)}")
        target.copy_(torch.from_numpy(np.ascontiguousarray(value)))

    with torch.no_grad():
        put(net.tokens.weight, weights["tokens"][0])
        put(net.position, weights["position"][0])
        (qk, qb, kk, kb, vk, vb, ok, ob) = weights["mha"]
        for linear, kernel, bias in ((net.mha.q, qk, qb), (net.mha.k, kk, kb),
                                     (net.mha.v, vk, vb)):
            put(linear.weight, kernel.reshape(kernel.shape[0], -1).T)
            put(linear.bias, bias.reshape(-1))
        put(net.mha.out.weight, ok.reshape(-1, ok.shape[-1]).T)
        put(net.mha.out.bias, ob)
        for name in ("norm_1", "norm_2"):
            put(getattr(net, name).weight, weights[name][0])
            put(getattr(net, name).bias, weights[name][1])
        for name in ("ffn_1", "ffn_2", "output"):
            put(getattr(net, name).weight, weights[name][0].T)
            put(getattr(net, name).bias, weights[name][1])


def _tensor(x, model):
    torch, _ = _modules()
    if np.issubdtype(np.asarray(x).dtype, np.integer):
        return torch.from_numpy(np.asarray(x, "int64"))
    x = np.asarray(x, "float32")
    if x.ndim == 4:
        x = x.transpose(0, 3, 1, 2)  # NHWC -> NCHW
    return torch.from_numpy(np.ascontiguousarray(x))


def cubic(pruning_ratio, steps):
    """Torch-Pruning's ratio scheduler, on gradual magnitude pruning's
    cubic: `[ratio * (1 - (1 - i / steps)^3) for i in 0..steps]`."""
    return [pruning_ratio * (1 - (1 - i / steps) ** POWER)
            for i in range(steps + 1)]


def run(run, data, fraction, epochs, counts=None):
    """One Torch-Pruning run; returns `(test accuracy, MACs left as a
    fraction of dense, parameters, latency in ms)`. `counts`:
    keras_lk's units removed per group (`uniform_fraction`), which set the
    Transformer's head ratio (its 2 heads: 1/2 for one head)."""
    torch, tp = _modules()
    entry = suite.MODELS[run.model]
    x_train, y_train, x_test, y_test = data
    x_train, y_train = suite_data.fixed_order(x_train, y_train, run.seed,
                                              epochs)
    net, output, make_optimizer = build(run.model, run.seed)
    output = output if output is not None else net.output
    copy_weights(entry.build(None, run.seed), net)
    example = _tensor(x_train[:1], run.model)
    dense_macs, _ = tp.utils.count_ops_and_params(net, example)
    steps_of_pruning = ITERATIVE_STEPS
    if run.model == "transformer":
        # Torch-Pruning 1.6 removes heads in one step only: iterated, its
        # head count reaches 0 after the first of two heads goes, and a
        # later step divides by it (ZeroDivisionError). One step at the
        # end of the schedule, as one-shot pruning.
        steps_of_pruning = 1
    options = dict(pruning_ratio=fraction, iterative_steps=steps_of_pruning,
                   iterative_pruning_ratio_scheduler=cubic,
                   ignored_layers=[output])
    if run.model == "transformer":
        # Heads and feed-forward units, as keras_lk: the residual stream
        # (LayerNormalization) stays, so the layers that write it are
        # ignored.
        attention = net.mha
        options.update(
            ignored_layers=[net.output, net.ffn_2, attention.out],
            num_heads={attention.q: 2, attention.k: 2, attention.v: 2},
            prune_num_heads=True, prune_head_dims=False,
            head_pruning_ratio=(counts or {}).get("mha/heads", 0) / 2,
            unwrapped_parameters=[(net.position, 1)])
    if run.method == "torch_dense":
        pruner = None
    elif run.method == "tp_magnitude":
        pruner = tp.pruner.MagnitudePruner(
            net, example, tp.importance.MagnitudeImportance(p=2), **options)
    else:
        pruner = tp.pruner.GroupNormPruner(
            net, example, tp.importance.GroupMagnitudeImportance(p=2),
            **options)
    batch = entry.batch_size
    steps = math.ceil(len(x_train) / batch)
    end = max(1, int(END_FRACTION * steps))
    prune_at = {max(1, round(end * i / steps_of_pruning))
                for i in range(1, steps_of_pruning + 1)}
    optimizer = make_optimizer(net.parameters())
    loss_of = torch.nn.CrossEntropyLoss()
    net.train()
    for step in range(1, steps + 1):
        xs = _tensor(x_train[(step - 1) * batch:step * batch], run.model)
        ys = torch.from_numpy(np.asarray(
            y_train[(step - 1) * batch:step * batch], "int64"))
        optimizer.zero_grad()
        loss = loss_of(net(xs), ys)
        loss.backward()
        if run.method == "tp_group_norm" and step <= end:
            pruner.regularize(net)
        optimizer.step()
        if pruner is not None and step in prune_at:
            pruner.step()
            if run.model == "transformer":
                net.mha.num_heads = (net.mha.q.out_features
                                     // net.mha.head_dim)
            if run.method == "tp_group_norm":
                pruner.update_regularizer()  # the groups changed shape
            # The parameters changed shape: a new optimizer over them.
            optimizer = make_optimizer(net.parameters())
    net.eval()
    with torch.no_grad():
        logits = net(_tensor(x_test, run.model))
        accuracy = float((logits.argmax(1).numpy() == np.asarray(
            y_test)).mean())
        pruned_macs, parameters = tp.utils.count_ops_and_params(net, example)
        sample = _tensor(x_test[:LATENCY_BATCH], run.model)
        net(sample)
        times = []
        for _ in range(20):
            start = time.perf_counter()
            net(sample)
            times.append(time.perf_counter() - start)
    return (accuracy, float(pruned_macs / dense_macs), int(parameters),
            1000 * statistics.median(times))
