"""Penalties: the math and the Keras glue of Lk and group-Lk penalties.

- `math.py`: `|w|^k`, its NaN-free gradient, `lk_penalty`;
- `prox.py`: `prox`, the proximal operators of `t |x|^k`, and the group
  step `group_prox` (the scalar step on a group's norm);
- `regularizers.py`: `LkRegularizer`, the one proximal strength and the
  one proximal guard;
- `group.py`: `GroupLkRegularizer`, one variable's share of a group
  penalty;
- `plan.py`: `UnitPlan`, the groups joined again from the records;
- `optimizer.py`: `ProximalOptimizer`, the proximal step in the compiled
  train step, and its hook for what steers it (`Steering`).
"""

from keras_lk.penalties.math import lk_penalty, safe_abs_pow

__all__ = ["lk_penalty", "safe_abs_pow"]
