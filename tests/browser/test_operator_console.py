"""The operator console in headless Chromium against a real federation (issue #23 items 1, 5).

A provisioned federation on loopback, as insurer IT and the operator would run it: the kits
from ``rehealth federation provision``, ``rehealth coordinator run`` (SuperLink with TLS and
SuperNode authentication), ``rehealth node run`` for two sites, a DP study registered with the
kit's key in ``studies/``, and ``rehealth coordinator console`` over the same folder. The
browser signs in, sees both sites online, starts the registered study, watches its rounds
arrive, opens its signed report and sees it verified against the federation's CA; then runs it
again, which the sites' ledgers refuse (the first run spent most of their budget), and sees
the failure named by site and round. Screenshots of every page go to test-artifacts/.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from playwright.sync_api import expect

from coordinator.console.users import UserStore
from coordinator.synth import write_federation
from shared.synth import generate_federation
from tests.integration.test_provisioned_federation import _env, _free_port, _stop, _wait_for

pytestmark = pytest.mark.integration
USER, PASSWORD = "operator", "a long console password"
STUDY = "prevention-2026"
SMALL = "prevention-2026-small"


def _listening(port: int, proc: subprocess.Popen, log: Path, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text(errors="replace")[-3000:]
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.2)
    raise AssertionError(f"the console did not listen on {port}: {log.read_text(errors='replace')[-3000:]}")


@pytest.fixture(scope="module")
def federation(tmp_path_factory):
    """Kits, SuperLink, two nodes, a registered study and the console; all stopped after."""
    base = tmp_path_factory.mktemp("console-e2e")
    synth = generate_federation(seed=5, sites=2, scale=0.05)
    spec_path = write_federation(synth, base / "synth", epsilon=9.0)  # the kits' budget is ε = 10
    names = [s.name for s in synth.sites]
    address = f"127.0.0.1:{_free_port()}"
    sites = "".join(
        f'[[sites]]\nname = "{n}"\nruntime_address = "127.0.0.1:{_free_port()}"\n\n' for n in names
    )
    (base / "federation.toml").write_text(f'name = "e2e"\ncoordinator = "{address}"\n\n{sites}')
    fed = base / "kits"
    env = _env()
    cli = [sys.executable, "-c", "from coordinator.cli.root import main; main()"]
    subprocess.run(
        [*cli, "federation", "provision", str(base / "federation.toml"), "--out", str(fed)],
        env=env,
        check=True,
        capture_output=True,
    )
    for name in names:
        toml = fed / "sites" / name / "node.toml"
        data = (base / "synth" / name / "cohort.csv").resolve()
        toml.write_text(toml.read_text().replace('# data_path = "data/cohort.csv"', f'data_path = "{data}"'))
    # the registered studies: spec + registration signed with the kit's key, in studies/<name>/;
    # the second asks little ε (the first leaves 1 of each site's 10): it is the one stopped, so
    # it runs long enough to be stopped — 20 Newton rounds (2–3 s each now that ClientApps are
    # forked), and it goes on past describe where the fit rule would end a study this small
    text = spec_path.read_text()
    assert "epsilon = 9.0" in text
    small = text.replace("epsilon = 9.0", 'epsilon = 0.5\nps_rounds = 20\nunresolved_fit = "warn"')
    for name, spec_text in ((STUDY, text), (SMALL, small)):
        study = fed / "studies" / name
        study.mkdir(parents=True)
        (study / "study.toml").write_text(spec_text)
        shutil.copy(base / "synth" / "truth.json", study / "truth.json")
        subprocess.run(
            [
                *cli,
                "study",
                "register",
                "--spec",
                str(study / "study.toml"),
                "--key",
                str(fed / "coordinator" / "signing" / "coordinator.key"),
                "--out",
                str(study / "registration.json"),
            ],
            env=env,
            check=True,
            capture_output=True,
        )
    UserStore(fed / "console" / "users.json").add(USER, PASSWORD)

    logs = base / "logs"
    logs.mkdir()
    procs: list[subprocess.Popen] = []

    def start(args: list[str], log: Path, cwd: Path) -> subprocess.Popen:
        with open(log, "ab") as out:
            p = subprocess.Popen([*cli, *args], cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
        procs.append(p)
        return p

    try:
        coord = start(
            ["coordinator", "run", "--kit", str(fed / "coordinator")], logs / "coordinator.log", base
        )
        _wait_for(logs / "coordinator.log", "registered sites:", coord)
        nodes = {
            n: start(["node", "run", "-c", "node.toml"], logs / f"{n}.log", fed / "sites" / n) for n in names
        }
        port = _free_port()
        console = start(
            ["coordinator", "console", "--federation-dir", str(fed), "--listen", f"127.0.0.1:{port}"],
            logs / "console.log",
            base,
        )
        _listening(port, console, logs / "console.log")
        for n in names:
            _wait_for(logs / f"{n}.log", "node running", nodes[n])
        yield {"url": f"http://127.0.0.1:{port}", "names": names, "dir": fed, "logs": logs}
    finally:
        for p in reversed(procs):
            _stop(p)


def _sign_in(page, url: str) -> None:
    page.goto(f"{url}/")
    assert page.url.startswith(f"{url}/login")
    page.get_by_label("User name").fill(USER)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"{url}/")


def _online(page, url: str, names: list[str], timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        rows = {n: page.get_by_role("row", name=n).inner_text() for n in names}
        if all("online" in r for r in rows.values()):
            return
        time.sleep(1)
        page.reload()
    raise AssertionError(f"sites not online: {rows}")


def test_operator_signs_in_runs_a_registered_study_and_sees_its_report_verified(federation, page, shot):
    url, names = federation["url"], federation["names"]
    started = time.monotonic()
    page.goto(f"{url}/login")
    shot(page, "1-login")
    _sign_in(page, url)
    _online(page, url, names)
    shot(page, "2-sites")

    page.get_by_role("link", name="Studies").click()
    page.wait_for_url(f"{url}/studies")
    shot(page, "3-studies")
    page.get_by_role("button", name=f"Start {STUDY}", exact=True).click()
    page.wait_for_url(f"{url}/runs/**")
    run_url = page.url
    # live progress: rounds appear in the table while the run goes on (the page polls its JSON)
    page.locator("#rounds tr th").nth(1).wait_for(timeout=600_000)  # (the CSP forbids eval)
    shot(page, "4-run-in-progress")
    page.get_by_role("link", name="Open the signed report").wait_for(timeout=900_000)
    assert page.locator("#run-state").inner_text() == "completed"
    assert "None." in page.locator("#failures").inner_text()
    rounds = page.locator("#rounds tr").count()
    assert rounds >= 3
    privacy = page.locator("table").last.inner_text()
    assert "ε this study cost" in privacy
    for n in names:  # every site answered the last round, and its ledger's spend is shown
        assert n in page.locator("#rounds tr").last.inner_text()
        assert n in privacy
    shot(page, "5-run-completed")
    study_s = time.monotonic() - started

    page.get_by_role("link", name="Open the signed report").click()
    page.wait_for_url(f"{url}/reports/runs/**")
    verdict = page.locator("#verification").inner_text()
    assert verdict.startswith("Verified"), verdict
    shot(page, "6-report-verified")
    page.get_by_role("link", name="Read the full report (HTML)").click()
    page.wait_for_load_state()
    assert "Signature" in page.content() or "signature" in page.content()
    shot(page, "7-report-html")
    page.goto(f"{url}/reports")
    assert "verified" in page.get_by_role("row", name=STUDY).first.inner_text()
    shot(page, "8-reports")

    # again: each site's ledger has spent ε = 9 of its 10 and refuses the second study
    page.goto(run_url)
    page.get_by_role("button", name=f"Run {STUDY} again", exact=True).click()
    page.wait_for_url(f"{url}/runs/**")
    assert page.url != run_url
    page.locator("#failures li.notice").first.wait_for(timeout=600_000)
    expect(page.locator("#run-state")).to_have_text("failed", timeout=600_000)
    failure = page.locator("#failures").inner_text()
    assert "site " in failure and "round " in failure, failure
    assert any(n in failure for n in names), failure
    shot(page, "9-rerun-refused")
    rerun_key = page.url.rsplit("/", 1)[-1]
    page.goto(f"{url}/studies")
    listed = page.get_by_role("row", name=rerun_key).inner_text()
    assert "failed" in listed and "round reserve" in listed, listed
    shot(page, "10-studies-after")
    # stop: a run of the small study, stopped through the Control API once the SuperLink has it
    page.get_by_role("button", name=f"Start {SMALL}").click()
    page.wait_for_url(f"{url}/runs/**")
    page.locator("#rounds tr th").first.wait_for(timeout=600_000)  # its ServerApp is at work
    page.reload()  # the stop button is drawn by the server once the run has a SuperLink run id
    page.get_by_role("button", name="Stop this run").click()
    expect(page.locator("#run-state")).to_have_text("stopped", timeout=600_000)
    assert "finished:stopped" in page.locator("#run-id").inner_text()
    assert "study stopped" in page.locator("#failures").inner_text()
    shot(page, "11-run-stopped")
    page.goto(f"{url}/")
    shot(page, "12-sites-after")
    assert "9" in page.get_by_role("row", name=names[0]).inner_text()  # ε spent, from the ledger
    assert page.console_errors == [], page.console_errors
    print(f"sign-in to verified report {study_s:.1f} s; whole test {time.monotonic() - started:.1f} s")
