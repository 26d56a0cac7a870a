"""`rehealth report` commands: keygen, build, sign, render, verify.

No logic of its own: each command calls :mod:`coordinator.report` and prints paths or a verdict
(``--format json`` for machines). ``verify`` exits 0 for an intact report signed by the given
key and 1 otherwise, with the reason; 2 means the command could not run (unreadable key).
"""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path

import typer

app = typer.Typer(
    help="Evidence reports: sign, render and verify.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)


class Fmt(str, Enum):
    text = "text"
    json = "json"


def _emit(fmt: Fmt, payload: dict, lines: list[str]) -> None:
    if fmt is Fmt.json:
        typer.echo(json.dumps(payload, indent=2, sort_keys=True))
    else:
        for line in lines:
            typer.echo(line)


def _fail(message: str, *, code: int = 2) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


@app.command()
def keygen(
    out: Path = typer.Option(..., "--out", help="Folder for coordinator.key and coordinator.pub."),
    force: bool = typer.Option(False, help="Overwrite an existing key pair."),
    insecure_plaintext_key: bool = typer.Option(
        False,
        "--insecure-plaintext-key",
        help="Write the private key unencrypted (throw-away demos and tests only).",
    ),
    fmt: Fmt = typer.Option(Fmt.text, "--format", help="Output format."),
) -> None:
    """Generate the coordinator's Ed25519 signing key (PKCS#8 PEM, mode 0600, encrypted with
    REHEALTH_KEY_PASSPHRASE or the file REHEALTH_KEY_PASSPHRASE_FILE names) and public key."""
    from coordinator.report import ReportError, generate_keypair, key_id, load_public_key
    from coordinator.report.keys import passphrase_for_writing

    try:
        phrase = passphrase_for_writing(insecure_plaintext=insecure_plaintext_key)
        key_path, pub_path = generate_keypair(out, passphrase=phrase, overwrite=force)
    except ReportError as e:
        _fail(str(e))
    kid = key_id(load_public_key(pub_path))
    _emit(
        fmt,
        {"private_key": str(key_path), "public_key": str(pub_path), "key_id": kid},
        [
            f"private key: {key_path} ({'UNENCRYPTED' if phrase is None else 'encrypted'}; keep it secret, "
            "never commit it)",
            f"public key:  {pub_path} (give it to whoever verifies reports)",
            f"key id: {kid}",
        ],
    )


@app.command()
def build(
    result: Path = typer.Argument(..., help="Study result JSON (rehealth study run)."),
    out: Path = typer.Option(..., "--out", help="Where to write the unsigned report document."),
    issuer: str = typer.Option("ReHealth Core coordinator", help="Who issues the report."),
) -> None:
    """Build the unsigned report document (canonical JSON) from a study result, for review."""
    from coordinator.report import ReportError, build_report, report_bytes

    try:
        doc = build_report(_read_result(result), issuer=issuer)
    except ReportError as e:
        _fail(str(e))
    out.write_bytes(report_bytes(doc))
    typer.echo(f"report document: {out}")


@app.command()
def sign(
    document: Path = typer.Argument(..., help="Unsigned report document (rehealth report build)."),
    key: Path = typer.Option(..., "--key", help="Coordinator private key (PEM)."),
    out: Path = typer.Option(..., "--out", help="Folder for report.json, report.html, report.pdf."),
    fmt: Fmt = typer.Option(Fmt.text, "--format", help="Output format."),
) -> None:
    """Sign a reviewed report document and render its HTML and PDF."""
    from pydantic import ValidationError

    from coordinator.report import (
        EvidenceReport,
        ReportError,
        load_private_key,
        sign_report,
        verify_signed_report,
        write_renderings,
    )

    try:
        doc = EvidenceReport.model_validate_json(document.read_bytes())
        private = load_private_key(key)
    except (OSError, ValidationError) as e:
        _fail(f"{document}: not a report document ({str(e).splitlines()[0]})")
    except ReportError as e:
        _fail(str(e))
    from coordinator.report.certify import certified_issuer

    try:
        _, certificate = certified_issuer(key, private, doc.issuer)
    except ReportError as e:
        _fail(str(e))
    signed = sign_report(doc, private, certificate=certificate)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_bytes(signed)
    paths = {
        "json": out / "report.json",
        **write_renderings(
            verify_signed_report(signed, private.public_key()), signed_name="report.json", out_dir=out
        ),
    }
    _emit_paths(fmt, paths)


@app.command()
def render(
    source: Path = typer.Argument(..., help="Study result JSON, or a signed report to re-render."),
    key: Path = typer.Option(None, "--key", help="Private key to sign a study result with."),
    pub: Path = typer.Option(None, "--pub", help="Public key to verify a signed report with."),
    ca: Path = typer.Option(None, "--ca", help="Or the federation's CA certificate to verify it with."),
    out: Path = typer.Option(Path("report"), "--out", help="Output folder."),
    issuer: str = typer.Option(
        None, help="Who issues the report (default: the name the key is certified for, else the coordinator)."
    ),
    registration: Path = typer.Option(
        None, "--registration", exists=True, dir_okay=False, help="The study's registration (study register)."
    ),
    fmt: Fmt = typer.Option(Fmt.text, "--format", help="Output format."),
) -> None:
    """Write report.json (signed), report.html and report.pdf, and print their paths.

    From a study result this needs the coordinator's private key (--key). From a signed report
    it needs the public key (--pub) or the CA certificate (--ca): the report is verified before
    anything is rendered.
    """
    from coordinator.report import (
        ReportError,
        ReportVerificationError,
        verify_file,
        write_renderings,
        write_signed_report,
    )

    try:
        if _is_signed_report(source):
            if ca is not None:
                from coordinator.report.certify import verify_with_ca

                verified = verify_with_ca(_read(source), _read(ca)).verified
            elif pub is not None:
                verified = verify_file(source, pub)
            else:
                _fail("a signed report is verified before rendering: give --pub PUBLIC_KEY or --ca CA_CERT")
            paths = write_renderings(verified, signed_name=source.name, out_dir=out)
        else:
            if key is None:
                _fail("signing a study result needs the coordinator's private key: --key KEY")
            paths = write_signed_report(
                _read_result(source), key_path=key, out_dir=out, issuer=issuer, registration=registration
            )
    except ReportVerificationError as e:
        _fail(f"{source}: {e}", code=1)
    except ReportError as e:
        _fail(str(e))
    _emit_paths(fmt, paths)


@app.command()
def verify(
    report: Path = typer.Argument(..., help="Signed report (report.json)."),
    key: Path = typer.Option(None, "--key", help="Issuer's public key (PEM)."),
    ca: Path = typer.Option(
        None, "--ca", help="The federation's CA certificate: checks the key is certified for the issuer."
    ),
    fmt: Fmt = typer.Option(Fmt.text, "--format", help="Output format."),
) -> None:
    """Check a signed report offline: exit 0 if intact and signed by KEY (or by a key the CA
    certified for the report's issuer), 1 with the reason if not."""
    from coordinator.report import ReportError, ReportVerificationError, verify_file

    if (key is None) == (ca is None):
        _fail("give the issuer's public key (--key) or the federation's CA certificate (--ca), one of them")
    subject = None
    try:
        if ca is not None:
            from coordinator.report.certify import verify_with_ca

            certified = verify_with_ca(_read(report), _read(ca))
            v, subject = certified.verified, certified.subject
        else:
            v = verify_file(report, key)
    except ReportVerificationError as e:
        _emit(
            fmt,
            {"valid": False, "reason": e.reason, "message": str(e), "report": str(report)},
            [f"INVALID: {report}: {e}"],
        )
        raise typer.Exit(1) from None
    except ReportError as e:
        _fail(str(e))
    r = v.report
    by = f"key {v.key_id}" if subject is None else f"key {v.key_id}, certified by {ca} for {subject!r}"
    _emit(
        fmt,
        {
            "valid": True,
            "report": str(report),
            "key_id": v.key_id,
            "certified_issuer": subject,
            "sha256": v.sha256,
            "study": r.study.name,
            "spec_hash": r.study.spec_hash,
            "issued_at": r.issued_at,
            "schema_version": r.schema_version,
            "billable": r.billable,
            "failed_gates": list(r.failed_gates),
        },
        [
            f"OK: {report} is intact and signed by {by}",
            f"study {r.study.name} (spec {r.study.spec_hash[:16]}…), issued {r.issued_at} by "
            f"{r.issuer}; file SHA-256 {v.sha256}",
            "billable: every gate passed"
            if r.billable
            else f"NOT FOR BILLING: failed gates {', '.join(r.failed_gates)}",
        ],
    )


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        _fail(f"cannot read {path}: {e.strerror}")
        raise  # unreachable: _fail exits


def _emit_paths(fmt: Fmt, paths: dict[str, Path]) -> None:
    _emit(fmt, {k: str(v) for k, v in paths.items()}, [f"{k}: {v}" for k, v in paths.items()])


def _read_result(path: Path):
    from pydantic import ValidationError

    from coordinator.files import read_result

    try:
        return read_result(path)
    except OSError as e:
        _fail(f"cannot read {path}: {e.strerror}")
    except ValidationError as e:
        _fail(
            f"{path}: not a study result ({e.error_count()} error(s), first at "
            f"{'.'.join(map(str, e.errors()[0]['loc']))}: {e.errors()[0]['msg']})"
        )


def _is_signed_report(path: Path) -> bool:
    try:
        head = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return False
    return isinstance(head, dict) and "report" in head and "study" not in head


def verify_main() -> None:
    """``rehealth-verify REPORT --key PUB``: the verify command alone, for fast offline checks
    (it imports neither the study nor the rendering stack)."""
    typer.run(verify)
