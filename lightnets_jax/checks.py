"""Range checks written once and used twice: by the command line's argument types and by the
configs and ``models.create`` where a value enters the library, so both refuse the same values
with the same words."""

from __future__ import annotations

import argparse
import math
from typing import Callable


def check_range(name: str, value, low=None, high=None, *, low_open: bool = False, high_open: bool = False,
                integer: bool = False, odd: bool = False):
    """``value`` if it lies in the range (and is an integer / odd where asked), else a ValueError
    naming the value and the allowed range."""
    kind = "an odd integer" if odd else "an integer" if integer else "a number"
    bounds = []
    if low is not None:
        bounds.append(f"{'>' if low_open else '>='} {low}")
    if high is not None:
        bounds.append(f"{'<' if high_open else '<='} {high}")
    wanted = f"{name} must be {kind}" + (f" {' and '.join(bounds)}" if bounds else "")
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok and (integer or odd):
        ok = float(value).is_integer()
    if ok and odd:
        ok = int(value) % 2 == 1
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        raise ValueError(f"{wanted}, got {value!r}")
    return value


def argument(parse: Callable = int, **limits) -> Callable[[str], object]:
    """An argparse ``type`` that parses with ``parse`` then applies ``check_range(**limits)``."""
    def convert(text: str):
        try:
            value = parse(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if parse is int else 'a number'}, got {text!r}")
        try:
            return check_range("it", value, integer=parse is int, **limits)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err).replace("it must be", "must be", 1)) from None
    return convert
