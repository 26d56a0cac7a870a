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

from coordinator.report.canonical import canonical_bytes, first_difference, parse_canonical
from coordinator.report.errors import CanonicalisationError

ROOT = Path(__file__).resolve().parents[2]

json_data = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63)
    | st.text(max_size=8)
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=20,
)


def test_sorted_keys_no_whitespace_utf8_and_number_forms():
    out = canonical_bytes({"b": 1.0, "a": [1, "é\n", None, True], "c": 1e-6, "d": 10**20, "e": (0.1, -0.0)})
    assert (
        out
        == ('{"a":[1,"é\\n",null,true],"b":1.0,"c":1e-06,"d":100000000000000000000,"e":[0.1,-0.0]}').encode()
    )


@pytest.mark.parametrize(
    "bad, where",
    [
        ({"x": [1.0, math.nan]}, "$.x[1]"),
        ({"y": {"z": math.inf}}, "$.y.z"),
        ({"w": -math.inf}, "$.w"),
        ({1: "a"}, "key 1"),
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
    assert json.loads(data) == parsed


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
