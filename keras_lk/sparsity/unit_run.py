"""The host side of `SparsityTarget(structure="units")`: the targets
(`uniform_fraction` for a MACs target), the start of a run and what each
epoch logs. The step's side is in `units` (and the ranked policy in
`ranking`)."""

import numpy as np
from keras import ops

from keras_lk.core.chain import unwrap
from keras_lk.monitoring import tags
from keras_lk.monitoring.measures.units import unit_cards
from keras_lk.penalties.group import GroupLkRegularizer
from keras_lk.sparsity.control import initial_log_scale
from keras_lk.sparsity.ranking import RANKED, Ranked
from keras_lk.sparsity.units import UnitController, Uniform
from keras_lk.structure.analysis import analyze
from keras_lk.structure.groups import build_groups
from keras_lk.structure.macs import MacsByCounts, total_macs
from keras_lk.structure.prune import kept_count
from keras_lk.structure.surgery import dead_units

UNIT_ALLOCATIONS = ("uniform",) + RANKED

def uniform_fraction(model, target_macs, names=None, analysis=None):
    """The one fraction of units that, removed from every group named (or
    every removable group), removes at least `target_macs` of `model`'s
    multiply-accumulates (`keras_lk.macs`), the least that does.

    `analysis`: `analyze(model)`, when the caller has it already.

    Returns:
        `(fraction, {group: units removed}, fraction of the MACs left)`.
    """
    analysis = analysis if analysis is not None else analyze(model)
    groups = {g.name: g for g in build_groups(analysis)
              if (g.name in names if names is not None else g.removable)}
    dense = total_macs(analysis, {})

    def removed(fraction):
        counts = {name: g.size - kept_count(g.size, fraction)
                  for name, g in groups.items()}
        dead = {groups[name]._root: set(range(count))
                for name, count in counts.items() if count}
        return counts, total_macs(analysis, dead) / max(dense, 1)

    goal = 1.0 - target_macs
    low, high = 0.0, 1.0 - 1e-9
    counts, left = removed(high)
    if left > goal + 1e-12:
        raise ValueError(
            f"target_macs={target_macs} cannot be reached by removing "
            "units: with one unit left in every covered group, "
            f"{left:.3f} of the multiply-accumulates remain. Covered groups: "
            f"{sorted(counts)}")
    for _ in range(40):
        middle = (low + high) / 2
        if removed(middle)[1] <= goal:
            high = middle
        else:
            low = middle
    counts, left = removed(high)
    return high, counts, left


