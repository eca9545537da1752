"""The call graph of a Functional or Sequential model, read from its config.

Keras writes a Functional model's graph into `get_config()`: every layer (and
every `keras.ops` call on a symbolic tensor) with the tensors of each call,
their shapes and where they come from (`keras_history`). A Sequential model
is read through the Functional model of its inputs and outputs, which holds
the same layers.
"""

import dataclasses

import keras

from keras_lk.core import checks

_TENSOR = "__keras_tensor__"


@dataclasses.dataclass
class Node:
    """One call of a layer or an operation.

    `inputs` lists the tensor keys of the call's positional arguments in
    order (a list argument, as a merge layer takes, flattened), `constants`
    the other positional arguments, `kwargs` the keyword arguments that are
    tensors (by key) and `options` the others. A key is
    `(layer name, node index, tensor index)`.
    """

    name: str
    operation: object
    class_name: str
    module: str
    config: dict
    inputs: list
    constants: list
    kwargs: dict
    options: dict
    outputs: list = dataclasses.field(default_factory=list)
    calls: int = 1


@dataclasses.dataclass
class Graph:
    """The nodes in an order where every input comes first, the model's
    input and output keys, and the shape of every tensor seen."""

    model: object
    view: object
    config: dict
    nodes: list
    inputs: list
    outputs: list
    shapes: dict


def functional_view(model):
    """A Functional model with `model`'s layers: `model` itself when its
    config is a graph, else `keras.Model(model.inputs, model.outputs)`.

    Raises a ValueError for a model without a graph (a subclassed model).
    """
    if not isinstance(model, keras.Model) or not model.built:
        raise checks.invalid("model", "a built keras.Model", model)
    if not isinstance(model, keras.Sequential):
        config = _config_of(model)
        if config is not None and _is_graph(config):
            return model
    inputs = outputs = None
    try:
        if isinstance(model, keras.Sequential):
            inputs, outputs = model.inputs, model.outputs
        else:  # `input` and `output` keep their structure (a dict).
            inputs, outputs = model.input, model.output
    except (AttributeError, ValueError):
        pass
    if any(part is None or (isinstance(part, (list, tuple, dict))
                            and not part) for part in (inputs, outputs)):
        raise ValueError(
            "Unit groups are read from a model's graph, which Sequential and "
            "Functional models have; a subclassed model has none. Build the "
            "same network with the Functional API (keras.Model(inputs, "
            "outputs)) to prune its units. Received: model of type "
            f"{type(model).__name__}")
    return keras.Model(inputs, outputs, name=model.name)


def _config_of(model):
    try:
        return model.get_config()
    except NotImplementedError:
        return None


def _is_graph(config):
    return (isinstance(config, dict) and "layers" in config
            and "input_layers" in config and "output_layers" in config)


def _key(tensor):
    name, node, index = tensor["config"]["keras_history"]
    return (name, node, index)


def _is_tensor(value):
    return isinstance(value, dict) and value.get("class_name") == _TENSOR


def _flatten(value):
    """The tensors and the constants of one argument, in order."""
    if _is_tensor(value):
        return [value], []
    if isinstance(value, dict) and any(_is_tensor(v) for v in value.values()):
        # A dict argument (a keras_hub backbone's inputs): its tensors in
        # sorted key order, as `keras.tree.flatten` orders them.
        return _flatten([value[key] for key in sorted(value)])
    if isinstance(value, (list, tuple)) and any(
            _is_tensor(item) for item in value):
        tensors, constants = [], []
        for item in value:
            more, other = _flatten(item)
            tensors += more
            constants += other
        return tensors, constants
    return [], [value]


def _graph_config(view):
    """`view.get_config()`. A layer whose own `get_config` raises (keras_hub
    0.32's LlamaTransformerDecoder reads an attribute it never sets) is read
    with Keras's base config (name, dtype, trainable) for this one call:
    the graph needs its calls, and the rules read such layers' attributes.
    """
    try:
        return view.get_config()
    except (AttributeError, TypeError, KeyError, NotImplementedError):
        pass
    broken = []
    for layer in view.layers:
        try:
            layer.get_config()
        except (AttributeError, TypeError, KeyError, NotImplementedError):
            broken.append(layer)
    for layer in broken:
        layer.get_config = (  # restored below
            lambda layer=layer: keras.layers.Layer.get_config(layer))
    try:
        return view.get_config()
    finally:
        for layer in broken:
            del layer.get_config


