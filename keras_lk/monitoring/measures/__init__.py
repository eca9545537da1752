"""What the monitoring callbacks measure, each behind one small protocol.

A measure:
- `check(model)` (optional): before the monitor installs anything on the
  model; raises a ValueError for a model it cannot measure;
- `start(model, recording)`: at the start of `fit` (once the model is built);
- `open(window)`: a window of steps starts (`"epoch"`, `"batch"` or
  `"validation"`); the measure marks where it starts;
- `measure(report)`: the window `report.window` ends; the measure adds its
  scalars, histograms and `logs` keys to `report` and marks the next
  window's start;
- `layout()`: its custom-scalars charts, `{title: [tag regex]}`.

`records` says whether it needs the compiled steps recorded (see
`recording`), `tracks_signs` whether with sign masks. Data flows one way:
weights and recorders -> statistics -> `Report` -> the callback's writer.

Modules: `weights` (histograms, zero counts, sign flips), `penalty` (the
penalty's share of the loss and its pull) and `units` (live units and
multiply-accumulates).
"""

from keras_lk.attach.walk import weights_by_layer

WEIGHT_CHOICES = ("kernels", "all")
_KERNEL_NAMES = ("kernel", "embeddings")


class Report:
    """One window's values, on their way to TensorBoard and `logs`.

    Attributes:
        window: `"epoch"`, `"batch"` or `"validation"`.
        run: The TensorBoard run, `tags.TRAIN` or `tags.VALIDATION`.
        loss: The window's mean loss (penalty included), or None.
        written: Whether it goes to TensorBoard (else only to `logs`).
        scalars, histograms: `{tag: value}` for TensorBoard.
        logs: `{key: value}` for the `logs` dict, without the `val_` prefix.
    """

    def __init__(self, window, run, loss=None, written=True):
        self.window = window
        self.run = run
        self.loss = loss
        self.written = written
        self.scalars = {}
        self.histograms = {}
        self.logs = {}


def layers_and_weights(model, which):
    """`[(layer path, [(weight name, variable)])]`, each variable once,
    under its innermost layer (see `keras_lk.attach.walk.weights_by_layer`).

    Args:
        model: A built `keras.Model`.
        which: `"kernels"` (kernels and embeddings) or `"all"`.
    """
    if which == "kernels":
        return weights_by_layer(
            model, lambda name, _: name.endswith(_KERNEL_NAMES))
    return weights_by_layer(model)


def fraction(part, whole):
    return part / whole if whole else 0.0
