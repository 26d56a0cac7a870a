"""Benchmark: how long verifying a typical signed evidence report takes.

Prints, for a 3-outcome, 16-covariate, 20-stratum, 5-site report:
  * in-process ``verify_signed_report`` (parse, canonical check, Ed25519, schema): median ms;
  * ``verify_file`` including reading the key and the file;
  * the command line end to end (process start included): ``rehealth-verify``,
    ``rehealth report verify`` (the latter also loads every other CLI group) and the
    independent Node.js check ``deploy/verify/verify-report.mjs``;
and the time to build+sign and to render HTML+PDF for scale. Target: verify < 1 s.

Run: .venv/bin/python bench/bench_verify.py [--write]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "unit"))

from _table import Table, add_write_argument, write_tables  # noqa: E402
from report_fixtures import ISSUED_AT, make_result  # noqa: E402

from coordinator.report import (  # noqa: E402
    build_report,
    generate_keypair,
    load_private_key,
    load_public_key,
    sign_report,
    verify_file,
    verify_signed_report,
    write_signed_report,
)


def _median_ms(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_write_argument(ap, "verify")
    args = ap.parse_args()
    rows: list[tuple] = []
    with tempfile.TemporaryDirectory() as tmp_name:
        d = Path(tmp_name)
        key_path, pub_path = generate_keypair(d / "keys", passphrase=None)
        result = make_result(privacy=True)
        key, pub = load_private_key(key_path), load_public_key(pub_path)
        t = time.perf_counter()
        signed = sign_report(build_report(result, issued_at=ISSUED_AT), key)
        build_ms = (time.perf_counter() - t) * 1e3
        report = d / "report.json"
        report.write_bytes(signed)
        print(f"report size: {len(signed):,} bytes; build+sign {build_ms:.1f} ms")
        rows.append(("build + sign (once)", f"{build_ms:.1f} ms"))
        in_process = _median_ms(lambda: verify_signed_report(signed, pub), 200)
        print(f"verify_signed_report (in process): {in_process:.2f} ms median")
        rows.append(("verify_signed_report, in process (median of 200)", f"{in_process:.2f} ms"))
        with_io = _median_ms(lambda: verify_file(report, pub_path), 100)
        print(f"verify_file (read key + file + verify): {with_io:.2f} ms median")
        rows.append(("verify_file: read key + file, verify (median of 100)", f"{with_io:.2f} ms"))
        bindir = Path(sys.executable).parent
        node = shutil.which("node")
        verifier = ROOT / "deploy" / "verify" / "verify-report.mjs"
        for cmd in (
            [str(bindir / "rehealth-verify"), str(report), "--key", str(pub_path)],
            [str(bindir / "rehealth"), "report", "verify", str(report), "--key", str(pub_path)],
            *([[node, str(verifier), str(report), "--key", str(pub_path)]] if node else []),
        ):
            runs = []
            for _ in range(3):
                t = time.perf_counter()
                subprocess.run(cmd, check=True, capture_output=True)
                runs.append(time.perf_counter() - t)
            label = Path(cmd[0]).name + (" report verify" if cmd[1] == "report" else "")
            label = "node verify-report.mjs" if cmd[0] == node else label
            print(f"{label} (process end to end): {statistics.median(runs) * 1e3:.0f} ms median of 3")
            rows.append(
                (f"`{label}`, process end to end (median of 3)", f"{statistics.median(runs) * 1e3:.0f} ms")
            )
        t = time.perf_counter()
        write_signed_report(result, key_path=key_path, out_dir=d / "out", issued_at=ISSUED_AT)
        written_ms = (time.perf_counter() - t) * 1e3
        print(f"write_signed_report (build, sign, verify, HTML, PDF): {written_ms:.0f} ms")
        rows.append(("write_signed_report: build, sign, verify, HTML, PDF (once)", f"{written_ms:.0f} ms"))
    if args.write:
        write_tables(
            "verify",
            title="Evidence report: verify, sign and render time",
            setting=f"a 3-outcome, 16-covariate, 20-stratum, 5-site DP report "
            f"({len(signed):,} bytes; tests/unit/report_fixtures.py); target: "
            "verify < 1 s",
            tables=[Table(columns=("step", "time"), rows=rows, align="lr")],
        )


if __name__ == "__main__":
    main()
