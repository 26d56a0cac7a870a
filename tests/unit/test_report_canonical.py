"""Canonical JSON: the signed bytes are reproducible and parse back exactly."""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coordinator.report.errors import CanonicalisationError
from shared.canonical import canonical_bytes, first_difference, parse_canonical

ROOT = Path(__file__).resolve().parents[2]

json_data = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**53 - 1), 2**53 - 1)
    | st.text(max_size=8)
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=20,
)


def test_sorted_keys_no_whitespace_utf8_and_number_forms():
    value = {"b": 1.0, "a": [1, "é\n", None, True], "c": 1e-6, "d": 2**53 - 1, "e": (0.1, -0.0)}
    out = canonical_bytes(value)
    assert out == ('{"a":[1,"é\\n",null,true],"b":1,"c":0.000001,"d":9007199254740991,"e":[0.1,0]}').encode()


# RFC 8785 appendix B: IEEE 754 doubles and their JCS text (the examples a float-only verifier hits)
@pytest.mark.parametrize(
    "value, text",
    [
        (0.0, "0"),
        (-0.0, "0"),
        (2.0, "2"),
        (1e21, "1e+21"),
        (1e-7, "1e-7"),
        (1e-6, "0.000001"),
        (9007199254740992.0, "9007199254740992"),
        (295147905179352830000.0, "295147905179352830000"),
        (333333333.3333333, "333333333.3333333"),
        (5e-324, "5e-324"),
        (1.7976931348623157e308, "1.7976931348623157e+308"),
    ],
)
def test_numbers_are_written_as_ecmascript_does(value, text):
    assert canonical_bytes([value]) == f"[{text}]".encode()
    assert canonical_bytes(parse_canonical(f"[{text}]".encode())) == f"[{text}]".encode()


def test_keys_sort_by_utf16_code_units_not_code_points():
    # U+1F600 is a surrogate pair (0xD83D...) so it sorts before U+FB33 in UTF-16, after it by code point
    assert canonical_bytes({"\ufb33": 1, "\U0001f600": 2}) == '{"\U0001f600":2,"\ufb33":1}'.encode()


@pytest.mark.parametrize(
    "bad, where",
    [
        ({"x": [1.0, math.nan]}, "$.x[1]"),
        ({"y": {"z": math.inf}}, "$.y.z"),
        ({"w": -math.inf}, "$.w"),
        ({1: "a"}, "key 1"),
        ({"n": [2**53]}, "$.n[0]"),
        ({"s": {1, 2}}, "$.s"),
    ],
)
def test_refuses_values_without_a_canonical_form(bad, where):
    with pytest.raises(CanonicalisationError, match=re.escape(where)):
        canonical_bytes(bad)


@given(json_data)
@settings(max_examples=200, deadline=None)
def test_parse_and_reserialise_reproduce_bytes_exactly(value):
    data = canonical_bytes(value)
    parsed = parse_canonical(data)
    assert canonical_bytes(parsed) == data
    assert parsed == json.loads(json.dumps(value))  # numerically the same values


@pytest.mark.parametrize(
    "raw, msg",
    [
        (b'{"a":1,"a":2}', "duplicate key"),
        (b'{"a":NaN}', "NaN"),
        (b'{"a":Infinity}', "Infinity"),
        (b'{"a":"\xff"}', "not UTF-8"),
        (b'{"a":1e999}', "out of range"),
        (b'{"a":', "not valid JSON"),
    ],
)
def test_strict_parse_refuses_ambiguous_input(raw, msg):
    with pytest.raises(CanonicalisationError, match=msg):
        parse_canonical(raw)


def test_first_difference():
    assert first_difference(b"abcd", b"abXd") == 2
    assert first_difference(b"ab", b"abc") == 2


_SCRIPT = """
import hashlib, sys
sys.path.insert(0, {tests!r})
from report_fixtures import ISSUED_AT, make_result
from coordinator.report import build_report, report_bytes
for privacy in (False, True):
    doc = build_report(make_result(privacy=privacy), issued_at=ISSUED_AT)
    print(hashlib.sha256(report_bytes(doc)).hexdigest())
"""


def test_report_bytes_identical_across_runs_and_hash_seeds():
    script = _SCRIPT.format(tests=str(Path(__file__).parent))
    digests = set()
    for seed in ("0", "1", "4242", "random"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run(
            [sys.executable, "-c", script], env=env, cwd=ROOT, check=True, capture_output=True, text=True
        ).stdout.split()
        assert len(out) == 2 and out[0] != out[1]
        digests.add(tuple(out))
    assert len(digests) == 1
    # and the same in this process
    sys.path.insert(0, str(Path(__file__).parent))
    from report_fixtures import ISSUED_AT, make_result

    from coordinator.report import build_report, report_bytes

    here = hashlib.sha256(report_bytes(build_report(make_result(), issued_at=ISSUED_AT)))
    assert here.hexdigest() == next(iter(digests))[0]
