"""Canonical JSON: the exact bytes that are signed, reproducible on any machine.

Rules (close to RFC 8785 / JCS, simpler on numbers):

* objects: keys sorted by code point, every key a ``str``; no duplicate keys when parsing;
* no insignificant whitespace (``,`` and ``:`` separators only), UTF-8, non-ASCII kept raw;
* integers as integers; floats as Python's shortest round-trip ``repr`` (``0.1``, ``1e-06``,
  ``100.0``), so ``parse(serialise(x)) == x`` bit for bit; NaN and ±Infinity are refused;
* ``true`` / ``false`` / ``null``; tuples serialise as arrays.

A float stays a float (``100.0``) and an int an int (``100``): the distinction survives a parse,
so re-serialising a parsed document reproduces its bytes exactly. That is what lets
:func:`coordinator.report.signing.verify_signed_report` reject *any* byte change, even one
that leaves the parsed values unchanged (an added space, a reordered key).

>>> canonical_bytes({"b": 1.0, "a": [1, "é", None, True]})
b'{"a":[1,"\\xc3\\xa9",null,true],"b":1.0}'
"""

from __future__ import annotations

import json
import math
from typing import Any

from coordinator.report.errors import CanonicalisationError

__all__ = ["canonical_bytes", "dump_parsed", "parse_canonical", "first_difference"]


def canonical_bytes(value: Any) -> bytes:
    """Serialise ``value`` (JSON data: dict/list/tuple/str/int/float/bool/None) canonically.

    Raises:
        CanonicalisationError: a float is NaN or infinite, a key is not a string, or a value
            is not JSON data; the message names the path of the offending value.
    """
    _check(value, "$")
    return dump_parsed(value)


def dump_parsed(value: Any) -> bytes:
    """:func:`canonical_bytes` without the type walk, for values :func:`parse_canonical` returned
    (their keys are strings and NaN/±Infinity cannot occur; ``allow_nan=False`` still guards)."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return text.encode("utf-8")


def parse_canonical(data: bytes) -> Any:
    """Parse JSON bytes strictly: UTF-8, no duplicate keys, no NaN/Infinity, no float overflow.

    Raises:
        CanonicalisationError: the bytes are not such JSON.
    """
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise CanonicalisationError(f"not UTF-8 (byte {e.start})") from None
    try:
        return json.loads(
            text, object_pairs_hook=_no_duplicates, parse_constant=_no_constant, parse_float=_finite_float
        )
    except json.JSONDecodeError as e:
        raise CanonicalisationError(f"not valid JSON: {e}") from None


def first_difference(a: bytes, b: bytes) -> int:
    """Offset of the first byte where ``a`` and ``b`` differ (``min(len)`` if one is a prefix)."""
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return min(len(a), len(b))


def _check(value: Any, path: str) -> None:
    if value is None or isinstance(value, (bool, int, str)):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise CanonicalisationError(f"{path}: {value!r} has no canonical JSON form")
        return
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check(item, f"{path}[{i}]")
        return
    if isinstance(value, dict):
        for k, item in value.items():
            if not isinstance(k, str):
                raise CanonicalisationError(f"{path}: key {k!r} is not a string")
            _check(item, f"{path}.{k}")
        return
    raise CanonicalisationError(f"{path}: {type(value).__name__} is not JSON data")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise CanonicalisationError(f"duplicate key {k!r}")
        out[k] = v
    return out


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # "1e999" overflows to inf
        raise CanonicalisationError(f"number {text} is out of range")
    return value


def _no_constant(name: str) -> Any:
    raise CanonicalisationError(f"{name} is not allowed in canonical JSON")
