"""Argument checks shared by sources, DataModules and models."""

from __future__ import annotations

from typing import Any

import numpy as np


def is_int(value: Any) -> bool:
    """An ``int`` or numpy integer, but not a ``bool``."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def check_int(value: Any, name: str, low: int = 1, high: int | None = None, *, optional: bool = False,
              message: str | None = None) -> int | None:
    """``int(value)`` if it is an integer in ``[low, high]`` (``None`` passes with ``optional``), else ``ValueError``.

    The message is ``"{name} must be an integer >= {low}, got {value!r}."`` (``between low and high``
    with ``high``), or ``message`` formatted with ``name``, ``low``, ``high`` and ``value``."""
    if optional and value is None:
        return None
    if not is_int(value) or value < low or (high is not None and value > high):
        if message is None:
            bound = f">= {low}" if high is None else f"between {low} and {high}"
            message = "{name} must be an integer " + bound + ", got {value!r}."
        raise ValueError(message.format(name=name, low=low, high=high, value=value))
    return int(value)
