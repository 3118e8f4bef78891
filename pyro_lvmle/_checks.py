"""Checks of user input shared by every module: one place for the messages users read.

Each check raises a ``TypeError`` for a value of the wrong type and a ``ValueError`` for one
out of range, naming ``where`` (the class or function) and the argument, and saying what is
accepted.
"""

from __future__ import annotations

import math
import numbers

__all__ = ["check_bool", "check_callable", "check_int", "check_positive", "check_probability"]


def check_bool(where: str, name: str, value) -> bool:
    """``value`` if it is ``True`` or ``False`` (a string such as ``"no"`` would be true).

    :param str where: who checks, for the message.
    :param str name: the argument's name.
    :param value: what the user passed.
    :raises TypeError: for anything else.

    Example::

        >>> check_bool("MCEM", "auto", False)
        False
    """
    if not isinstance(value, bool):
        raise TypeError(f"{where}: {name} must be True or False, got {value!r}")
    return value


def check_int(where: str, name: str, value, low: int = 0, high: int | None = None) -> int:
    """``value`` as an ``int`` in ``[low, high]``.

    :param str where: who checks (``"MCMCGradient"``), for the message.
    :param str name: the argument's name.
    :param value: what the user passed.
    :param int low: the smallest accepted value.
    :param int high: the largest accepted value (none if ``None``).
    :raises TypeError: for a non-integer (``bool`` included).
    :raises ValueError: out of range.

    Example::

        >>> check_int("MCEM", "num_chains", 4, low=1)
        4
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{where}: {name} must be an int, got {value!r} "
                        f"({type(value).__name__})")
    if value < low or (high is not None and value > high):
        bound = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"{where}: {name} must be an int {bound}, got {value!r}")
    return int(value)


def check_positive(where: str, name: str, value, *, allow_zero: bool = False) -> float:
    """``value`` as a finite positive ``float`` (or ``>= 0`` with ``allow_zero``).

    :param str where: who checks, for the message.
    :param str name: the argument's name.
    :param value: what the user passed.
    :param bool allow_zero: accept ``0``.

    Example::

        >>> check_positive("BatchedKernel", "step_size", 0.1)
        0.1
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{where}: {name} must be a float, got {value!r} "
                        f"({type(value).__name__})")
    value = float(value)
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        kind = "finite and >= 0" if allow_zero else "finite and > 0"
        raise ValueError(f"{where}: {name} must be {kind}, got {value!r}")
    return value


def check_probability(where: str, name: str, value, *, low: float = 0.0,
                      high: float = 1.0, closed_low: bool = False) -> float:
    """``value`` as a ``float`` strictly inside ``(low, high)`` (``[low, high)`` with
    ``closed_low``).

    :param str where: who checks, for the message.
    :param str name: the argument's name.
    :param value: what the user passed.
    :param float low: the lower bound (open unless ``closed_low``).
    :param float high: the open upper bound.
    :param bool closed_low: accept ``low`` itself.

    Example::

        >>> check_probability("MCEM", "alpha", 0.25, high=0.5)
        0.25
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{where}: {name} must be a float, got {value!r} "
                        f"({type(value).__name__})")
    value = float(value)
    inside = (low <= value if closed_low else low < value) and value < high
    if not inside:
        bracket = "[" if closed_low else "("
        raise ValueError(f"{where}: {name} must be in {bracket}{low}, {high}), got {value!r}")
    return value


def check_callable(where: str, name: str, value, what: str = "a callable"):
    """``value`` if it is callable, else a ``TypeError`` saying what was expected.

    :param str where: who checks, for the message.
    :param str name: the argument's name.
    :param value: what the user passed.
    :param str what: how the message names what is expected.

    Example::

        >>> check_callable("Driver.run", "callback", print)
        <built-in function print>
    """
    if not callable(value):
        raise TypeError(f"{where}: {name} must be {what}, got {value!r} "
                        f"({type(value).__name__})")
    return value
