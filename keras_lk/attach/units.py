"""`attach(..., structure="units")` and its `detach`: the group penalty put
on, and taken off, every weight a removable unit group slices."""

import warnings

from keras_lk.attach.walk import (config_attribute, forget_compiled_steps,
                                  owners, unsaved)
from keras_lk.core import checks
from keras_lk.penalties.group import GroupLkRegularizer
from keras_lk.penalties.plan import UnitPlan
from keras_lk.penalties.regularizers import LkRegularizer
from keras_lk.structure.records import unit_records


def variable_owners(model):
    """`{id(variable): (path, layer, attribute)}`: the layer attribute that
    holds each variable (`kernel`, `gamma`, `recurrent_kernel`, ...)."""
    found = {}
    for key, (path, layer, variable) in owners(model).items():
        for attribute, value in vars(layer).items():
            if value is variable:
                found[key] = (path, layer, attribute.lstrip("_"))
                break
    return found


def attach_units(model, regularizer, names):
    """`attach(..., structure="units")`."""
    if not isinstance(regularizer, LkRegularizer):
        raise checks.invalid(
            "regularizer", "an LkRegularizer(k, alpha, reduction, proximal) "
            "with structure='units'", regularizer)
    if regularizer.k == float("inf"):
        raise checks.invalid(
            "regularizer", "a finite k with structure='units'", regularizer)
    if names is not None:
        names = [names] if isinstance(names, str) else list(names)
    records, chosen, frozen = unit_records(model, names)
    if frozen:
        warnings.warn(
            f"attach: unit groups {frozen} slice weights that are not "
            "trainable, which no optimizer step can zero: they get no "
            "penalty.", stacklevel=3)
    if not chosen:
        raise ValueError(
            f"attach(structure='units'): model {model.name!r} has no unit "
            "group that can be removed and trained. keras_lk.unit_groups("
            "model) lists its groups and why each is kept.")
    owners = variable_owners(model)
    touched, lost, replaced = [], [], []
    for key, (variable, slices) in records.items():
        path, layer, attribute = owners[key]
        old = getattr(variable, "regularizer", None)
        if old is not None and not isinstance(old, GroupLkRegularizer):
            replaced.append(variable.path)
        group_regularizer = GroupLkRegularizer(
            regularizer.k, regularizer.alpha, regularizer.reduction, slices,
            regularizer.proximal)
        variable.regularizer = group_regularizer
        setting = config_attribute(layer, attribute)
        if setting is not None:
            setattr(layer, setting, group_regularizer)
        lost += unsaved(model, [(path, layer)], group_regularizer)
        if all(layer is not other for other in touched):
            touched.append(layer)
    if replaced:
        warnings.warn(f"attach: the group penalty replaces the regularizers "
                      f"of {replaced}.", stacklevel=3)
    if lost:
        warnings.warn(
            f"attach: the group penalty on {sorted(set(lost))} trains, but "
            "the config of the layer that holds them (e.g. MultiHeadAttention"
            ", whose projections share one kernel_regularizer argument) does "
            "not record it, so a saved model loads without it. Attach it "
            "again after loading.", stacklevel=3)
    UnitPlan.build([variable for variable, _ in records.values()],
                   regularizer.proximal)
    forget_compiled_steps(model)
    return touched


def detach_units(model, names):
    touched = []
    owners = variable_owners(model)
    names = None if names is None else set(
        [names] if isinstance(names, str) else names)
    for path, layer, attribute in owners.values():
        variable = getattr(layer, attribute, None)
        if variable is None and hasattr(layer, "_" + attribute):
            variable = getattr(layer, "_" + attribute)
        old = getattr(variable, "regularizer", None)
        if not isinstance(old, GroupLkRegularizer):
            continue
        if names is not None:
            kept = [s for s in old.slices if s["group"] not in names]
            if len(kept) == len(old.slices):
                continue
            new = (GroupLkRegularizer(old.k, old.alpha, old.reduction, kept,
                                      old.proximal) if kept else None)
        else:
            new = None
        variable.regularizer = new
        setting = config_attribute(layer, attribute)
        if setting is not None:
            setattr(layer, setting, new)
        if all(layer is not other for other in touched):
            touched.append(layer)
    forget_compiled_steps(model)
    return touched
