"""HTML and PDF renderings of a signed report, written next to the signed JSON."""

from __future__ import annotations

import base64
import re

import pytest
from report_fixtures import ISSUED_AT, make_result, make_small_result

from coordinator.report import fmt, generate_keypair, plots, verify_file, write_signed_report
from coordinator.report.build import build_report
from coordinator.report.view import report_view

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def keypair(tmp_path_factory):
    return generate_keypair(tmp_path_factory.mktemp("keys"), passphrase=None)


@pytest.fixture(scope="module")
def written(keypair, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    return write_signed_report(
        make_result(privacy=True),
        key_path=keypair[0],
        out_dir=out,
        issuer="Coordinator <script>alert(1)</script>",
        issued_at=ISSUED_AT,
    )


def test_writes_signed_json_html_and_pdf_that_verify(keypair, written):
    assert set(written) == {"json", "html", "pdf"}
    assert all(p.exists() and p.stat().st_size > 1000 for p in written.values())
    v = verify_file(written["json"], keypair[1])
    assert v.report.issued_at == ISSUED_AT


def test_html_is_self_contained_with_three_plots_and_verification(keypair, written):
    html = written["html"].read_text(encoding="utf-8")
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    assert len(images) == 3 and all(base64.b64decode(i).startswith(PNG) for i in images)
    assert not re.search(r'(src|href)="(https?:)?//', html)  # nothing fetched from elsewhere
    v = verify_file(written["json"], keypair[1])
    assert v.key_id in html and v.sha256 in html
    assert "rehealth report verify report.json" in html
    assert "<script>alert" not in html and "&lt;script&gt;" in html  # escaped, not executed
    for text in (
        "Love plot",
        "Propensity-score overlap",
        "Diagnostics against stated thresholds",
        "Privacy share of CI",
        "For the insurer and reinsurer",
        "For the regulator",
        "For enterprise HR and ESG",
        "Sim. truth",
        "SIMULATED STUDY",
        "219,862",
    ):
        assert text in html, text


def test_pdf_is_a_paginated_document(written):
    pdf = written["pdf"].read_bytes()
    assert pdf.startswith(b"%PDF-") and pdf.rstrip().endswith(b"%%EOF")
    pages = len(re.findall(rb"/Type\s*/Page\b", pdf))
    assert 4 <= pages <= 10
    assert len(re.findall(rb"/Subtype\s*/Image", pdf)) >= 3


def test_renders_without_truth_or_privacy(keypair, tmp_path):
    paths = write_signed_report(
        make_result(privacy=False, truth=False), key_path=keypair[0], out_dir=tmp_path
    )
    html = paths["html"].read_text(encoding="utf-8")
    assert "Sim. truth" not in html and "SIMULATED STUDY" not in html
    assert "off: no noise added" in html
    assert paths["pdf"].read_bytes().startswith(b"%PDF-")


def test_plots_handle_unbounded_and_unused_strata():
    doc = build_report(make_small_result(), issued_at=ISSUED_AT)  # both strata open-ended
    for png in (
        plots.love_plot(doc.balance, threshold=0.1),
        plots.overlap_plot(doc.strata),
        plots.estimate_plot(doc.outcomes),
    ):
        assert png.startswith(PNG)
    spans = plots._finite_spans(doc.strata)
    assert spans[0][2] and spans[1][2] and all(lo < hi for lo, hi, _ in spans)


def test_balance_rows_the_privacy_noise_leaves_unresolved_render_as_na(keypair, tmp_path):
    """Under DP an SMD may be None (variance unresolved): the report says n/a, the Love plot
    leaves the row out and says so, and the balance check only judges the resolved rows."""
    result = make_result(privacy=True)
    rows = tuple(
        b.model_copy(
            update={"smd_before": None, "smd_after": None, "var_ratio_before": None, "var_ratio_after": None}
        )
        if i % 2
        else b
        for i, b in enumerate(result.balance)
    )
    result = result.model_copy(update={"balance": rows})
    doc = build_report(result, issued_at=ISSUED_AT)
    assert [doc.balanced(b) for b in doc.balance][1] is None
    check = {c.name: c for c in doc.checks}["balance_smd"]
    assert "unresolved under the privacy noise" in check.detail
    assert plots.love_plot(doc.balance, threshold=0.1).startswith(PNG)
    paths = write_signed_report(result, key_path=keypair[0], out_dir=tmp_path)
    assert "n/a: the privacy noise" in paths["html"].read_text(encoding="utf-8")
    none_known = result.model_copy(
        update={
            "balance": tuple(
                b.model_copy(update={"smd_before": None, "smd_after": None}) for b in result.balance
            )
        }
    )
    check = {c.name: c for c in build_report(none_known, issued_at=ISSUED_AT).checks}["balance_smd"]
    assert not check.passed and check.value is None


def test_a_dp_report_states_each_outcome_against_the_physical_limit_and_exact(keypair, written):
    """Issue #19: per outcome, CI width ÷ physical limit and ÷ exact (estimated), with what the
    limit is, in the signed JSON, the HTML and the summaries; an exact study's report has none."""
    v = verify_file(written["json"], keypair[1])
    html = written["html"].read_text(encoding="utf-8")
    for row in v.report.outcomes:
        o = row.estimate
        assert o.ratio_limit is not None and o.ratio_exact_est is not None
        assert f'{o.name}: CI width ÷ physical limit</td><td class="num">{fmt.ratio(o.ratio_limit)}' in html
        assert (
            f'{o.name}: CI width ÷ exact (estimated)</td><td class="num">{fmt.ratio(o.ratio_exact_est)}'
            in html
        )
    assert "Physical limit: the 95% CI width if a trusted party" in html
    assert "width against the physical limit" in v.report.summaries.regulator

    doc = build_report(make_result(privacy=False), issued_at=ISSUED_AT)
    assert all(r.estimate.limit_width is None and r.estimate.ratio_limit is None for r in doc.outcomes)
    assert "physical limit" not in " ".join((doc.summaries.regulator, doc.summaries.insurer))
    view = report_view(doc)
    assert not view.privacy.note and not any("physical limit" in r[0] for r in view.privacy.rows)
