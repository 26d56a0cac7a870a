"""The PDF says what it is (a rendering of report.json, with that file's SHA-256, not signed)
and the same report renders to the same PDF bytes, in another process and at another time."""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
from pypdf import PdfReader
from report_fixtures import ISSUED_AT, make_result

from coordinator.report import generate_keypair, verify_file, write_signed_report

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    d = tmp_path_factory.mktemp("pdf")
    key, pub = generate_keypair(d / "keys", passphrase=None)
    paths = write_signed_report(make_result(privacy=True), key_path=key, out_dir=d / "a", issued_at=ISSUED_AT)
    return {**paths, "pub": pub, "dir": d}


def test_every_page_says_it_is_an_unsigned_rendering_of_the_signed_file(written):
    digest = hashlib.sha256(written["json"].read_bytes()).hexdigest()
    pages = [p.extract_text() for p in PdfReader(io.BytesIO(written["pdf"].read_bytes())).pages]
    assert len(pages) >= 3
    footer = f"Rendering of report.json, SHA-256 {digest}, not signed"
    for i, text in enumerate(pages, 1):
        assert footer in text, f"page {i} lacks its footer"
        assert "Signed Ed25519" not in text
    assert "This PDF is a rendering and is not signed" in "".join(pages).replace("\n", " ")


_RENDER_AGAIN = """
import sys
from coordinator.report import verify_file, write_renderings
v = verify_file(sys.argv[1], sys.argv[2])
write_renderings(v, signed_name="report.json", out_dir=sys.argv[3])
"""


def test_two_renderings_of_one_report_are_byte_identical(written):
    """Rendered again from the signed file in a fresh process (another hash seed, seconds
    later): the same PDF and HTML bytes, and the PDF's creation date is the report's."""
    again = written["dir"] / "b"
    env = {**os.environ, "PYTHONHASHSEED": "4242", "PYTHONPATH": str(ROOT)}
    subprocess.run(
        [sys.executable, "-c", _RENDER_AGAIN, str(written["json"]), str(written["pub"]), str(again)],
        env=env,
        cwd=ROOT,
        check=True,
        timeout=300,
    )
    assert (again / "report.pdf").read_bytes() == written["pdf"].read_bytes()
    assert (again / "report.html").read_bytes() == written["html"].read_bytes()
    meta = PdfReader(io.BytesIO(written["pdf"].read_bytes())).metadata
    assert meta is not None and meta.creation_date is not None
    assert meta.creation_date.isoformat().startswith(ISSUED_AT[:19])
    assert verify_file(written["json"], written["pub"]).report.issued_at == ISSUED_AT
