"""Sizes as operators write them ("512MiB", "1GiB", "20G", a plain byte count), parsed to bytes."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import BeforeValidator

KIB = 1024
MIB = KIB * 1024
GIB = MIB * 1024
TIB = GIB * 1024
MIN_VOLUME_BYTES = MIB
MAX_VOLUME_BYTES = 64 * TIB  # beyond any single disk this engine manages

_UNITS = {
    "": 1, "b": 1,
    "k": KIB, "kib": KIB, "m": MIB, "mib": MIB, "g": GIB, "gib": GIB, "t": TIB, "tib": TIB,
    "kb": 1000, "mb": 1000**2, "gb": 1000**3, "tb": 1000**4,
}
_SIZE_RE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*")


def parse_size(value: object) -> int:
    """Bytes from an int or a string like "1GiB"; refuses zero, negative and absurd sizes."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError(f"must be a size such as 512MiB or 1GiB (got {value!r})")
    if isinstance(value, int):
        size = value
    else:
        match = _SIZE_RE.fullmatch(value)
        unit = match.group(2).lower() if match else ""
        if match is None or unit not in _UNITS:
            raise ValueError(f"must be a size such as 512MiB, 1GiB or 20G (got {value!r})")
        size = int(float(match.group(1)) * _UNITS[unit])
    if size < MIN_VOLUME_BYTES:
        raise ValueError(f"must be at least 1MiB (got {value!r})")
    if size > MAX_VOLUME_BYTES:
        raise ValueError(f"must be at most 64TiB (got {value!r})")
    return size


def format_size(size: int | None) -> str:
    """A byte count the way ``parse_size`` reads it back, rounded to the largest unit."""
    if size is None:
        return "-"
    for unit, factor in (("TiB", TIB), ("GiB", GIB), ("MiB", MIB), ("KiB", KIB)):
        if size >= factor:
            amount = size / factor
            return f"{amount:.0f}{unit}" if amount == int(amount) else f"{amount:.1f}{unit}"
    return f"{size}B"


Capacity = Annotated[int, BeforeValidator(parse_size)]
