"""Benchmark tables as Markdown files, written by the benchmarks themselves.

Every ``bench/bench_*.py`` takes ``--write`` (:func:`add_write_argument`); with it, the figures
it prints are also written to ``docs/benchmarks/<name>.md`` through :func:`write_tables`, the
one piece of code that formats them. Each file opens with where its numbers came from — the
exact command, the date, the machine (cores, CPU, load) and the git commit — so a figure in the
docs can be traced to a run and reproduced, instead of being pasted by hand and going stale.

>>> t = Table(columns=("step", "seconds"), rows=[("generate", 0.31)], align="lr")
>>> print(t.markdown())
| step | seconds |
|:-----|--------:|
| generate | 0.31 |
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

__all__ = [
    "OUT_DIR",
    "Table",
    "add_write_argument",
    "cell",
    "provenance",
    "render",
    "write_readme_block",
    "write_tables",
]

ROOT = Path(__file__).resolve().parents[1]
#: Where the tables land, relative to the repository root.
OUT_DIR = Path("docs") / "benchmarks"
#: When the benchmark started (it imports this module first) and the load it started under:
#: on a shared machine the load says how much of the wall clock was the benchmark's.
#: The cores it may use are read then too (bench_risk.py pins itself to one core for its last part).
_STARTED = (
    dt.datetime.now(dt.timezone.utc),
    os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan"),
    len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 0,
)


def cell(value) -> str:
    """One table cell: floats to 4 significant digits, ``None`` as a dash, pipes escaped
    (a ``|`` inside a cell would end it)."""
    if value is None:
        text = "—"
    elif isinstance(value, float):
        text = f"{value:.4g}"
    else:
        text = str(value)
    return text.replace("|", "\\|").replace("\n", " ")


@dataclass(frozen=True)
class Table:
    """One Markdown table: a title (optional), column names, rows and a note below it.

    ``align`` has one letter per column: ``l`` (left), ``r`` (right, for numbers) or ``c``.
    """

    columns: Sequence[str]
    rows: Sequence[Sequence]
    title: str = ""
    note: str = ""
    align: str = ""

    def __post_init__(self):
        if self.align and len(self.align) != len(self.columns):
            raise ValueError(
                f"align {self.align!r} has {len(self.align)} letters for {len(self.columns)} columns"
            )
        if set(self.align) - set("lrc"):
            raise ValueError(f"align {self.align!r}: use l, r or c per column")
        for i, row in enumerate(self.rows):
            if len(row) != len(self.columns):
                raise ValueError(f"row {i} has {len(row)} cells for {len(self.columns)} columns")

    def markdown(self) -> str:
        align = self.align or "l" * len(self.columns)
        rule = {"l": ":-{}", "r": "-{}:", "c": ":{}:"}
        lines = [
            "| " + " | ".join(cell(c) for c in self.columns) + " |",
            "|"
            + "|".join(rule[a].format("-" * max(len(str(c)), 1)) for a, c in zip(align, self.columns))
            + "|",
        ]
        lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in self.rows]
        return "\n".join(lines)


def _git(*args: str) -> str:
    try:
        out = subprocess.run(
            ["git", "-C", str(ROOT), *args], capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout.strip()


def _commit() -> str:
    commit = _git("rev-parse", "--short=12", "HEAD") or "unknown"
    if commit != "unknown" and _git("status", "--porcelain", "--untracked-files=no"):
        commit += " + uncommitted changes"
    return commit


#: The code the benchmark runs is the code at its start: read the commit then.
_COMMIT = _commit()


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def provenance(argv: Sequence[str] | None = None) -> dict[str, str]:
    """Where a run's figures come from: command, date, machine and commit.

    The commit is marked ``+ uncommitted changes`` when tracked files differ from it, since
    the figures then belong to no commit.
    """
    argv = list(sys.argv if argv is None else argv)
    script = Path(argv[0]).resolve() if argv else None
    try:
        shown = str(script.relative_to(ROOT)) if script else ""
    except ValueError:
        shown = str(script)
    commit = _COMMIT
    started, load, usable = _STARTED
    took = (dt.datetime.now(dt.timezone.utc) - started).total_seconds()
    return {
        "command": shlex.join(["python", shown, *argv[1:]]),
        "date": f"{started:%Y-%m-%d %H:%M} UTC, took {took:.0f} s",
        "machine": f"{usable} of {os.cpu_count()} cores, {_cpu_model()}, load average "
        f"{load:.2f} at the start; Python {platform.python_version()}",
        "commit": commit,
    }


def render(
    *,
    title: str,
    tables: Sequence[Table],
    setting: str = "",
    notes: str = "",
    prov: dict[str, str] | None = None,
) -> str:
    """The whole Markdown page: title, provenance, the setting, the tables, notes."""
    prov = prov if prov is not None else provenance()
    parts = [
        f"# {title}",
        "",
        "<!-- Written by the benchmark (--write); do not edit by hand: re-run the command. -->",
        "",
        f"- **Command:** `{prov['command']}` (from the repository root)",
        f"- **Date:** {prov['date']}",
        f"- **Machine:** {prov['machine']}",
        f"- **Commit:** `{prov['commit']}`",
    ]
    if setting:
        parts.append(f"- **Setting:** {setting}")
    for t in tables:
        parts += ["", f"## {t.title}" if t.title else "", "", t.markdown()]
        if t.note:
            parts += ["", t.note]
    if notes:
        parts += ["", notes]
    text = "\n".join(parts)
    while "\n\n\n" in text:  # an untitled table leaves an empty heading line
        text = text.replace("\n\n\n", "\n\n")
    return text.rstrip() + "\n"


def write_tables(
    name: str,
    *,
    title: str,
    tables: Sequence[Table],
    setting: str = "",
    notes: str = "",
    root: Path | None = None,
    prov: dict[str, str] | None = None,
) -> Path:
    """Write ``docs/benchmarks/<name>.md`` under ``root`` (the repository) and return its path."""
    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"benchmark name {name!r}: a plain file name, e.g. 'synth'")
    path = (root or ROOT) / OUT_DIR / f"{name}.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        render(title=title, tables=tables, setting=setting, notes=notes, prov=prov), encoding="utf-8"
    )
    print(f"wrote {path}", file=sys.stderr)
    return path


def write_readme_block(name: str, markdown: str, *, root: Path | None = None) -> Path:
    """Replace the README's block between ``<!-- bench:<name> -->`` and ``<!-- /bench:<name> -->``
    with ``markdown`` (a benchmark's summary table, so the README quotes only what the benchmark
    wrote); ValueError if the README lacks the markers."""
    path = (root or ROOT) / "README.md"
    text = path.read_text(encoding="utf-8")
    start, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    i, j = text.find(start), text.find(end)
    if i < 0 or j < i:
        raise ValueError(f"{path} has no {start} … {end} block")
    path.write_text(text[: i + len(start)] + "\n" + markdown.strip() + "\n" + text[j:], encoding="utf-8")
    print(f"wrote the {name} block of {path}", file=sys.stderr)
    return path


def add_write_argument(parser: argparse.ArgumentParser, name: str) -> None:
    """``--write``: also write the tables to ``docs/benchmarks/<name>.md``."""
    parser.add_argument(
        "--write",
        action="store_true",
        help=f"also write the tables to {OUT_DIR / (name + '.md')}, with the "
        "command, date, machine and commit that produced them",
    )
