"""Sparsity, one concept a file:

- `control.py`: the control law, written once for weights and units (the
  gain, bounded moves, thresholds, the run's phases);
- `state.py`: the state the optimizer keeps, one layout with named fields;
- `schedule.py`: the polynomial schedule shared by `SparsityTarget` and
  `keras-lk sweep`;
- `groups.py`: the weights covered, and how they are allocated to groups;
- `protection.py`: the weights never zeroed, so that no layer collapses;
- `lock.py`: the exact pattern fixed at `end_step` (weights);
- `weights.py`: steering weights elementwise (`WeightController`) and its
  host side (`WeightRun`);
- `units.py`: steering whole units (`UnitController`), with the uniform
  allocation policy;
- `ranking.py`: the policy that ranks units across groups (allocation
  "global" and "adaptive");
- `unit_run.py`: the host side of a units run, and `uniform_fraction` for
  a MACs target;
- `counting.py`: `exact_zeros` (the one zero count) and `sparsity`;
- `target.py`: the `SparsityTarget` callback.

`strip` is `keras_lk/export.py`.
"""

from keras_lk.export import strip
# Registers SparsityTarget's state with ProximalOptimizer.keep_state.
from keras_lk.sparsity import state  # noqa: F401
from keras_lk.sparsity.counting import exact_zeros, sparsity
from keras_lk.sparsity.target import SparsityTarget

__all__ = ["SparsityTarget", "exact_zeros", "sparsity", "strip"]
