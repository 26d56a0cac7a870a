"""The node's ``report import`` check is the coordinator's (:mod:`shared.signed_report`): it refuses
what ``rehealth report verify`` refuses, with its reasons (its former copy of the check let a
signature's base64 with other padding bits through), and keeps its own wording for a report
signed by another key."""

from __future__ import annotations

import base64
import json

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from report_fixtures import ISSUED_AT, make_small_result

from coordinator.report import build_report, canonical_bytes, sign_report
from node.report_inbox import ReportRefused, verify_bytes
from shared.signed_report import key_id


@pytest.fixture(scope="module")
def signed():
    key = Ed25519PrivateKey.generate()
    return key, sign_report(build_report(make_small_result(), issued_at=ISSUED_AT), key)


def test_node_accepts_the_genuine_report(signed):
    key, data = signed
    report, kid = verify_bytes(data, key.public_key())
    assert kid == key_id(key.public_key()) and report == json.loads(data)["report"]


def test_node_refuses_what_the_coordinator_refuses(signed):
    key, data = signed
    obj = json.loads(data)
    value = obj["signature"]["value"]
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    twin = alphabet[alphabet.index(value[-3]) ^ 1]  # same signature bytes, other base64 text
    assert base64.b64decode(value[:-3] + twin + "==") == base64.b64decode(value)
    padded = canonical_bytes({**obj, "signature": {**obj["signature"], "value": value[:-3] + twin + "=="}})
    with pytest.raises(ReportRefused, match="not canonical base64"):
        verify_bytes(padded, key.public_key())
    duplicated = data[:-1] + b',"report":{}}'
    with pytest.raises(ReportRefused, match="duplicate key 'report'"):
        verify_bytes(duplicated, key.public_key())
    other = Ed25519PrivateKey.generate().public_key()
    with pytest.raises(ReportRefused, match=r"^signed by another key \(key id [0-9a-f]{16}…\), not "):
        verify_bytes(data, other)
