"""The peer, run live: Torch-Pruning's 50% uniform magnitude pruning of
ResNet-50 beside keras_lk's `prune_units(model, 0.5)` + `shrink` of Keras's
ResNet50, on the same machine, in one process.

    pip install torch-pruning==1.6.0        # beside torch (CPU) 2.13
    KERAS_BACKEND=torch python benchmarks/torch_pruning_peer.py \
        [--side 160] [--rounds 5] [--batches 1 16]

ResNet-50 is written here in PyTorch (torchvision's design: bottleneck
blocks with the stride on the 3x3 convolution), because torchvision 0.28
from PyPI does not load beside the CPU build of PyTorch 2.13 ("operator
torchvision::nms does not exist"). Torch-Pruning: `MagnitudePruner` with
`MagnitudeImportance(p=2)` (group L2 norm), `pruning_ratio=0.5`, the
classifier ignored, one step: its documented ResNet-50 example. keras_lk:
`keras.applications.ResNet50(weights=None)`, `prune_units(model, 0.5)`
(group L2 norm, the output layer kept), `shrink`.

Both sides are counted with the same rule (multiply-accumulates of the
convolutions and dense layers, per image: `keras_lk.macs`'s), and
Torch-Pruning's own counter is shown beside it. Latency: the median call,
dense then pruned, alternating over rounds, batch 1 and 16, PyTorch's eval
mode under `no_grad` for Torch-Pruning, `predict_on_batch` for Keras. With
KERAS_BACKEND=torch both run on PyTorch's CPU kernels. Written to
benchmarks/results/torch_pruning_peer_<backend>.json. Not part of the test
command.
"""

import argparse
import json
import os
import pathlib
import statistics
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from bench_shrink import median_call  # noqa: E402

RESULTS = pathlib.Path(__file__).resolve().parent / "results"


