"""Measures of the weights themselves: histograms, zeros, sign flips."""

import math

import keras
import numpy as np
from keras import ops

from keras_lk.core import backend

from keras_lk.monitoring import tags
from keras_lk.monitoring.measures import fraction, layers_and_weights
from keras_lk.monitoring.packed_stats import (PACK_WEIGHT, packed_statistics,
                                              packs, unstack)
from keras_lk.monitoring.recording import SignWindow
from keras_lk.monitoring.stats import (histogram_buckets,
                                       log_histogram_buckets,
                                       sign_window_counts, weight_statistics)


def _fuse(step):
    """A block or row step of the pass, fused into one pass where the
    backend runs each operation apart: it only sees blocks of one shape, so
    it is compiled once for every weight and model, not once per weight
    shape (results bit-identical to the unfused ones)."""
    return backend.current().fuse(step)


def _plan(variables):
    """`[[index, ...]]`: the weights packed together (float32, at most
    PACK_WEIGHT elements each, a bounded number per pack); the others go
    through the pass one by one. Where the pass runs eagerly, every
    weight goes alone: packing only adds a copy there."""
    if not backend.current().packs_weights:
        return []
    packed = [i for i, v in enumerate(variables)
              if keras.backend.standardize_dtype(v.dtype) == "float32"]
    sizes = [math.prod(variables[i].shape) for i in packed]
    return [[packed[j] for j in group] for group in packs(sizes)
            if not (len(group) == 1 and sizes[group[0]] > PACK_WEIGHT)]


def _statistics(variables, signs, tol, relative, buckets):
    # Variables are arguments, not captures: one trace serves every model
    # of the same shapes and every callback, and fresh callbacks never
    # retrace. (Not `reduce_retracing`: with shapes relaxed, a variable
    # argument keeps the static shape of the first one traced.) The
    # reductions run on the device; small results come back.
    # Packed weights (see `_plan`) go through one pass per pack: the graph
    # does not grow with their number (a pass per weight would be traced
    # once per tensor), and small weights get the fused pass too. Returns (stacked results per pack, results of the
    # others by index, sign counts by index).
    plan = _plan(variables)
    packed = {i for group in plan for i in group}
    stacked = [packed_statistics([variables[i] for i in group], tol,
                                 relative, buckets, fuse=_fuse)
               for group in plan]
    single, sign_counts = {}, {}
    for index, (variable, sign) in enumerate(zip(variables, signs)):
        if index not in packed:
            single[str(index)] = weight_statistics(
                variable, tol, relative, buckets, fuse=_fuse)
        if sign is not None:
            (positive, negative), fold = sign[:2], sign[2]
            if fold is not None:
                positive = ops.logical_or(positive, fold[0])
                negative = ops.logical_or(negative, fold[1])
            sign_counts[str(index)] = sign_window_counts(
                variable, positive, negative)
    return stacked, single, sign_counts


def _compiled_statistics():
    """`_statistics`, compiled by the backend once per set of shapes (and
    kept across logs), or run eagerly where it runs so."""
    return backend.current().compile_pass(
        _statistics, static_argnames=("relative", "buckets"))


def _per_weight(variables, stacked, single, sign_counts):
    """Host side: one dict of statistics per weight, in order."""
    results = [None] * len(variables)
    for group, stats in zip(_plan(variables), stacked):
        for index, values in zip(group, unstack(stats)):
            results[index] = values
    for key, values in single.items():
        results[int(key)] = values
    for key, (stable, flips) in sign_counts.items():
        results[int(key)]["stable_zeros"] = stable
        results[int(key)]["sign_flips"] = flips
    return results


class ZeroOptions:
    """What `WeightMeasure` counts as zero, and whether it tracks signs."""

    def __init__(self, tol, relative_tol, step_stats):
        self.tol = tol
        self.relative_tol = relative_tol
        self.step_stats = step_stats


