"""``python -m coordinator.cli.local_federation --spec study.toml``: a local federation that
stays up (``deploy/local-federation.sh``).

This entry point used to be ``coordinator.federation.launcher.main``; it needs the study side
(the spec's sites and the operator's keys, :mod:`coordinator.study.runner`), which itself imports
the launcher, so living in the launcher made the two modules import each other. Here, in the
CLI layer above both, the import graph stays acyclic (``tests/unit/test_layering.py``).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from coordinator.federation.launcher import HOST, LocalFederation
from shared.logsetup import setup_logging


def main(argv: list[str] | None = None) -> int:
    """Start a SuperLink and one SuperNode per site of the spec on 127.0.0.1, print the address
    to submit studies to, and keep them up until Ctrl-C (then stop them all)."""
    import argparse

    from coordinator.files import load_spec
    from coordinator.study.runner import coordinator_keys, site_nodes

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("--spec", type=Path, required=True)
    ap.add_argument("--workdir", type=Path, default=Path("local-federation"))
    ap.add_argument(
        "--key",
        type=Path,
        default=None,
        help="the operator's Ed25519 key whose .pub every node pins (default: one "
        "made on first use in WORKDIR/keys)",
    )
    args = ap.parse_args(argv)
    setup_logging(os.environ.get("REHEALTH_LOG_FORMAT", "text"), os.environ.get("REHEALTH_LOG_LEVEL", "INFO"))
    spec = load_spec(args.spec)
    workdir = args.workdir.resolve()
    key, pub = coordinator_keys(workdir / "keys", args.key)
    with LocalFederation(workdir, site_nodes(spec, workdir, pub)) as fed:
        print(
            f"SuperLink on {HOST}:{fed.port} (TLS) with {len(fed.nodes)} SuperNodes "
            f"({', '.join(n.site for n in fed.nodes)}); logs in {workdir / 'logs'}",
            flush=True,
        )
        # a throw-away key is encrypted with the passphrase in keys/passphrase (report/keys.py)
        phrase = key.with_name("passphrase")
        env = f"REHEALTH_KEY_PASSPHRASE_FILE={phrase} " if args.key is None and phrase.exists() else ""
        print(
            f"run a study:  {env}rehealth study run --spec {args.spec} --superlink {HOST}:{fed.port} "
            f"--root-certificates {workdir / 'pki' / 'ca.crt'} --key {key}",
            flush=True,
        )
        try:
            while all(p.poll() is None for p in fed.procs.values()):
                time.sleep(1)
            print("a federation process exited; stopping", flush=True)
            return 1
        except KeyboardInterrupt:
            print("stopping", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