class UnitRun:
    """The host side of `SparsityTarget(structure="units")`: the targets,
    the start of a run and what each epoch logs."""

    def __init__(self, model, optimizer, target, target_macs,
                 allocation="uniform"):
        plan = optimizer.unit_plan
        if plan is None:
            gradient = any(
                isinstance(unwrap(getattr(v, "regularizer", None)),
                           GroupLkRegularizer)
                for v in model.trainable_variables)
            raise ValueError(
                "SparsityTarget(structure='units') steers the group penalty "
                "of keras_lk.attach(model, LkRegularizer(k, alpha, "
                "proximal=True), structure='units'); the model's weights "
                + ("carry it with proximal=False (a gradient penalty, which "
                   "no step steers). Attach it with proximal=True and "
                   "compile again." if gradient else
                   "carry none. Attach it before compiling."))
        state = optimizer.state("sparsity")
        if state is None or not state.fits(plan):
            raise ValueError(
                "SparsityTarget(structure='units'): the optimizer was built "
                "before the group penalty was attached, so it keeps no state "
                "for the unit groups. Compile the model again after "
                "attach(..., structure='units').")
        bad = [g.name for g in plan.groups if g.k > 1]
        if bad:
            raise ValueError(
                f"SparsityTarget(structure='units') needs k <= 1 (a group "
                f"step that zeroes units); groups {bad} have k = "
                f"{plan.groups[0].k}.")
        self.plan = plan
        self.analysis = analyze(model)
        self.groups = build_groups(self.analysis)
        self.dense_macs = total_macs(self.analysis, {})
        self.allocation = allocation
        sizes = [g.size for g in plan.groups]
        if allocation != "uniform":
            # One ranking across groups (`ranking`): every group's
            # vector holds the shared target and the units kept in all.
            ks = sorted({g.k for g in plan.groups})
            if len(ks) > 1:
                raise ValueError(
                    f"SparsityTarget(allocation={allocation!r}) takes one "
                    f"strength for all unit groups, which needs one k; the "
                    f"groups have k in {ks}.")
            total = sum(sizes)
            self.macs_goal = None
            macs = None
            if target_macs is not None:
                # Checks it can be reached (with one unit left per group).
                fraction, counts, self.macs_goal = uniform_fraction(
                    model, target_macs, [g.name for g in plan.groups],
                    self.analysis)
                by_name = {g.name: g for g in self.groups}
                macs = MacsByCounts(self.analysis,
                                    [by_name[g.name] for g in plan.groups])
                macs.check()
                target = target_macs
                # The units a uniform fraction would keep, as a first guess
                # (the step counts them from the ranking).
                kept = total - sum(counts.values())
            else:
                kept = max(total - round(target * total), len(sizes))
            self.controller = UnitController(
                plan, state, Ranked(plan, allocation, macs))
            self.targets = [target] * len(sizes)
            self.keeps = [kept] * len(sizes)
            # The fraction of units the strength's first guess aims at.
            self.unit_fraction = 1 - kept / total
            return
        self.controller = UnitController(plan, state, Uniform())
        if target_macs is not None:
            fraction, counts, left = uniform_fraction(
                model, target_macs, [g.name for g in plan.groups],
                self.analysis)
            self.targets = [counts.get(g.name, 0) / g.size
                            for g in plan.groups]
            self.macs_goal = left
        else:
            self.targets = [(g.size - kept_count(g.size, target)) / g.size
                            for g in plan.groups]
            self.macs_goal = None
        self.keeps = [round(s * (1 - t)) for s, t in zip(sizes, self.targets)]

    def start(self, begin, end, learning_rate, settings):
        values = self.plan.norms(lambda v: v.value)
        norms = [ops.convert_to_numpy(n) for n in values]
        starts = [float(np.mean(n == 0)) for n in norms]
        scales = [initial_log_scale(n, t, end - begin, learning_rate)
                  for n, t in zip(norms, self.targets)]
        if self.allocation != "uniform":
            everything = np.concatenate(norms)
            start = float(np.mean(everything == 0))
            if self.controller.policy.macs is not None:
                start = float(self.controller.policy.macs.fraction_removed(
                    [np.sum(n == 0) for n in norms]))
            starts = [start] * len(norms)
            # The shared strength acts on each group's norms over its scale.
            relative = np.concatenate([
                n / ops.convert_to_numpy(u) for n, u in zip(
                    norms, self.controller.policy.scales(values))])
            scales = [initial_log_scale(relative, self.unit_fraction,
                                        end - begin, learning_rate)
                      ] * len(norms)
        self.controller.start_run(begin, end, self.targets, self.keeps,
                                  starts, scales, settings)

    def describe(self):
        return [(g.name, t, g.k, g.size)
                for g, t in zip(self.plan.groups, self.targets)]

    def epoch(self, iterations, learning_rate=None):
        """`(logs, scalars, histograms)` of the units now."""
        norms = [ops.convert_to_numpy(n).astype("float64")
                 for n in self.plan.norms(lambda v: v.value)]
        scheduled = ops.convert_to_numpy(self.controller.scheduled(
            iterations))
        sizes = np.array([g.size for g in self.plan.groups])
        zero = np.array([np.mean(n == 0) for n in norms])
        logs = {tags.LOG_SPARSITY: float(np.sum(zero * sizes) / sizes.sum())}
        ranked = self.allocation != "uniform"
        by_macs = ranked and self.controller.policy.macs is not None
        if by_macs:
            # The schedule is a share of the MACs removed.
            logs[tags.LOG_LIVE_MACS_FRAC_TARGET] = 1.0 - float(scheduled[0])
        else:
            logs[tags.LOG_SPARSITY_TARGET] = float(
                np.sum(scheduled * sizes) / sizes.sum())
        # As `macs(model, live=True) / macs(model)`, on the analysis read
        # once at the start of the run.
        dead = dead_units(self.analysis, self.groups, "keep")
        live = total_macs(self.analysis, dead) / max(self.dense_macs, 1)
        logs[tags.LOG_LIVE_MACS_FRAC] = live
        scalars, histograms = unit_cards(
            [(group.name, float(np.count_nonzero(norm)), norm)
             for group, norm in zip(self.plan.groups, norms)], live)
        for group, z, s in zip(self.plan.groups, zero, scheduled):
            scalars[tags.tag(tags.SPARSITY, group.name)] = float(z)
            if not ranked:  # ranked: one schedule for all the groups
                scalars[tags.tag(tags.SPARSITY_TARGET, group.name)] = float(s)
        if by_macs:
            scalars[tags.tag(tags.LIVE_MACS_FRACTION_TARGET,
                             tags.ALL_LAYERS)] = logs[
                                 tags.LOG_LIVE_MACS_FRAC_TARGET]
        elif ranked:
            scalars[tags.tag(tags.SPARSITY_TARGET, tags.ALL_LAYERS)] = logs[
                tags.LOG_SPARSITY_TARGET]
        return logs, scalars, histograms
