"""Argument checks shared by every public constructor.

Errors follow Keras's shape:
``Invalid value for argument `k`. Expected a positive number. Received: k=-1``
"""

import math
import numbers


def invalid(name, expected, value):
    """Returns the ValueError for argument `name` holding `value`."""
    return ValueError(
        f"Invalid value for argument `{name}`. Expected {expected}. "
        f"Received: {name}={value!r}"
    )


def check_real(name, value, *, minimum=None, strict=False, allow_inf=False,
               expected=None):
    """Checks that `value` is a real number (not a bool) in range.

    Args:
        name: The argument's name, for the message.
        value: The value received.
        minimum: Lower bound, or None.
        strict: Whether `value` must be strictly above `minimum`.
        allow_inf: Whether `float("inf")` is accepted.
        expected: The phrase for the message, e.g. "a positive number".

    Returns:
        `value` as a Python float.
    """
    expected = expected or "a real number"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise invalid(name, expected, value)
    value = float(value)
    if math.isnan(value) or (math.isinf(value) and not allow_inf):
        raise invalid(name, expected, value)
    if math.isinf(value) and value < 0:
        raise invalid(name, expected, value)
    if minimum is not None:
        if value < minimum or (strict and value == minimum):
            raise invalid(name, expected, value)
    return value


def check_choice(name, value, choices):
    """Checks that `value` is one of `choices` (compared as given)."""
    if not isinstance(value, str) or value not in choices:
        listed = ", ".join(repr(c) for c in choices)
        raise invalid(name, f"one of {listed}", value)
    return value
