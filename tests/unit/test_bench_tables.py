"""The benchmarks' Markdown writer (bench/_table.py) on a tiny input; no benchmark runs.

The tables in docs/benchmarks/ are written by this code, never by hand, so what it writes is
what the docs show: a header that says which command, date, machine and commit produced the
figures, and tables that render as Markdown (one cell per column, pipes escaped).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))

import _table  # noqa: E402
from _table import Table, add_write_argument, provenance, render, write_tables  # noqa: E402

PROV = {
    "command": "python bench/bench_x.py --seeds 3 --write",
    "date": "2026-12-05 06:00 UTC, took 2 s",
    "machine": "2 of 2 cores, Some CPU, load average 0.50 at the start; Python 3.11.7",
    "commit": "0123456789ab",
}


def _cells(line: str) -> list[str]:
    """The cells of a Markdown table row (split on pipes that are not escaped)."""
    assert line.startswith("|") and line.endswith("|"), line
    return [c.strip() for c in re.split(r"(?<!\\)\|", line[1:-1])]


def test_table_markdown_rows_alignment_and_escaping():
    t = Table(
        columns=("name", "seconds", "note"), align="lrc", rows=[("a|b", 0.123456, None), ("c", 12, "x")]
    )
    lines = t.markdown().splitlines()
    assert _cells(lines[0]) == ["name", "seconds", "note"]
    assert _cells(lines[1]) == [":-----", "--------:", ":----:"]
    assert _cells(lines[2]) == ["a\\|b", "0.1235", "—"]  # pipe escaped, float to 4 digits, None
    assert _cells(lines[3]) == ["c", "12", "x"]
    assert len(lines) == 4


def test_table_refuses_ragged_rows_and_bad_alignment():
    with pytest.raises(ValueError, match="row 0 has 1 cells for 2 columns"):
        Table(columns=("a", "b"), rows=[("only",)])
    with pytest.raises(ValueError, match="letters"):
        Table(columns=("a", "b"), rows=[], align="l")
    with pytest.raises(ValueError, match="l, r or c"):
        Table(columns=("a",), rows=[], align="x")


def test_render_header_then_titled_tables():
    text = render(
        title="Tiny bench",
        setting="3 seeds (quick)",
        notes="Closing note.",
        prov=PROV,
        tables=[
            Table(title="first", columns=("k", "v"), rows=[("x", 1)], note="below"),
            Table(columns=("k",), rows=[("y",)]),
        ],
    )
    lines = text.splitlines()
    assert lines[0] == "# Tiny bench"
    assert "- **Command:** `python bench/bench_x.py --seeds 3 --write` (from the repository root)" in lines
    assert "- **Date:** 2026-12-05 06:00 UTC, took 2 s" in lines
    assert any(line.startswith("- **Machine:** 2 of 2 cores") for line in lines)
    assert "- **Commit:** `0123456789ab`" in lines
    assert "- **Setting:** 3 seeds (quick)" in lines
    assert lines.index("## first") < lines.index("| x | 1 |") < lines.index("below")
    assert "| y |" in lines and text.endswith("Closing note.\n")
    assert "\n\n\n" not in text  # the untitled table leaves no empty heading


def test_write_tables_writes_docs_benchmarks_name(tmp_path):
    path = write_tables(
        "tiny", title="Tiny", tables=[Table(columns=("a",), rows=[(1,)])], root=tmp_path, prov=PROV
    )
    assert path == tmp_path / "docs" / "benchmarks" / "tiny.md"
    assert path.read_text(encoding="utf-8") == render(
        title="Tiny", tables=[Table(columns=("a",), rows=[(1,)])], prov=PROV
    )
    with pytest.raises(ValueError):
        write_tables("../escape", title="x", tables=[], root=tmp_path, prov=PROV)


def test_provenance_names_the_script_the_commit_and_the_cores():
    prov = provenance([str(ROOT / "bench" / "bench_synth.py"), "--scale", "0.1", "--write"])
    assert prov["command"] == "python bench/bench_synth.py --scale 0.1 --write"
    assert re.fullmatch(r"[0-9a-f]{12}( \+ uncommitted changes)?", prov["commit"])
    assert re.match(r"\d+ of \d+ cores, ", prov["machine"])
    assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d UTC, took \d+ s", prov["date"])


def test_write_flag():
    p = argparse.ArgumentParser()
    add_write_argument(p, "synth")
    assert p.parse_args([]).write is False and p.parse_args(["--write"]).write is True
    assert "synth.md" in p.format_help()
    assert _table.OUT_DIR == Path("docs") / "benchmarks"
