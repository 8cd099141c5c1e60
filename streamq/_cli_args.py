"""Argument types shared by the `streamq` commands: whole numbers in a range, refused with a usage error."""

from __future__ import annotations

import argparse


def whole_number(text: str, low: int, high: int | None = None) -> int:
    """`text` as an int from `low` to `high` (None: no upper bound), else argparse's usage error."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
    if high is not None and value > high:
        raise argparse.ArgumentTypeError(f"must be from {low} to {high}, got {value}")
    return value


def positive_int(text: str) -> int:
    return whole_number(text, 1)


def non_negative_int(text: str) -> int:
    return whole_number(text, 0)
