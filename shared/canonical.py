"""Canonical JSON: the exact bytes that are signed, per RFC 8785 (JSON Canonicalization Scheme).

Serialisation is the maintained ``rfc8785`` package (Trail of Bits), not code of ours, so a
verifier in any language that implements JCS reproduces the signed bytes (the Node.js check in
``deploy/verify/verify-report.mjs`` does). JCS in short:

* objects: keys sorted by their UTF-16 code units; no insignificant whitespace; UTF-8; strings
  escaped minimally (``\\n``, ``\\"``, ``\\u001f``; everything else, ``é`` included, raw);
* numbers are IEEE doubles written as ECMAScript ``Number.prototype.toString`` writes them:
  ``2.0`` is ``2``, ``1e-06`` is ``0.000001``, ``1e21`` is ``1e+21``, ``-0.0`` is ``0``;
  integers beyond ±(2**53 − 1) have no exact form and are refused, as are NaN and ±Infinity;
* ``true`` / ``false`` / ``null``; tuples serialise as arrays.

Because JCS writes an integral float without a fraction, a parsed document holds ``2`` where the
report had ``2.0``; the report's models accept either, and re-serialising reproduces the bytes
exactly. That is what lets :func:`shared.signed_report.verify_signed_bytes` reject *any*
byte change, even one that leaves the parsed values unchanged (an added space, ``2.0`` for ``2``).

>>> canonical_bytes({"b": 1.0, "a": [1, "é", None, True], "c": 1e-06})
b'{"a":[1,"\\xc3\\xa9",null,true],"b":1,"c":0.000001}'
"""

from __future__ import annotations

import json
import math
from typing import Any

import rfc8785

from shared.errors import CanonicalisationError

__all__ = ["CANONICALIZATION", "canonical_bytes", "dump_parsed", "parse_canonical", "first_difference"]

#: the marker a signed file carries so a verifier knows which bytes the signature covers
CANONICALIZATION = "RFC 8785"
_SAFE_INT = 2**53 - 1  # JCS numbers are IEEE doubles: larger integers are not exact


def canonical_bytes(value: Any) -> bytes:
    """Serialise ``value`` (JSON data: dict/list/tuple/str/int/float/bool/None) per RFC 8785.

    Raises:
        CanonicalisationError: a float is NaN or infinite, an integer is beyond ±(2**53 − 1), a
            key is not a string, or a value is not JSON data; the message names its path.
    """
    _check(value, "$")
    return dump_parsed(value)


def dump_parsed(value: Any) -> bytes:
    """:func:`canonical_bytes` without the path-naming type walk, for values
    :func:`parse_canonical` returned (``rfc8785`` still refuses what has no canonical form)."""
    try:
        return rfc8785.dumps(value)
    except rfc8785.CanonicalizationError as e:
        raise CanonicalisationError(f"no RFC 8785 form: {e}") from None


def parse_canonical(data: bytes) -> Any:
    """Parse JSON bytes strictly: UTF-8, no duplicate keys, no NaN/Infinity, no float overflow.

    An integer literal beyond ±(2**53 − 1) parses as the double JCS reads it as (``1e16`` is
    written ``10000000000000000``), so parse → :func:`dump_parsed` is the identity on canonical
    bytes.

    Raises:
        CanonicalisationError: the bytes are not such JSON.
    """
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise CanonicalisationError(f"not UTF-8 (byte {e.start})") from None
    try:
        return json.loads(
            text,
            object_pairs_hook=_no_duplicates,
            parse_constant=_no_constant,
            parse_float=_finite_float,
            parse_int=_jcs_int,
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
    if value is None or isinstance(value, (bool, str)):
        return
    if isinstance(value, int):
        if abs(value) > _SAFE_INT:
            raise CanonicalisationError(f"{path}: integer {value} is beyond ±(2**53 − 1), not exact in JSON")
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


def _jcs_int(text: str) -> int | float:
    value = int(text)
    return value if abs(value) <= _SAFE_INT else _finite_float(text)


def _no_constant(name: str) -> Any:
    raise CanonicalisationError(f"{name} is not allowed in canonical JSON")
