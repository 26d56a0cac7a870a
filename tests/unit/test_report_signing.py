"""Ed25519 signing: any change to a signed report, a wrong key or a missing signature is caught."""

from __future__ import annotations

import base64
import json
import random
import stat

import pytest
from report_fixtures import ISSUED_AT, make_result, make_small_result

from coordinator.report import (
    ReportError,
    ReportVerificationError,
    build_report,
    canonical_bytes,
    generate_keypair,
    key_id,
    load_private_key,
    load_public_key,
    sign_report,
    verify_file,
    verify_signed_report,
)

PASSPHRASE = b"signing-test-passphrase"


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    d = tmp_path_factory.mktemp("keys")
    key_path, pub_path = generate_keypair(d, passphrase=PASSPHRASE)
    other_key, other_pub = generate_keypair(d / "other", passphrase=None)
    return {
        "key": load_private_key(key_path, PASSPHRASE),
        "pub": load_public_key(pub_path),
        "other_key": load_private_key(other_key),
        "other_pub": load_public_key(other_pub),
        "pub_path": pub_path,
    }


@pytest.fixture(scope="module")
def signed(keys):
    return sign_report(build_report(make_result(privacy=True), issued_at=ISSUED_AT), keys["key"])


def _reason(data: bytes, pub) -> str:
    with pytest.raises(ReportVerificationError) as e:
        verify_signed_report(data, pub)
    return e.value.reason


def _resign_content(obj: dict) -> bytes:
    """Canonical bytes of edited content with the ORIGINAL signature: only the signature can
    tell."""
    return canonical_bytes(obj)


def test_intact_report_verifies_and_round_trips(keys, signed):
    v = verify_signed_report(signed, keys["pub"])
    assert v.report == build_report(make_result(privacy=True), issued_at=ISSUED_AT)
    assert v.key_id == key_id(keys["pub"])
    assert signed == canonical_bytes(json.loads(signed))  # the file itself is canonical


def test_every_sampled_single_byte_change_is_rejected(keys, signed):
    rng = random.Random(2026)
    positions = rng.sample(range(len(signed)), 600)
    for pos in positions:
        new = rng.choice([b for b in range(256) if b != signed[pos]])
        tampered = signed[:pos] + bytes([new]) + signed[pos + 1 :]
        with pytest.raises(ReportVerificationError):
            verify_signed_report(tampered, keys["pub"])


def test_every_position_of_a_small_report_every_bit(keys):
    small = sign_report(build_report(make_small_result(), issued_at=ISSUED_AT), keys["key"])
    rng = random.Random(7)
    for pos in range(len(small)):
        new = small[pos] ^ (1 << rng.randrange(8))
        with pytest.raises(ReportVerificationError):
            verify_signed_report(small[:pos] + bytes([new]) + small[pos + 1 :], keys["pub"])


def test_inserted_deleted_and_whitespace_bytes_are_rejected(keys, signed):
    rng = random.Random(1)
    for pos in rng.sample(range(len(signed)), 50):
        assert _reason(signed[:pos] + signed[pos + 1 :], keys["pub"])
        assert _reason(signed[:pos] + b" " + signed[pos:], keys["pub"])
    assert _reason(signed + b"\n", keys["pub"]) == "not-canonical"
    pretty = json.dumps(json.loads(signed), indent=1, ensure_ascii=False).encode()
    assert _reason(pretty, keys["pub"]) == "not-canonical"
    unsorted = json.dumps(json.loads(signed), separators=(",", ":"), ensure_ascii=False, sort_keys=False)
    reordered = json.loads(unsorted)
    flipped = json.dumps(
        {"signature": reordered["signature"], "report": reordered["report"]},
        separators=(",", ":"),
        ensure_ascii=False,
    ).encode()
    assert _reason(flipped, keys["pub"]) == "not-canonical"


def test_swapping_two_outcomes_att_values_is_rejected(keys, signed):
    obj = json.loads(signed)
    outs = obj["report"]["outcomes"]
    a, b = outs[0]["estimate"], outs[2]["estimate"]
    a["att"], b["att"] = b["att"], a["att"]
    assert _reason(_resign_content(obj), keys["pub"]) == "signature-mismatch"


def test_reordering_the_outcome_list_is_rejected(keys, signed):
    obj = json.loads(signed)
    obj["report"]["outcomes"].reverse()
    assert _reason(_resign_content(obj), keys["pub"]) == "signature-mismatch"


def test_moving_a_field_between_outcomes_is_rejected(keys, signed):
    obj = json.loads(signed)
    a, b = obj["report"]["outcomes"][0]["estimate"], obj["report"]["outcomes"][1]["estimate"]
    a["relative_risk"], b["relative_risk"] = b["relative_risk"], a["relative_risk"]
    assert _reason(_resign_content(obj), keys["pub"]) == "signature-mismatch"
    obj = json.loads(signed)
    rows = obj["report"]["balance"]
    rows[0]["covariate"], rows[1]["covariate"] = rows[1]["covariate"], rows[0]["covariate"]
    assert _reason(_resign_content(obj), keys["pub"]) == "signature-mismatch"