class WeightMeasure:
    """Histograms and zero counts of the weights: one pass per log.

    Args:
        weights: `"kernels"` or `"all"`.
        buckets: Buckets per histogram, or None for no histograms.
        zeros: A `ZeroOptions`, or None for no zero counts.
    """

    def __init__(self, weights, buckets=None, zeros=None):
        self.weights = weights
        self.buckets = buckets
        self.zeros = zeros
        self.tracks_signs = zeros is not None and zeros.step_stats
        self.records = self.tracks_signs
        self._layers = []
        self._recording = None
        self._recorders = []   # per weight: its recorder if tracked, or None
        self._windows = {}     # window name -> SignWindow

    def start(self, model, recording):
        self._layers = layers_and_weights(model, self.weights)
        self._recording = recording
        self._recorders = [
            recording.recorder(v) if self.tracks_signs else None
            for _, weights in self._layers for _, v in weights]
        self._windows = {}

    def _tracked(self):
        variables = [v for _, weights in self._layers for _, v in weights]
        return [(v, r) for v, r in zip(variables, self._recorders)
                if r is not None]

    def open(self, window):
        # Evaluation steps change no weight: validation needs no window.
        if self.tracks_signs and window != "validation":
            sign_window = self._windows.setdefault(window, SignWindow())
            self._recording.boundary(sign_window, self._tracked())

    def measure(self, report):
        if report.run != tags.TRAIN or not self._layers:
            return
        variables = [v.value for _, weights in self._layers for _, v in weights]
        if self.tracks_signs:  # (the masks may be ORed on the host)
            backend.current().wait()
        window = self._windows.get(report.window)
        signs, tracked = [], 0
        for recorder in self._recorders:
            if recorder is None or window is None:
                signs.append(None)
                continue
            fold = None if window.positive is None else (
                window.positive[tracked], window.negative[tracked])
            signs.append((recorder.seen_positive.value,
                          recorder.seen_negative.value, fold))
            tracked += 1
        tol = self.zeros.tol if self.zeros else 0.0
        relative = bool(self.zeros and self.zeros.relative_tol)
        results = iter(_per_weight(variables, *keras.tree.map_structure(
            ops.convert_to_numpy, _compiled_statistics()(
                variables, signs, np.float32(tol), relative=relative,
                buckets=self.buckets or 1))))
        self.open(report.window)
        total = _Counts()
        for path, weights in self._layers:
            layer = _Counts()
            for name, _ in weights:
                stats = next(results)
                layer.add(stats)
                if self.buckets:
                    self._histograms(report, path, name, stats)
            total.merge(layer)
            if self.zeros:
                self._zero_scalars(report, path, layer)
        if self.zeros:
            self._zero_scalars(report, tags.ALL_LAYERS, total)
            report.logs[tags.LOG_ZERO_FRAC] = fraction(total.near_zeros,
                                                       total.size)
            if self.tracks_signs:
                report.logs[tags.LOG_STABLE_ZERO_FRAC] = fraction(
                    total.stable_zeros, total.size)
                report.logs[tags.LOG_SIGN_FLIP_FRAC] = fraction(
                    total.sign_flips, total.size)

    @staticmethod
    def _histograms(report, path, name, stats):
        report.histograms[tags.tag(tags.ABS_WEIGHTS, path, name)] = (
            histogram_buckets(stats["abs_counts"], 0.0, stats["max_abs"]))
        report.histograms[tags.tag(tags.LOG10_ABS_WEIGHTS, path, name)] = (
            log_histogram_buckets(stats["log_counts"], stats["log_lo"],
                                  stats["log_hi"]))

    @staticmethod
    def _zero_scalars(report, layer, counts):
        scalars = report.scalars
        scalars[tags.tag(tags.ZERO_COUNT, layer)] = counts.near_zeros
        scalars[tags.tag(tags.ZERO_FRACTION, layer)] = fraction(
            counts.near_zeros, counts.size)
        scalars[tags.tag(tags.EXACT_ZERO_COUNT, layer)] = counts.exact_zeros
        scalars[tags.tag(tags.EXACT_ZERO_FRACTION, layer)] = fraction(
            counts.exact_zeros, counts.size)
        scalars[tags.tag(tags.MAX_ABS_WEIGHT, layer)] = counts.max_abs
        if counts.tracked:
            for count_tag, fraction_tag, count in (
                    (tags.STABLE_ZERO_COUNT, tags.STABLE_ZERO_FRACTION,
                     counts.stable_zeros),
                    (tags.SIGN_FLIP_COUNT, tags.SIGN_FLIP_FRACTION,
                     counts.sign_flips)):
                scalars[tags.tag(count_tag, layer)] = count
                scalars[tags.tag(fraction_tag, layer)] = fraction(
                    count, counts.size)
        if counts.nonfinite:
            scalars[tags.tag(tags.NONFINITE_COUNT, layer)] = counts.nonfinite

    def layout(self):
        if not self.zeros:
            return {}
        return {"zero fraction (|w| <= tol), every layer":
                [tags.every_layer(tags.ZERO_FRACTION)],
                "exact zero fraction, every layer":
                [tags.every_layer(tags.EXACT_ZERO_FRACTION)]}


class _Counts:
    """Zero counts of one layer, or of all of them."""

    def __init__(self):
        self.size = self.exact_zeros = self.near_zeros = self.nonfinite = 0
        self.stable_zeros = self.sign_flips = self.tracked = 0
        self.max_abs = 0.0

    def add(self, stats):
        self.size += int(stats["size"])
        self.exact_zeros += int(stats["exact_zeros"])
        self.near_zeros += int(stats["near_zeros"])
        self.nonfinite += int(stats["nan"]) + int(stats["inf"])
        self.max_abs = max(self.max_abs, float(stats["max_abs"]))
        if "stable_zeros" in stats:
            self.stable_zeros += int(stats["stable_zeros"])
            self.sign_flips += int(stats["sign_flips"])
            self.tracked += 1

    def merge(self, other):
        for name in ("size", "exact_zeros", "near_zeros", "nonfinite",
                     "stable_zeros", "sign_flips", "tracked"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.max_abs = max(self.max_abs, other.max_abs)