def read(model):
    """The `Graph` of a built Functional or Sequential model."""
    view = functional_view(model)
    config = _graph_config(view)
    operations = {op.name: op for op in view.operations}
    shapes, nodes = {}, []
    for entry in config["layers"]:
        name = entry["name"]
        calls = entry.get("inbound_nodes", [])
        for index, call in enumerate(calls):
            inputs, constants = [], []
            for argument in call.get("args", []):
                tensors, other = _flatten(argument)
                inputs += [_key(t) for t in tensors]
                constants += other
                for tensor in tensors:
                    shapes[_key(tensor)] = tuple(tensor["config"]["shape"])
            kwargs, options = {}, {}
            for key, value in call.get("kwargs", {}).items():
                tensors, _ = _flatten(value)
                if tensors:
                    kwargs[key] = [_key(t) for t in tensors]
                    for tensor in tensors:
                        shapes[_key(tensor)] = tuple(
                            tensor["config"]["shape"])
                else:
                    options[key] = value
            nodes.append(Node(
                name=name, operation=operations.get(name),
                class_name=entry["class_name"],
                module=str(entry.get("module") or ""),
                config=entry.get("config", {}), inputs=inputs,
                constants=constants, kwargs=kwargs, options=options,
                calls=len(calls)))
        if not calls:  # an InputLayer
            nodes.append(Node(
                name=name, operation=operations.get(name),
                class_name=entry["class_name"],
                module=str(entry.get("module") or ""),
                config=entry.get("config", {}), inputs=[], constants=[],
                kwargs={}, options={}, calls=0))
    outputs, inputs = (_keys(config["output_layers"]),
                       _keys(config["input_layers"]))
    for key, tensor in zip(outputs, keras.tree.flatten(view.output)):
        shapes[key] = tuple(tensor.shape)
    for key, tensor in zip(inputs, keras.tree.flatten(view.input)):
        shapes[key] = tuple(tensor.shape)
    _attach_outputs(nodes, shapes)
    return Graph(model=model, view=view, config=config,
                 nodes=_in_order(nodes, inputs), inputs=inputs,
                 outputs=outputs, shapes=shapes)


def _keys(entries):
    """The `(name, node, index)` keys of a config's `input_layers` or
    `output_layers`: one key, a list of them, or a dict (in sorted key
    order, as `keras.tree.flatten` orders a model's tensors)."""
    if isinstance(entries, dict):
        return [key for name in sorted(entries) for key in _keys(
            entries[name])]
    if (isinstance(entries, (list, tuple)) and len(entries) == 3
            and isinstance(entries[0], str)):
        return [tuple(entries)]
    return [key for entry in entries for key in _keys(entry)]


def _attach_outputs(nodes, shapes):
    """Each node's output keys: the keys seen anywhere with its layer name
    and its call index."""
    index_of, seen = {}, {}
    for node in nodes:
        count = index_of.get(node.name, 0)
        index_of[node.name] = count + 1
        node.index = count if node.calls else 0
    for key in shapes:
        seen.setdefault((key[0], key[1]), set()).add(key[2])
    for node in nodes:
        found = seen.get((node.name, node.index), set())
        node.outputs = [(node.name, node.index, t) for t in sorted(found)]


def _in_order(nodes, inputs):
    """`nodes` sorted so that every tensor is made before it is used."""
    ready = {key for key in inputs}
    ready.update(k for node in nodes if not node.calls for k in node.outputs)
    done, ordered = set(), [n for n in nodes if not n.calls]
    pending = [n for n in nodes if n.calls]
    while pending:
        left = []
        for node in pending:
            needed = node.inputs + [k for keys in node.kwargs.values()
                                    for k in keys]
            if all(key in ready for key in needed):
                ordered.append(node)
                ready.update(node.outputs)
                done.add(id(node))
            else:
                left.append(node)
        if len(left) == len(pending):
            raise ValueError(
                "The model's graph could not be ordered: the calls of "
                f"{sorted({n.name for n in left})} wait on tensors no call "
                "makes.")
        pending = left
    return ordered
