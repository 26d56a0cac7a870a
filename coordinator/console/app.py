"""The operator console's web app (FastAPI, server-rendered Jinja2 pages, one small script).

Every page and JSON endpoint but ``/login`` and ``/static`` needs a session (:mod:`.auth`);
every state change is a POST carrying the session's CSRF token; GET never changes anything.
Pages are rendered on the server from :mod:`.views`; the run page polls ``/api/runs/<key>``
every 2 s to show rounds as they finish (``static/console.js``, no framework, no CDN).
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, quote

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.middleware.trustedhost import TrustedHostMiddleware

from coordinator.console import views
from coordinator.console.auth import Session, Sessions
from coordinator.console.runs import RunManager
from coordinator.console.users import UserStore
from coordinator.federation.kit_files import CoordinatorKit
from shared import __version__, web
from shared.errors import ReHealthError

log = logging.getLogger("rehealth.console")
HERE = Path(__file__).parent
COOKIE = "rh_session"
PRE_COOKIE = "rh_login"
MAX_FORM = 16 * 1024
NAME = re.compile(r"^[A-Za-z0-9_.-]{1,120}$")
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
# the rendered evidence report: its own inline stylesheet and data: plots, no script at all
REPORT_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; frame-ancestors 'none'"


@dataclass
class ConsoleConfig:
    """Where the console reads and writes, and how it is reached.

    ``federation_dir`` is the provisioning output (``rehealth federation provision --out``):
    ``coordinator/`` (the coordinator's kit), ``sites/`` (site kits, optional), and the
    console's own ``studies/<name>/`` (registered studies), ``reports/`` (further signed reports
    to check) and ``console/`` (users file, run folders)."""

    federation_dir: Path
    tls: bool = False
    hosts: list[str] = field(default_factory=lambda: ["127.0.0.1", "localhost"])
    superlink: str | None = None
    run_timeout_s: float = 900.0
    connect_timeout_s: float = 60.0

    @property
    def kit(self) -> CoordinatorKit:
        return CoordinatorKit(Path(self.federation_dir) / "coordinator")

    @property
    def users_file(self) -> Path:
        return Path(self.federation_dir) / "console" / "users.json"

    @property
    def runs_dir(self) -> Path:
        return Path(self.federation_dir) / "console" / "runs"

    @property
    def studies_dir(self) -> Path:
        return Path(self.federation_dir) / "studies"

    @property
    def reports_dir(self) -> Path:
        return Path(self.federation_dir) / "reports"


class NeedLogin(Exception):
    pass


class Refused(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def create_app(cfg: ConsoleConfig, *, sessions: Sessions | None = None) -> FastAPI:
    from coordinator.federation.control_auth import OperatorCredential
    from coordinator.federation.provision import load_signing_key

    kit = cfg.kit
    kit.manifest()  # a coordinator kit, or SpecError now rather than on the first page
    # the console acts for the operator: its Control API calls carry operator tokens signed
    # with the kit's study-signing key, which also signs its studies and reports (so it must
    # open now, with the passphrase in the environment, not at the first study)
    credential = OperatorCredential(load_signing_key(kit.signing_key))
    users = UserStore(cfg.users_file)
    sessions = sessions or Sessions()
    manager = RunManager(
        kit,
        cfg.studies_dir,
        cfg.runs_dir,
        address=cfg.superlink,
        timeout_s=cfg.run_timeout_s,
        connect_timeout_s=cfg.connect_timeout_s,
        credential=credential,
    )
    env = web.environment(HERE / "templates")  # the shared layout and macros behind ours
    env.filters["when"] = views.short_time
    env.filters["age"] = views.age
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
    app.state.manager = manager
    app.state.sessions = sessions
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=cfg.hosts)
    app.mount("/static/shared", StaticFiles(directory=web.STATIC), name="shared-static")
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")

    @app.middleware("http")
    async def headers(request: Request, call_next):
        response = await call_next(request)
        response.headers.setdefault("Content-Security-Policy", CSP)
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers["X-Frame-Options"] = "DENY"
        if not request.url.path.startswith("/static/"):
            response.headers["Cache-Control"] = "no-store"
        return response

    @app.exception_handler(NeedLogin)
    async def need_login(request: Request, exc: NeedLogin):
        if request.url.path.startswith("/api/") or request.method != "GET":
            return JSONResponse({"error": "not logged in"}, status_code=401)
        return RedirectResponse(f"/login?next={quote(request.url.path)}", status_code=303)

    @app.exception_handler(Refused)
    async def refused(request: Request, exc: Refused):
        if request.url.path.startswith("/api/"):
            return JSONResponse({"error": exc.message}, status_code=exc.status)
        return _render(request, "error.html.j2", None, {"message": exc.message}, status=exc.status)

    def _cookie(response: Response, name: str, value: str, *, path: str = "/", max_age: int | None = None):
        response.set_cookie(
            name,
            value,
            path=path,
            max_age=max_age,
            httponly=True,
            samesite="strict",
            secure=cfg.tls,
        )

    def _session(request: Request) -> Session:
        s = sessions.lookup(request.cookies.get(COOKIE))
        if s is None:
            raise NeedLogin()
        return s

    async def _form(request: Request) -> dict[str, str]:
        body = await request.body()
        if len(body) > MAX_FORM:
            raise Refused(413, "form too large")
        try:
            parsed = parse_qs(body.decode("utf-8"), keep_blank_values=True, strict_parsing=False)
        except UnicodeDecodeError:
            raise Refused(400, "form is not UTF-8") from None
        return {k: v[0] for k, v in parsed.items()}

    async def _post(request: Request) -> tuple[Session, dict[str, str]]:
        """The session and form of a state-changing request, after the CSRF check."""
        s = _session(request)
        form = await _form(request)
        if not sessions.csrf_ok(s, form.get("csrf")):
            raise Refused(
                403, "The form's security token is missing or wrong: reload the page and try again."
            )
        return s, form

    def _render(request: Request, template: str, s: Session | None, ctx: dict, status: int = 200):
        flashes = s.flashes[:] if s else []
        if s:
            s.flashes.clear()
        path = request.url.path
        html = env.get_template(template).render(
            request=request,
            css_href="/static/shared/base.css",
            home_href="/",
            nav_items=NAV,
            current=next((href for href, _ in reversed(NAV) if _in_section(path, href)), ""),
            user=s.user if s else None,
            csrf=s.csrf if s else None,
            path=request.url.path,
            version=__version__,
            flashes=flashes,
            **ctx,
        )
        return HTMLResponse(html, status_code=status)

    # -- login -------------------------------------------------------------------------------

    @app.get("/login")
    async def login_page(request: Request, next: str = "/"):
        import secrets

        pre = request.cookies.get(PRE_COOKIE) or secrets.token_urlsafe(32)
        response = _render(
            request,
            "login.html.j2",
            None,
            {
                "login_csrf": sessions.login_token(pre),
                "next": _safe_next(next),
                "error": None,
                "username": None,
            },
        )
        _cookie(response, PRE_COOKIE, pre, path="/login", max_age=3600)
        return response

    @app.post("/login")
    async def login(request: Request):
        form = await _form(request)
        pre = request.cookies.get(PRE_COOKIE)
        nxt = _safe_next(form.get("next", "/"))
        if not sessions.login_token_ok(pre, form.get("csrf")):
            raise Refused(403, "The sign-in form expired or did not come from this console: reload it.")
        user = form.get("username", "").strip()
        address = request.client.host if request.client else "?"
        wait = sessions.login_allowed(user, address)

        def again(message: str, status: int):
            return _render(
                request,
                "login.html.j2",
                None,
                {
                    "login_csrf": sessions.login_token(pre or ""),
                    "next": nxt,
                    "error": message,
                    "username": user,
                },
                status=status,
            )

        if wait:
            log.warning("console login refused for %r from %s: locked for %.0f s", user, address, wait)
            return again(f"Too many failed sign-ins. Try again in {max(1, round(wait / 60))} minutes.", 429)
        ok = await run_in_threadpool(users.check, user, form.get("password", ""))
        if not ok:
            sessions.failed(user)
            log.warning("console login failed for %r from %s", user, address)
            return again("Wrong user name or password.", 401)
        sessions.succeeded(user)
        s = sessions.create(user)
        log.info("console login: %s from %s", user, address)
        response = RedirectResponse(nxt, status_code=303)
        _cookie(response, COOKIE, sessions.cookie_value(s))
        response.delete_cookie(PRE_COOKIE, path="/login")
        return response

    @app.post("/logout")
    async def logout(request: Request):
        s, _ = await _post(request)
        sessions.end(s)
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(COOKIE, path="/")
        return response

    # -- pages -------------------------------------------------------------------------------

    @app.get("/")
    async def sites_page(request: Request):
        s = _session(request)
        data = await run_in_threadpool(views.sites, manager)
        return _render(request, "sites.html.j2", s, {"data": data})

    @app.get("/studies")
    async def studies_page(request: Request):
        s = _session(request)
        data = await run_in_threadpool(_studies, manager)
        return _render(request, "studies.html.j2", s, data)

    @app.get("/runs/{key}")
    async def run_page(request: Request, key: str):
        s = _session(request)
        data = await run_in_threadpool(_run, manager, key)
        return _render(request, "run.html.j2", s, {"run": data})

    @app.get("/reports")
    async def reports_page(request: Request):
        s = _session(request)
        data = await run_in_threadpool(views.reports, manager, cfg.reports_dir)
        return _render(request, "reports.html.j2", s, {"reports": data})

    @app.get("/reports/{source}/{name}")
    async def report_page(request: Request, source: str, name: str):
        s = _session(request)
        entry = await run_in_threadpool(_report, manager, cfg, source, name)
        return _render(request, "report.html.j2", s, {"r": entry})

    @app.get("/runs/{key}/files/{name}")
    async def run_file(request: Request, key: str, name: str):
        _session(request)
        if name not in ("report.json", "report.html", "report.pdf", "result.json"):
            raise Refused(404, "no such file")
        path = _run_folder(manager, key).file(name)
        if path is None:
            raise Refused(404, f"run {key} has no {name}")
        response = FileResponse(path, filename=name if name != "report.html" else None)
        if name == "report.html":
            response.headers["Content-Security-Policy"] = REPORT_CSP
        return response

    # -- JSON --------------------------------------------------------------------------------

    @app.get("/api/sites")
    async def api_sites(request: Request):
        _session(request)
        return await run_in_threadpool(views.sites, manager)

    @app.get("/api/runs")
    async def api_runs(request: Request):
        _session(request)
        data = await run_in_threadpool(_studies, manager)
        return {"runs": data["runs"], "superlink_runs": data["other_runs"], "error": data["superlink_error"]}

    @app.get("/api/runs/{key}")
    async def api_run(request: Request, key: str):
        _session(request)
        return await run_in_threadpool(_run, manager, key)

    @app.get("/api/reports")
    async def api_reports(request: Request):
        _session(request)
        data = await run_in_threadpool(views.reports, manager, cfg.reports_dir)
        return {"reports": [{k: v for k, v in r.items() if k != "path"} for r in data]}

    # -- actions -----------------------------------------------------------------------------

    @app.post("/studies/{name}/start")
    async def start(request: Request, name: str):
        s, _ = await _post(request)
        try:
            run = await run_in_threadpool(manager.start, name, user=s.user)
        except ReHealthError as e:
            s.flashes.append(("error", str(e)))
            return RedirectResponse("/studies", status_code=303)
        s.flashes.append(("info", f"Study {name} started as {run.key}."))
        return RedirectResponse(f"/runs/{run.key}", status_code=303)

    @app.post("/runs/{key}/rerun")
    async def rerun(request: Request, key: str):
        s, _ = await _post(request)
        study = _run_folder(manager, key).meta().get("study", "")
        try:
            run = await run_in_threadpool(manager.start, study, user=s.user, rerun_of=key)
        except ReHealthError as e:
            s.flashes.append(("error", str(e)))
            return RedirectResponse(f"/runs/{key}", status_code=303)
        s.flashes.append(("info", f"Study {study} started again as {run.key}."))
        return RedirectResponse(f"/runs/{run.key}", status_code=303)

    @app.post("/runs/{key}/stop")
    async def stop(request: Request, key: str):
        s, _ = await _post(request)
        _run_folder(manager, key)
        try:
            stopped = await run_in_threadpool(lambda: manager.stop(key, user=s.user))
        except ReHealthError as e:
            s.flashes.append(("error", str(e)))
        else:
            s.flashes.append(
                (
                    "info",
                    "Stop requested: the SuperLink ends the run."
                    if stopped
                    else "The run was no longer running.",
                )
            )
        return RedirectResponse(f"/runs/{key}", status_code=303)

    return app


NAV = (("/", "Sites"), ("/studies", "Studies"), ("/reports", "Reports"))


def _in_section(path: str, href: str) -> bool:
    """Which nav item a page belongs to (a run's page is under Studies)."""
    if href == "/":
        return path == "/"
    return path.startswith(href) or (href == "/studies" and path.startswith("/runs/"))


def _safe_next(value: str) -> str:
    """A local path to go to after login (never another site: ``//evil`` or ``https://…``)."""
    if not value.startswith("/") or value.startswith("//") or "\\" in value:
        return "/"
    return value


def _run_folder(manager: RunManager, key: str):
    try:
        return manager.run(key)
    except ReHealthError:
        raise Refused(404, f"no run {key}") from None


def _run(manager: RunManager, key: str) -> dict:
    run = _run_folder(manager, key)
    status = None
    run_id = run.meta().get("run_id")
    if run_id is not None:
        try:
            with manager.control() as c:
                status = c.status(int(run_id))
        except ReHealthError:
            status = None
    return views.run_progress(manager, run, superlink_status=status)


def _studies(manager: RunManager) -> dict:
    statuses, superlink_list, error = views.superlink_runs(manager)
    studies = []
    for st in manager.studies():
        try:
            spec, record = st.check(manager.kit)
            studies.append(
                {
                    "name": st.name,
                    "title": spec.study.name,
                    "sites": [x.name for x in spec.sites],
                    "epsilon": spec.privacy.epsilon if spec.privacy.enabled else None,
                    "registered_at": record.registered_at,
                    "spec_hash": record.spec_hash,
                    "ok": True,
                    "problem": None,
                }
            )
        except ReHealthError as e:
            studies.append({"name": st.name, "ok": False, "problem": str(e)})
    runs = [
        views.run_progress(manager, r, superlink_status=statuses.get(r.meta().get("run_id") or -1))
        for r in manager.runs()
    ]
    ours = {r["run_id"] for r in runs}
    others = [{**r, "run-id": str(r["run-id"])} for r in superlink_list if str(r["run-id"]) not in ours]
    return {"studies": studies, "runs": runs, "other_runs": others, "superlink_error": error}


def _report(manager: RunManager, cfg: ConsoleConfig, source: str, name: str) -> dict:
    if source not in ("runs", "files") or not NAME.match(name):
        raise Refused(404, "no such report")
    for r in views.reports(manager, cfg.reports_dir):
        if r["source"] == source and r["name"] == name:
            out = {k: v for k, v in r.items() if k != "path"}
            try:
                doc = json.loads(Path(r["path"]).read_text()).get("report", {})
            except (OSError, ValueError, AttributeError):
                doc = {}
            out["summary"] = _report_summary(doc) if r["verification"]["state"] == "verified" else None
            return out
    raise Refused(404, "no such report")


def _report_summary(doc: dict) -> dict:
    """A few figures of a verified report for the console's page (the full report is its
    own rendered page)."""
    return {
        "outcomes": [
            {
                "name": e.get("name"),
                "att": e.get("att"),
                "ci": e.get("ci"),
                "n_treated": e.get("n_treated"),
            }
            for e in (o.get("estimate", {}) for o in doc.get("outcomes", []))
        ],
        "billable": doc.get("billable"),
        "failed_gates": doc.get("failed_gates", []),
        "sites": [s.get("name") for s in doc.get("sites", [])],
    }
