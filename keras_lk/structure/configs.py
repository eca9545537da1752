"""The config side of `shrink`: the unit counts a rebuilt model is given
(`Edit`s of the analysis), widths shared by several layers, and the
serialized Functional model with its counts set and its dead blocks gone."""


def set_count(edit, count, layer):
    """Sets one edit's entries in the config dict `layer` for `count`
    units left."""
    if edit.kind == "count":
        layer[edit.key] = count
    elif edit.kind == "counts":
        for key, per_unit in edit.key.items():
            layer[key] = count * per_unit
        layer.update(edit.also)
    elif edit.kind == "path":
        entry = layer
        for part in edit.key[:-1]:
            entry = entry[part]
        entry[edit.key[-1]] = count
    elif edit.kind == "last":
        layer[edit.key] = tuple(layer[edit.key][:-1]) + (count,)
    else:  # MultiHeadAttention's output_shape
        shape = layer.get(edit.key)
        layer[edit.key] = (tuple(shape[:-1]) + (count,)
                           if isinstance(shape, (list, tuple)) else count)


def dead_blocks(analysis, dead):
    """The `describe.Block`s whose units are all dead."""
    units = dead.get(analysis.block_space, set()) if (
        analysis.block_space is not None) else set()
    return [analysis.blocks[u] for u in sorted(units)]


def _shared_edits(analysis, dead, gone, by_layer):
    """The "counts" edits that share config entries (the blocks of a
    keras_hub backbone share `intermediate_dim`; ViT's blocks share its
    encoder's `mlp_dim`), grouped: `{share key: [edit]}`. `by_layer`: the
    entries are each layer's (a Functional model) rather than the
    model's (a class rebuilt from its arguments)."""
    shared = {}
    for edit in analysis.spaces.edits:
        if edit.kind != "counts" or not edit.key or (
                edit.block is not None and id(edit.block) in gone):
            continue
        key = tuple(sorted(edit.key))
        if by_layer:
            key = (edit.layer,) + key
        shared.setdefault(key, []).append(edit)
    return shared


def pad_to_shared(analysis, dead, by_layer):
    """`dead` with as few units removed as keep every set of edits that
    share a config entry at one width: the widest. Returns `(dead, kept)`,
    `kept` the number of zero units that stay for it."""
    gone = {id(b) for b in dead_blocks(analysis, dead)}
    dead = {root: set(units) for root, units in dead.items()}
    kept = 0
    for edits in _shared_edits(analysis, dead, gone, by_layer).values():
        roots = {}
        for edit in edits:
            channels = edit.channels
            root = int(analysis.spaces.root(int(channels.space[0])))
            roots[root] = len(channels)
        width = max(size - len(dead.get(root, ())) for root, size in
                    roots.items())
        for root, size in roots.items():
            units = sorted(dead.get(root, ()))
            keep = size - width
            if len(units) > keep:
                kept += len(units) - keep
                dead[root] = set(units[:keep])
    return dead, kept


def changed_edits(analysis, dead):
    """`(edit, units left)` for every edit whose units change, those of the
    dead blocks (which go whole) left out."""
    gone = {id(b) for b in dead_blocks(analysis, dead)}
    for edit in analysis.spaces.edits:
        if edit.block is not None and id(edit.block) in gone:
            continue
        count = analysis.live(edit.channels, dead)
        if count != len(edit.channels):
            yield edit, count


def edited(serialized, analysis, dead):
    """The serialized model with every layer's unit counts set to what is
    left, its dead blocks gone, and no build or compile state (the shapes
    change)."""
    _scrub(serialized)
    entries = _entries(serialized, "")
    for edit, count in changed_edits(analysis, dead):
        if edit.layer not in entries:
            raise ValueError(
                f"shrink() cannot set the units of '{edit.layer}': it is "
                "inside a nested model whose config is not a graph (a "
                "keras_hub backbone inside a Functional model). Shrink that "
                f"model on its own. Received: {count} of "
                f"{len(edit.channels)} units left")
        set_count(edit, count, entries[edit.layer]["config"])
    for block in dead_blocks(analysis, dead):
        if block.config is not None:
            entries[block.layer]["config"][block.config] -= 1
        else:
            _remove_layer(serialized, block.layer)
    return serialized


def _remove_layer(serialized, name):
    """Takes layer `name` out of a serialized Functional model: every
    tensor it made is read from its first input instead (a block that is
    the identity)."""
    for container in _containers(serialized):
        layers = container["config"]["layers"]
        for entry in layers:
            if entry.get("name", entry["config"].get("name")) != name.split(
                    "/")[-1]:
                continue
            source = _first_tensor(entry["inbound_nodes"][0])
            layers.remove(entry)
            _reroute(container["config"], name.split("/")[-1],
                     source["config"]["keras_history"])
            return
    raise ValueError(f"shrink() found no layer '{name}' to remove.")


def _containers(serialized):
    yield serialized
    for entry in serialized["config"]["layers"]:
        if entry["class_name"] in ("Functional", "Sequential") and (
                "layers" in entry.get("config", {})):
            yield from _containers(entry)


def _first_tensor(call):
    for argument in call.get("args", []):
        for item in (argument if isinstance(argument, list) else [argument]):
            if isinstance(item, dict) and item.get("class_name") == (
                    "__keras_tensor__"):
                return item
    raise ValueError("shrink() found a block called without a tensor.")


def _reroute(config, name, history):
    """Every reference to a tensor of layer `name` in `config` now points
    at `history` (a keras_history triple)."""
    if isinstance(config, dict):
        if config.get("class_name") == "__keras_tensor__" and (
                config["config"]["keras_history"][0] == name):
            config["config"]["keras_history"] = list(history)
        for key, value in config.items():
            if key in ("input_layers", "output_layers"):
                config[key] = _reroute_keys(value, name, history)
            else:
                _reroute(value, name, history)
    elif isinstance(config, (list, tuple)):
        for item in config:
            _reroute(item, name, history)


def _reroute_keys(keys, name, history):
    if isinstance(keys, dict):
        return {k: _reroute_keys(v, name, history) for k, v in keys.items()}
    if (isinstance(keys, (list, tuple)) and len(keys) == 3
            and isinstance(keys[0], str)):
        return list(history) if keys[0] == name else keys
    return [_reroute_keys(k, name, history) for k in keys]


def _scrub(config):
    """Removes every build state (`build_config`, `build_input_shape`,
    `compile_config`), nested ones too: the shapes change."""
    if isinstance(config, dict):
        for key in ("build_config", "compile_config"):
            config.pop(key, None)
        if "layers" in config and config.get("layers") and (
                config["layers"][0].get("class_name") == "InputLayer"):
            config.pop("build_input_shape", None)
        for value in config.values():
            _scrub(value)
    elif isinstance(config, list):
        for item in config:
            _scrub(item)


def _entries(serialized, scope):
    """`{"outer/inner": serialized layer}` of a model and the models nested
    in it, each stripped of its build state."""
    found = {}
    for entry in serialized["config"]["layers"]:
        name = scope + (entry.get("name") or entry["config"]["name"])
        found[name] = entry
        if entry["class_name"] in ("Functional", "Sequential") and (
                "layers" in entry.get("config", {})):
            found.update(_entries(entry, name + "/"))
    return found
