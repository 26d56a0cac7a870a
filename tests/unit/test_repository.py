"""The repository itself: no merge left half-done in any tracked file (ruff catches conflict
markers in Python; a Markdown page or a TOML file would carry them silently)."""

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MARKER = re.compile(r"^(<{7} |={7}$|>{7} )", re.M)


def test_no_conflict_markers_in_tracked_files():
    files = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    assert len(files) > 100
    hits = []
    for name in files:
        path = ROOT / name
        if path.suffix in {".py", ".md", ".toml", ".sh", ".proto", ".j2", ".html", ".txt", ".cfg"}:
            text = path.read_text(errors="replace")
            hits += [f"{name}:{text.count(chr(10), 0, m.start()) + 1}" for m in MARKER.finditer(text)]
    assert not hits, hits
