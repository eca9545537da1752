"""Model plumbing: putting penalties on a built model's weights.

- `walk.py`: the one walk over a model's layers and sublayers, used by
  every part that looks at a model;
- `weights.py`: `attach` and `detach`;
- `units.py`: `attach(..., structure="units")`, the group penalty's
  records on every slice of a unit.
"""

from keras_lk.attach.walk import iter_layers, weights_by_layer
from keras_lk.attach.weights import attach, detach

__all__ = ["attach", "detach", "iter_layers", "weights_by_layer"]