def test_report_signed_with_another_key_is_rejected(keys):
    other = sign_report(build_report(make_result(), issued_at=ISSUED_AT), keys["other_key"])
    with pytest.raises(ReportVerificationError, match="signed by a different key") as e:
        verify_signed_report(other, keys["pub"])
    assert key_id(keys["other_pub"]) in str(e.value)
    # claiming the right key id does not help: the signature is checked against the key given
    obj = json.loads(other)
    obj["signature"]["key_id"] = key_id(keys["pub"])
    assert _reason(canonical_bytes(obj), keys["pub"]) == "signature-mismatch"


def test_missing_or_malformed_signature_is_rejected(keys, signed):
    obj = json.loads(signed)
    unsigned = canonical_bytes({"report": obj["report"]})
    with pytest.raises(ReportVerificationError, match="signature missing"):
        verify_signed_report(unsigned, keys["pub"])
    for block in (
        None,
        {},
        {**obj["signature"], "algorithm": "RSA"},
        {**obj["signature"], "value": "not base64!"},
        {**obj["signature"], "value": base64.b64encode(b"x" * 63).decode()},
        {**obj["signature"], "extra": 1},
    ):
        assert _reason(canonical_bytes({**obj, "signature": block}), keys["pub"]) in ("bad-signature-block")
    assert _reason(canonical_bytes({**obj, "note": "x"}), keys["pub"]) == "bad-signature-block"
    assert _reason(canonical_bytes(obj["report"]), keys["pub"]) == "unreadable"


def test_base64_padding_bits_cannot_be_changed(keys, signed):
    obj = json.loads(signed)
    value = obj["signature"]["value"]  # 64 bytes: 86 chars + "==", last char carries 4 free bits
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    i = alphabet.index(value[-3])
    twin = alphabet[i ^ 1]  # same decoded bytes, different text
    assert base64.b64decode(value[:-3] + twin + "==") == base64.b64decode(value)
    obj["signature"]["value"] = value[:-3] + twin + "=="
    assert _reason(canonical_bytes(obj), keys["pub"]) == "bad-signature-block"


def test_valid_signature_over_a_non_report_is_rejected_by_schema(keys):
    body = {"schema_version": "rehealth.evidence-report/2", "issuer": "x"}
    sig = keys["key"].sign(canonical_bytes(body))
    data = canonical_bytes(
        {
            "report": body,
            "signature": {
                "algorithm": "Ed25519",
                "canonicalization": "RFC 8785",
                "key_id": key_id(keys["pub"]),
                "value": base64.b64encode(sig).decode(),
            },
        }
    )
    with pytest.raises(ReportVerificationError, match="does not follow schema") as e:
        verify_signed_report(data, keys["pub"])
    assert e.value.reason == "schema"


def test_report_signed_under_the_old_recipe_is_refused_as_old_format(keys):
    """Before RFC 8785 the signature covered Python's json.dumps (sorted keys, ``2.0``,
    ``1e-06``) and the block named no canonicalization: such a file is refused by name, not
    checked against bytes it was never signed over."""
    body = build_report(make_result(), issued_at=ISSUED_AT).model_dump(mode="json")

    def old(v):
        return json.dumps(v, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()

    assert old(body) != canonical_bytes(body)  # the report has floats the recipes write differently
    block = {"algorithm": "Ed25519", "key_id": key_id(keys["pub"])}
    block["value"] = base64.b64encode(keys["key"].sign(old(body))).decode()
    with pytest.raises(ReportVerificationError, match="old pre-RFC 8785 format") as e:
        verify_signed_report(old({"report": body, "signature": block}), keys["pub"])
    assert e.value.reason == "old-format"
    # adding the marker to it does not make it verify: its bytes are not RFC 8785
    marked = old({"report": body, "signature": {**block, "canonicalization": "RFC 8785"}})
    assert _reason(marked, keys["pub"]) == "not-canonical"
    assert (
        _reason(
            canonical_bytes({"report": body, "signature": {**block, "canonicalization": "RFC 8785"}}),
            keys["pub"],
        )
        == "signature-mismatch"
    )
    other = {**json.loads(sign_report(build_report(make_result(), issued_at=ISSUED_AT), keys["key"]))}
    other["signature"]["canonicalization"] = "JSON-sorted"
    assert _reason(canonical_bytes(other), keys["pub"]) == "old-format"


def test_keygen_writes_private_key_0600_and_refuses_to_overwrite(tmp_path):
    key_path, pub_path = generate_keypair(tmp_path, passphrase=PASSPHRASE)
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    assert b"BEGIN ENCRYPTED PRIVATE KEY" in key_path.read_bytes()
    assert b"BEGIN PUBLIC KEY" in pub_path.read_bytes()
    with pytest.raises(ReportError, match="refusing to overwrite"):
        generate_keypair(tmp_path, passphrase=PASSPHRASE)
    with pytest.raises(ReportError, match="not an Ed25519 private key|not a usable PEM key"):
        load_private_key(pub_path)
    with pytest.raises(ReportError, match="cannot read key"):
        load_public_key(tmp_path / "missing.pub")


def test_verify_file_works_from_report_and_public_key_alone(keys, signed, tmp_path):
    path = tmp_path / "report.json"
    path.write_bytes(signed)
    assert verify_file(path, keys["pub_path"]).report.study.name == "cv-prevention-2026"
