"""Describing a layer's units: the public way to make a custom layer
removable, and the registry the analysis reads.

A rule is a function `rule(layer, units)` that receives the layer and a
`LayerUnits`, records which slice of which weight belongs to which unit,
and returns the channels of the layer's output. `unit_rule` registers one
for a layer class (and its subclasses). keras_lk's own rules for keras_hub's
Transformer blocks are written with the same calls (`hub.py`).
"""

import dataclasses

import numpy as np

from keras_lk.core import checks

# Rules registered by users: layer class -> rule. This registry exists
# because a rule is written once, where the layer is defined, and every
# analysis of every model then finds it.
_BY_CLASS = {}
# Rules keras_lk ships for layers it does not import (keras_hub's): (top
# package, class name) -> rule. It exists so that keras_hub is never
# imported to know its classes; `hub.py` fills it when imported.
BY_NAME = {}


def unit_rule(layer_class):
    """Registers a function that describes the units of `layer_class`.

    The function is called as `rule(layer, units)` for every call of a layer
    of that class (or a subclass) in a model's graph. `units` is a
    `LayerUnits`: its `inputs` are the channels of the call's tensor
    arguments; the rule records the weight slices of each unit and returns
    the channels of the output. Every keras_lk tool then knows the layer:
    `unit_groups`, `prune_units`, `shrink`, `macs`, `LkMonitor(units=True)`
    and `SparsityTarget(structure="units")`.

    Args:
        layer_class: A `keras.layers.Layer` subclass.

    Returns:
        A decorator that registers the rule and returns it unchanged.

    Examples:

        A feed-forward block whose hidden units can go, while its input and
        output width (the residual stream) stays:

        >>> import keras, keras_lk, numpy as np
        >>> @keras.saving.register_keras_serializable("docs")
        ... class FeedForward(keras.layers.Layer):
        ...     def __init__(self, hidden, **kwargs):
        ...         super().__init__(**kwargs)
        ...         self.hidden = hidden
        ...     def build(self, shape):
        ...         self.up = keras.layers.Dense(self.hidden, "relu")
        ...         self.up.build(shape)
        ...         self.down = keras.layers.Dense(shape[-1])
        ...         self.down.build(tuple(shape[:-1]) + (self.hidden,))
        ...     def call(self, x):
        ...         return x + self.down(self.up(x))
        ...     def get_config(self):
        ...         return {**super().get_config(), "hidden": self.hidden}
        >>> @keras_lk.unit_rule(FeedForward)
        ... def feed_forward(layer, units):
        ...     x = units.inputs[0]
        ...     hidden = units.new(layer.hidden, "hidden", config="hidden")
        ...     units.slice(x, layer.up.kernel, 0)
        ...     units.slice(hidden, layer.up.kernel, 1)
        ...     units.slice(hidden, layer.up.bias, 0)
        ...     units.slice(hidden, layer.down.kernel, 0)
        ...     units.slice(x, layer.down.kernel, 1)
        ...     units.slice(x, layer.down.bias, 0)
        ...     return x
        >>> inputs = keras.Input((8,))
        >>> block = FeedForward(32, name="block")
        >>> model = keras.Model(inputs, keras.layers.Dense(2)(block(inputs)))
        >>> [g.name for g in keras_lk.unit_groups(model) if g.removable]
        ['block/hidden']
        >>> _ = keras_lk.prune_units(model, 0.5)
        >>> keras_lk.shrink(model).get_layer("block").hidden
        16
    """
    if not isinstance(layer_class, type):
        raise checks.invalid("layer_class", "a keras.layers.Layer subclass",
                             layer_class)

    def register(rule):
        if not callable(rule):
            raise checks.invalid("rule", "a function rule(layer, units)",
                                 rule)
        _BY_CLASS[layer_class] = rule
        return rule
    return register


def rule_for(layer):
    """The registered rule for `layer` (its class's or the nearest base
    class's), or None."""
    for cls in type(layer).__mro__:
        if cls in _BY_CLASS:
            return _BY_CLASS[cls]
        shipped = BY_NAME.get((cls.__module__.split(".")[0], cls.__name__))
        if shipped is not None:
            return shipped
    return None