class Bottleneck(nn.Module):
    def __init__(self, inputs, width, stride):
        super().__init__()
        outputs = 4 * width
        self.conv1 = nn.Conv2d(inputs, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, outputs, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(outputs)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or inputs != outputs:
            self.downsample = nn.Sequential(
                nn.Conv2d(inputs, outputs, 1, stride, bias=False),
                nn.BatchNorm2d(outputs))

    def forward(self, x):
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(y + shortcut)


class ResNet50(nn.Module):
    def __init__(self, classes=1000):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        stages, inputs = [], 64
        for width, blocks, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2),
                                      (512, 3, 2)):
            layers = []
            for index in range(blocks):
                layers.append(Bottleneck(inputs, width,
                                         stride if index == 0 else 1))
                inputs = 4 * width
            stages.append(nn.Sequential(*layers))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(inputs, classes)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def lively_torch(model, seed=0):
    """Random BatchNorm statistics, scales and offsets, as on the Keras
    side, so that the magnitude ranks are not ties."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            n = module.num_features
            module.weight.data = torch.rand(n, generator=generator) + 0.5
            module.bias.data = 0.1 * torch.randn(n, generator=generator)
            module.running_mean = 0.1 * torch.randn(n, generator=generator)
            module.running_var = torch.rand(n, generator=generator) + 0.5
    return model


def torch_macs(model, side):
    """Multiply-accumulates of the convolutions and linear layers for one
    image: the rule of `keras_lk.macs`."""
    total = []

    def count(module, inputs, output):
        if isinstance(module, nn.Conv2d):
            kernel = module.kernel_size[0] * module.kernel_size[1]
            total.append(output.shape[2] * output.shape[3] * kernel
                         * module.in_channels // module.groups
                         * module.out_channels)
        elif isinstance(module, nn.Linear):
            total.append(module.in_features * module.out_features)

    hooks = [m.register_forward_hook(count) for m in model.modules()
             if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        model(torch.zeros(1, 3, side, side))
    for hook in hooks:
        hook.remove()
    return int(sum(total))


def latency(dense, pruned, make, args):
    """`{batch: (dense ms, pruned ms)}`, alternating rounds."""
    found = {}
    for batch in args.batches:
        x = make(batch)
        for function in (dense, pruned):
            for _ in range(3):
                function(x)
        calls = max(3, args.calls // batch)
        a, b = [], []
        for _ in range(args.rounds):
            a.append(median_call(dense, x, calls))
            b.append(median_call(pruned, x, calls))
        found[batch] = (1e3 * statistics.median(a),
                        1e3 * statistics.median(b))
    return found


def torch_pruning_side(args):
    import torch_pruning as tp
    torch.manual_seed(0)
    model = lively_torch(ResNet50().eval())
    example = torch.randn(1, 3, args.side, args.side)
    dense = lively_torch(ResNet50().eval())
    dense.load_state_dict(model.state_dict())
    before = (sum(p.numel() for p in model.parameters()),
              torch_macs(model, args.side),
              tp.utils.count_ops_and_params(model, example)[0])
    pruner = tp.pruner.MagnitudePruner(
        model, example, importance=tp.importance.MagnitudeImportance(p=2),
        pruning_ratio=0.5, ignored_layers=[model.fc])
    pruner.step()
    after = (sum(p.numel() for p in model.parameters()),
             torch_macs(model, args.side),
             tp.utils.count_ops_and_params(model, example)[0])

    def run(net):
        def call(x):
            with torch.no_grad():
                return net(x)
        return call

    times = latency(run(dense), run(model), lambda b: torch.randn(
        b, 3, args.side, args.side), args)
    return {"tool": "Torch-Pruning 1.6.0 (MagnitudePruner, PyTorch "
                    f"{torch.__version__})",
            "params": before[0], "params_after": after[0],
            "macs": before[1], "macs_after": after[1],
            "own_count": before[2], "own_count_after": after[2],
            "latency": times}


def keras_lk_side(args):
    import keras
    import keras_lk
    keras.utils.set_random_seed(0)
    model = keras.applications.ResNet50(
        weights=None, input_shape=(args.side, args.side, 3))
    rng = np.random.default_rng(0)
    for variable in model.weights:
        if variable.path.endswith(("moving_variance", "gamma")):
            variable.assign(rng.uniform(0.5, 1.5, variable.shape))
        elif variable.path.endswith(("moving_mean", "beta")):
            variable.assign(rng.normal(0, 0.1, variable.shape))
    before = (model.count_params(), keras_lk.macs(model))
    keras_lk.prune_units(model, 0.5)
    small = keras_lk.shrink(model)
    after = (small.count_params(), keras_lk.macs(small))
    times = latency(model.predict_on_batch, small.predict_on_batch,
                    lambda b: rng.uniform(0, 255, (b, args.side, args.side,
                                                   3)).astype("float32"),
                    args)
    return {"tool": f"keras_lk (Keras {keras.__version__}, "
                    f"{keras.backend.backend()})",
            "params": before[0], "params_after": after[0],
            "macs": before[1], "macs_after": after[1],
            "own_count": None, "own_count_after": None, "latency": times}


def table(rows, args):
    lines = ["| tool | params | MACs | own count | " + " | ".join(
        f"batch {b} ms (speedup)" for b in args.batches) + " |",
        "|---|---|---|---|" + "---|" * len(args.batches)]
    for row in rows:
        own = "" if row["own_count"] is None else (
            f"{row['own_count'] / 1e9:.2f} -> "
            f"{row['own_count_after'] / 1e9:.2f} G")
        cells = [f"{d:.1f} -> {p:.1f} ({d / p:.2f}x)"
                 for d, p in (row["latency"][b] for b in args.batches)]
        lines.append(
            f"| {row['tool']} | {row['params'] / 1e6:.1f} -> "
            f"{row['params_after'] / 1e6:.1f} M | {row['macs'] / 1e9:.2f} "
            f"-> {row['macs_after'] / 1e9:.2f} G | {own} | "
            + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--side", type=int, default=160)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 16])
    parser.add_argument("--calls", type=int, default=16)
    args = parser.parse_args(argv)
    rows = [torch_pruning_side(args), keras_lk_side(args)]
    print(f"ResNet-50, {args.side} x {args.side}, 50% uniform magnitude "
          f"pruning, {os.cpu_count()} CPUs, {torch.get_num_threads()} "
          "PyTorch threads\n")
    print(table(rows, args))
    RESULTS.mkdir(exist_ok=True)
    import keras
    path = RESULTS / f"torch_pruning_peer_{keras.backend.backend()}.json"
    path.write_text(json.dumps({"rows": rows, "argv": sys.argv[1:]},
                               indent=1))
    print(f"\nwritten to {path}")


if __name__ == "__main__":
    main()
