"""Live units: how many units of each removable group have a nonzero
slice, the fraction of the model's multiply-accumulates they keep (what
`shrink` would leave), and the histogram of each group's unit norms."""

import numpy as np

from keras_lk.monitoring import tags
from keras_lk.monitoring.measures import fraction
from keras_lk.structure.analysis import analyze, unit_norms
from keras_lk.structure.macs import total_macs
from keras_lk.structure.groups import build_groups
from keras_lk.structure.surgery import removed_units, zero_units_of


NORM_BUCKETS = 30


def norm_buckets(norms, count=NORM_BUCKETS):
    """A histogram of unit norms as TensorBoard's `[count, 3]` buckets
    (left edge, right edge, count), from 0 to the largest norm."""
    norms = np.asarray(norms, "float64")
    high = float(norms.max()) if norms.size else 0.0
    edges = np.linspace(0.0, high if high > 0 else 1.0, count + 1)
    counts, _ = np.histogram(norms, edges)
    return np.stack([edges[:-1], edges[1:], counts], axis=1)


def unit_cards(units, live):
    """The live-unit cards, written by `LkMonitor(units=True)` and by
    `SparsityTarget(structure="units")`: `(scalars, histograms)` with
    `live_units/<group>` and `unit_norms/<group>` for each `(group name,
    live units, unit norms)` of `units`, and `live_macs_fraction/(all
    layers)`, the live share of the multiply-accumulates `live`."""
    scalars, histograms = {}, {}
    for name, count, norms in units:
        scalars[tags.tag(tags.LIVE_UNITS, name)] = count
        histograms[tags.tag(tags.UNIT_NORMS, name)] = norm_buckets(norms)
    scalars[tags.tag(tags.LIVE_MACS_FRACTION, tags.ALL_LAYERS)] = live
    return scalars, histograms


class UnitMeasure:
    """`live_units/<group>`, `live_macs_fraction/(all layers)` and the
    histograms `unit_norms/<group>` (each unit's L2 norm over all its
    slices); the `logs` key `live_macs_frac`. Read from the weights on the
    host at each log; nothing runs in the training step."""

    records = False
    tracks_signs = False

    def __init__(self):
        self._analysis, self._groups, self._dense = None, [], 0

    def check(self, model):
        """Reads the groups; raises a ValueError for a model without a
        graph, before the monitor installs anything."""
        self._analysis = analyze(model)

    def start(self, model, recording):
        self._groups = [g for g in build_groups(self._analysis, blocks=True)
                        if g.removable]
        self._dense = total_macs(self._analysis, {})

    def open(self, window):
        pass

    def measure(self, report):
        if report.run == tags.VALIDATION or self._analysis is None:
            return  # the weights have not changed since the training log
        values, dead, units = {}, {}, []
        for group in self._groups:
            zero = zero_units_of(self._analysis, group, values)
            units.append((group.name, group.size - len(zero), unit_norms(
                self._analysis, group._root, group.size, 2, values)))
            dead[group._root] = removed_units(zero, group.size)
        live = total_macs(self._analysis, dead)
        share = fraction(live, self._dense) if self._dense else 1.0
        scalars, histograms = unit_cards(units, share)
        report.scalars.update(scalars)
        report.histograms.update(histograms)
        report.logs[tags.LOG_LIVE_MACS_FRAC] = share

    def layout(self):
        return {"live units, every group": [tags.every_layer(tags.LIVE_UNITS)],
                "live fraction of the multiply-accumulates":
                [tags.every_layer(tags.LIVE_MACS_FRACTION)]}