@dataclasses.dataclass
class Block:
    """A part of a layer that is the identity on its input when `zero` is
    all zero (a residual block whose output projections are zero): it goes
    whole. `weights`: every variable it owns; `config`: the layer's config
    key that counts such blocks (None when the block is the layer)."""

    layer: str
    zero: list
    weights: list
    config: object
    index: int = -1


class LayerUnits:
    """What a rule uses to describe one call of a layer.

    Attributes:
        inputs: The channels of the call's tensor arguments, in order (the
            positional ones; a list argument flattened).
        name: The layer's name in the graph (nested models prefix theirs).
    """

    def __init__(self, spaces, node, layer, inputs, shape, blocks):
        self._spaces, self._node, self._layer = spaces, node, layer
        self._blocks, self._mine = blocks, []
        self.inputs = list(inputs)
        self.name = node.name
        self.output_shape = shape

    def new(self, size, name, config=None, reason=None, also=None,
            block=None):
        """A new set of `size` units made inside the layer (feed-forward
        units, attention heads).

        Args:
            size: How many units.
            name: The group's name, after the layer's (`"<layer>/<name>"`).
            config: The config key set to the number of units left when the
                model is rebuilt, or a dict `{key: per_unit}` (a unit that
                is a KV group of 4 query heads sets `num_query_heads` to
                4 per unit left). None with a `reason`: the units are kept.
            reason: Why the units cannot be removed (the layer cannot be
                rebuilt with fewer), or None.
            also: Config entries set whenever a unit goes (a head size the
                layer would otherwise derive from the others).
            block: The `block(...)` these units belong to: when the block
                goes whole, its units go with it. Defaults to the layer's
                one block, when it declares exactly one (before or after).

        Returns:
            The channels of the new units.
        """
        channels = self._spaces.new(size, f"{self.name}/{name}")
        if config is None and reason is None:
            reason = (f"'{self.name}' names no config entry for its "
                      f"{name} units")
        if reason:
            self._spaces.keep(channels, reason)
        if config is not None:
            counts = {config: 1} if isinstance(config, str) else dict(config)
            self._spaces.edit(self.name, counts, channels, kind="counts")
            self._spaces.edits[-1].also = dict(also or {})
            self._spaces.edits[-1].block = block
        return channels

    def slice(self, channels, variable, axis, width=1):
        """Records that unit u of `channels` owns the indices
        `u * width ... u * width + width - 1` of `variable` along `axis`
        (width 4: a KV group's 4 query heads)."""
        if variable is None:
            return
        width = int(width)
        self._spaces.record(
            channels, self.name, variable, axis,
            lambda p: p[:, None] * width + np.arange(width))

    def keep(self, channels, reason):
        """Marks the units of `channels` as not removable, with `reason`."""
        self._spaces.keep(channels, reason)

    def block(self, zero, weights=None, config=None):
        """Declares a part of the layer that is the identity on its input
        when every variable of `zero` is all zero: it is then removed
        whole (with its `weights`, every variable it owns).

        Args:
            zero: The variables whose zeros make the block the identity
                (the output projections and their biases).
            weights: All the block's variables (default: the layer's).
            config: The layer's config key counting such blocks
                (`num_layers` of a layer holding several); None when the
                block is the layer itself, which then leaves the graph.
        """
        found = Block(layer=self.name, zero=[v for v in zero if v is not None],
                      weights=list(weights if weights is not None
                                   else self._layer.weights),
                      config=config)
        self._blocks.append(found)
        self._mine.append(found)
        return found

    def finish(self, edits):
        """After the rule: units that named no block belong to the
        layer's one block, when it declared exactly one."""
        if len(self._mine) == 1:
            for edit in edits:
                if edit.block is None:
                    edit.block = self._mine[0]

    def variable(self, suffix):
        """The layer's variable whose path ends with `suffix` (after a
        '/'), or None."""
        for variable in self._layer.weights:
            if variable.path.endswith("/" + suffix) or (
                    variable.path == suffix):
                return variable
        return None
