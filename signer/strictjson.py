"""One JSON decoder for everything read from the bucket, strict enough that no object can
crash its reader.

``json.loads`` alone lets a few hostile inputs escape as exceptions other than ValueError or
as values that break later arithmetic: 100,000 nested brackets raise RecursionError,
``1e400`` becomes ``inf``, ``NaN`` and ``Infinity`` are accepted. Every such input is a
ValueError here, so a reader that catches ValueError has caught everything. (Integers stay
Python's, bounded in length; times are range-checked where they are read, in envelope.py.)
"""

from __future__ import annotations

import json
import math
from typing import Any

# Deeper than any object of ours (a manifest's TaskInstance DTO is about 5 deep).
MAX_DEPTH = 32
# Python's own default limit, kept whatever an application sets: a longer integer costs
# quadratic time to parse. Times are bounded where they are read (see envelope.py).
MAX_INT_DIGITS = 4300


def _number(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:20]!r} is out of range")
    return value


def _integer(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise ValueError(f"integer of {len(text)} digits is out of range")
    return int(text)


def _constant(text: str) -> Any:
    raise ValueError(f"{text} is not JSON")


def loads(data: bytes | str, *, max_depth: int = MAX_DEPTH) -> Any:
    """Parse JSON; raise ValueError for malformed, too deep, non-finite or huge input."""
    try:
        value = json.loads(data, parse_float=_number, parse_int=_integer, parse_constant=_constant)
    except RecursionError:
        raise ValueError("nested too deeply") from None
    _check_depth(value, max_depth)
    return value


def _check_depth(value: Any, max_depth: int) -> None:
    """Walk containers without recursion; the parser's own limit is the interpreter's."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > max_depth:
            raise ValueError(f"nested deeper than {max_depth} levels")
        stack.extend((child, depth + 1) for child in children)
