"""The report's signature checked in another language: ``deploy/verify/verify-report.mjs``
(Node.js standard library, its own RFC 8785 code) accepts what Python signed, and nothing else.

Node is required, not optional: ``deploy/node.sh`` installs it (CI and ``deploy/dev.sh test``
call it). Every mutant is checked in one Node process (a driver importing the verifier), so the
~17,000 mutants of a real report take seconds.
"""

from __future__ import annotations

import json
import random
import shutil
import struct
import subprocess
from pathlib import Path

import pytest
from report_fixtures import ISSUED_AT, make_result

from coordinator.report import build_report, canonical_bytes, generate_keypair, load_private_key, sign_report

ROOT = Path(__file__).resolve().parents[2]
VERIFIER = ROOT / "deploy" / "verify" / "verify-report.mjs"


@pytest.fixture(scope="module")
def node() -> str:
    path = shutil.which("node")
    assert path, "Node.js is required for this test: run `bash deploy/node.sh`"
    return path


@pytest.fixture(scope="module")
def issued(tmp_path_factory):
    d = tmp_path_factory.mktemp("node-verify")
    key, pub = generate_keypair(d / "keys", passphrase=None)
    other_key, other_pub = generate_keypair(d / "other", passphrase=None)
    doc = build_report(make_result(privacy=True), issued_at=ISSUED_AT)
    report = d / "report.json"
    report.write_bytes(sign_report(doc, load_private_key(key)))
    forged = d / "other.json"
    forged.write_bytes(sign_report(doc, load_private_key(other_key)))
    return {"report": report, "pub": pub, "other": forged, "other_pub": other_pub, "dir": d}


def _run(node: str, *args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run([node, str(VERIFIER), *map(str, args)], capture_output=True, text=True, timeout=60)


def test_node_accepts_a_genuine_report_and_rejects_another_keys(node, issued):
    ok = _run(node, issued["report"], "--key", issued["pub"])
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert ok.stdout.startswith("OK:") and '"ReHealth Core coordinator"' in ok.stdout
    bad = _run(node, issued["other"], "--key", issued["pub"])
    assert bad.returncode == 1 and "signed by key id" in bad.stdout
    # the forged report is itself genuine under its own key: only the key decides
    assert _run(node, issued["other"], "--key", issued["other_pub"]).returncode == 0
    assert _run(node, issued["report"], "--key").returncode == 2


_MUTANTS = """
import {{ readFileSync }} from "node:fs";
import {{ createPublicKey }} from "node:crypto";
import {{ verifyReport }} from {verifier};
const data = readFileSync({report});
const key = createPublicKey(readFileSync({pub}));
if (!verifyReport(data, {{ key }}).ok) throw new Error("the genuine report must verify");
let tried = 0;
const accepted = [], reasons = {{}};
for (let i = 0; i < data.length; i++) {{
  // flip bit 0, 1 or 2: a digit stays a digit ("2" -> "3", "0" -> "4"), a letter a letter, so
  // most mutants still parse and the byte form and the signature must do the rejecting
  const m = Buffer.from(data);
  m[i] = data[i] ^ (1 << (i % 3));
  const r = verifyReport(m, {{ key }});
  tried++;
  if (r.ok) accepted.push(i);
  else {{ const k = r.reason.split(":")[0].split(" (")[0]; reasons[k] = (reasons[k] || 0) + 1; }}
}}
console.log(JSON.stringify({{ length: data.length, tried, accepted, reasons }}));
"""


def test_node_rejects_every_single_byte_change(node, issued):
    driver = issued["dir"] / "mutants.mjs"
    driver.write_text(
        _MUTANTS.format(
            verifier=json.dumps(VERIFIER.as_uri()),
            report=json.dumps(str(issued["report"])),
            pub=json.dumps(str(issued["pub"])),
        )
    )
    out = subprocess.run([node, str(driver)], capture_output=True, text=True, timeout=300, check=True)
    summary = json.loads(out.stdout)
    assert summary["length"] == len(issued["report"].read_bytes())
    assert summary["tried"] == summary["length"]
    assert summary["accepted"] == []
    # the signature itself, not only the byte form, did the rejecting for some mutants
    assert summary["reasons"].get("signature does not match", 0) > 100, summary["reasons"]


_ROUNDTRIP = """
import {{ readFileSync }} from "node:fs";
import {{ jcs }} from {verifier};
for (const line of readFileSync(0, "utf8").split("\\n").filter(Boolean)) console.log(jcs(JSON.parse(line)));
"""


def _random_double(rng: random.Random) -> float:
    while True:
        (x,) = struct.unpack("<d", rng.getrandbits(64).to_bytes(8, "little"))
        if x == x and abs(x) != float("inf"):
            return x


def test_node_jcs_equals_rfc8785_package_on_random_doubles_and_strings(node, issued):
    """Two implementations of RFC 8785 (the ``rfc8785`` package and the verifier's) agree
    byte for byte on random bit patterns as doubles, integers, awkward strings and key orders."""
    rng = random.Random(8785)
    values = []
    for _ in range(400):
        values.append(
            {
                "d": [_random_double(rng) for _ in range(8)],
                "small": [
                    rng.uniform(-1e-6, 1e-6),
                    rng.uniform(-1e22, 1e22),
                    float(rng.randrange(-(2**53), 2**53)),
                ],
                "i": rng.randrange(-(2**53) + 1, 2**53),
                "s": "".join(
                    chr(rng.choice([rng.randrange(0, 0x80), rng.randrange(0x80, 0xD800), 0x1F600, 0x2028]))
                    for _ in range(6)
                ),
                "é": 1,
                "\U0001f600": 2,
                "\ufb33": 3,
                "Z": 4,
                "a": 5,
            }
        )
    lines = [canonical_bytes(v) for v in values]
    driver = issued["dir"] / "roundtrip.mjs"
    driver.write_text(_ROUNDTRIP.format(verifier=json.dumps(VERIFIER.as_uri())))
    out = subprocess.run(
        [node, str(driver)], input=b"\n".join(lines), capture_output=True, timeout=60, check=True
    ).stdout.splitlines()
    assert out == lines
