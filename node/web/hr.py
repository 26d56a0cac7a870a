"""The HR view served by the node (``/hr/``): the workforce's risk profile, the intervention
programme's uptake and the latest evidence report's HR and ESG summary, for the ``hr`` role only.

**Nothing new leaves the node.** Every figure on these pages is a release the hr-role API
makes anyway, through the same code: group views are :class:`node.api.groups.GroupViews` (the
persisted DP views of ``GET /v1/groups``), uptake is :class:`node.plans.uptake.ProgrammeViews`
(``GET /v1/programme``), the report is the one imported with ``rehealth node report import``.
A GET only *shows* a release made before (:meth:`GroupViews.peek`, :meth:`ProgrammeViews.latest`);
making one — which charges the node's budget the first time — is a POST button that says the
cost. No page has a person, pseudonym, plan id or per-person score on it.

**Who gets in.** An HR analyst signs in with an API key of role ``hr`` (``rehealth node apikey
create --role hr``); any other role, an unknown, revoked or expired key is refused. The session
(:mod:`node.web.session`) is a random server-side identifier in an HttpOnly, SameSite=Strict
cookie (Secure over TLS); every request re-checks the key, so revoking it ends the session.
State changes are POST only, with the session's CSRF token and this server's Origin. The pages
carry no script at all; the Content-Security-Policy allows none.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from pathlib import Path
from urllib.parse import parse_qs

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response

from node.api.auth import KeyRing
from node.api.groups import GroupViews
from node.api.middleware import STATE_KEY
from node.plans.uptake import STAGE_LABELS, STAGES, ProgrammeViews
from node.report_inbox import latest_report
from node.web.charts import hbars
from node.web.session import COOKIE, Session, Sessions
from shared import web
from shared.errors import DataError, ReHealthError, SpecError
from shared.risk.tiers import TIERS

__all__ = ["PREFIX", "install_hr_view", "same_origin"]

PREFIX = "/hr"
TEMPLATES = Path(__file__).resolve().parent / "templates"
VIEWS = (
    ("department", "Department"),
    ("age_band", "Age band"),
    ("job_type", "Job type"),
    ("department,age_band", "Department × age band"),
    ("department,job_type", "Department × job type"),
    ("age_band,job_type", "Age band × job type"),
)
DIM_LABELS = {"department": "Department", "age_band": "Age band", "job_type": "Job type"}
NAV = (
    (f"{PREFIX}/", "Risk profile"),
    (f"{PREFIX}/programme", "Programme uptake"),
    (f"{PREFIX}/evidence", "Evidence report"),
)
_CSP = (
    "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)
MAX_FORM = 4096


def same_origin(request: Request) -> bool:
    """The request came from a page of this server: its ``Origin`` (or, without one, its
    ``Referer``) is this server's scheme and host. Chromium and Firefox send Origin with every
    POST; a page on another port of the same host is the same *site* (SameSite lets its cookie
    through) but not the same *origin*, and is refused here."""
    expected = f"{request.url.scheme}://{request.headers.get('host', '')}"
    origin = request.headers.get("origin")
    if origin is not None:
        return hmac.compare_digest(origin, expected)
    referer = request.headers.get("referer")
    return referer is not None and (referer == expected or referer.startswith(expected + "/"))


def _secure(request: Request) -> bool:
    return request.url.scheme == "https"


def install_hr_view(
    app: FastAPI,
    *,
    ring: KeyRing,
    views: GroupViews,
    programme: ProgrammeViews | None,
    reports_dir: Path | None,
    sessions: Sessions | None = None,
) -> Sessions:
    """Add the HR view's routes to ``app``; returns its session table."""
    sessions = sessions if sessions is not None else Sessions()
    env = web.environment(TEMPLATES)
    k_policy = views.policy.k

    def page(request: Request, name: str, status: int = 200, **ctx) -> HTMLResponse:
        html = env.get_template(name).render(
            css_href=f"{PREFIX}/static/base.css",
            home_href=f"{PREFIX}/",
            nav_items=NAV,
            current=ctx.pop("current", ""),
            k=k_policy,
            **ctx,
        )
        return HTMLResponse(html, status_code=status, headers=_headers())

    def current(request: Request) -> tuple[str, Session] | None:
        """The caller's live session whose key is still an active ``hr`` key, or None."""
        sid = request.cookies.get(COOKIE)
        s = sessions.get(sid)
        if s is None or sid is None:
            return None
        key = next((k for k in ring.keys if k.key_id == s.key_id), None)
        if key is None or key.refusal() is not None or key.role != "hr":
            sessions.close(sid)
            return None
        setattr(request.state, STATE_KEY, key)  # the audit line names the key id
        return sid, s

    def to_login(request: Request, why: str | None = None) -> Response:
        r = RedirectResponse(f"{PREFIX}/login" + (f"?why={why}" if why else ""), status_code=303)
        r.delete_cookie(COOKIE, path=PREFIX)
        return r

    async def form(request: Request) -> dict[str, str]:
        body = await request.body()
        if len(body) > MAX_FORM:
            return {}
        parsed = parse_qs(body.decode("utf-8", errors="replace"), keep_blank_values=True)
        return {k: v[0] for k, v in parsed.items()}

    def refused(request: Request, why: str) -> HTMLResponse:
        return page(request, "refused.html", status=403, title="Refused", why=why, session=None)

    async def checked_post(request: Request) -> tuple[Session, dict[str, str]] | Response:
        """The session and form of a state-changing POST, or the response that turns it away:
        no live session (to the login page), or not sent from this server's own page (the
        same-origin and CSRF-token checks)."""
        who = current(request)
        if who is None:
            return to_login(request, "expired")
        data = await form(request)
        if not same_origin(request) or not hmac.compare_digest(data.get("csrf", ""), who[1].csrf):
            return refused(request, "This request did not come from this server's own page.")
        return who[1], data

    def release(request: Request, session: Session, get: Callable[[], object], then: str) -> Response:
        """Run ``get``, the API's own release (charged once, stored, served again for free), and
        go back to ``then``; a release the node refuses is shown as such (409)."""
        try:
            get()
        except ReHealthError as e:
            why = str(e)
            return page(request, "refused.html", status=409, title="Not released", why=why, session=session)
        return RedirectResponse(then, status_code=303)

    # ------------------------------------------------------------------ static and login
    @app.get(f"{PREFIX}/static/base.css", include_in_schema=False)
    def css() -> FileResponse:
        return FileResponse(
            web.STATIC / "base.css", media_type="text/css", headers={"Cache-Control": "no-cache"}
        )

    @app.get(f"{PREFIX}/login", include_in_schema=False)
    def login_form(request: Request, why: str | None = None) -> Response:
        if current(request) is not None:
            return RedirectResponse(f"{PREFIX}/", status_code=303)
        messages = {
            "out": "You are signed out.",
            "expired": "Your session ended (idle for 30 minutes, 8 hours old, or the key was "
            "revoked). Sign in again.",
        }
        return page(
            request, "login.html", title="Sign in", session=None, message=messages.get(why or ""), error=None
        )

    @app.post(f"{PREFIX}/login", include_in_schema=False)
    async def login(request: Request) -> Response:
        if not same_origin(request):
            return refused(request, "This sign-in did not come from this server's own page.")
        presented = (await form(request)).get("api_key", "").strip()
        key = ring.lookup(presented)
        error = None
        if key is None:
            error = "That key is not known to this node."
        elif key.refusal() is not None:
            error = f"That key is {key.refusal()}. Ask the node's operator for a new one."
        elif key.role != "hr":
            error = "That key is not an HR key. This view is for the hr role only."
        if error is not None:
            if key is not None:
                setattr(request.state, STATE_KEY, key)
            return page(
                request, "login.html", status=401, title="Sign in", session=None, message=None, error=error
            )
        assert key is not None
        setattr(request.state, STATE_KEY, key)
        sid, _ = sessions.open(key.key_id)
        r = RedirectResponse(f"{PREFIX}/", status_code=303)
        r.set_cookie(
            COOKIE,
            sid,
            httponly=True,
            samesite="strict",
            secure=_secure(request),
            path=PREFIX,
            max_age=int(sessions.absolute_s),
        )
        return r

    @app.post(f"{PREFIX}/logout", include_in_schema=False)
    async def logout(request: Request) -> Response:
        who = current(request)
        if who is None:
            return to_login(request)
        sid, s = who
        if not same_origin(request) or not hmac.compare_digest((await form(request)).get("csrf", ""), s.csrf):
            return refused(request, "This sign-out did not come from this server's own page.")
        sessions.close(sid)
        return to_login(request, "out")

    # ------------------------------------------------------------------ risk profile
    @app.get(f"{PREFIX}/", include_in_schema=False)
    def profile(request: Request, by: str = "department") -> Response:
        who = current(request)
        if who is None:
            return to_login(request, "expired" if request.cookies.get(COOKIE) else None)
        if by not in dict(VIEWS):
            by = "department"
        try:
            view = views.peek(by)
            problem = None
        except (DataError, SpecError) as e:
            view, problem = None, str(e)
        return page(
            request,
            "profile.html",
            title="Workforce risk profile",
            current=f"{PREFIX}/",
            session=who[1],
            by=by,
            views=VIEWS,
            view=view,
            problem=problem,
            epsilon=views.epsilon,
            dims=by.split(","),
            dims_label=" and ".join(DIM_LABELS[d].lower() for d in by.split(",")),
            dim_labels=DIM_LABELS,
            tiers=TIERS,
            tier_labels=_tier_labels(views.cutoffs),
            chart=_risk_chart(view, by) if view else None,
            matrix=_matrix(view) if view and len(by.split(",")) == 2 else None,
        )

    @app.post(f"{PREFIX}/release", include_in_schema=False)
    async def release_profile(request: Request) -> Response:
        posted = await checked_post(request)
        if isinstance(posted, Response):
            return posted
        session, data = posted
        by = data.get("by", "")
        if by not in dict(VIEWS):
            return refused(request, "Unknown view.")
        return release(request, session, lambda: views.get(by), f"{PREFIX}/?by={by}")

    # ------------------------------------------------------------------ programme uptake
    @app.get(f"{PREFIX}/programme", include_in_schema=False)
    def uptake(request: Request) -> Response:
        who = current(request)
        if who is None:
            return to_login(request, "expired" if request.cookies.get(COOKIE) else None)
        view = programme.latest() if programme is not None else None
        return page(
            request,
            "programme.html",
            title="Programme uptake",
            current=f"{PREFIX}/programme",
            session=who[1],
            available=programme is not None,
            view=view,
            epsilon=programme.epsilon if programme is not None else None,
            stages=STAGES,
            stage_labels=STAGE_LABELS,
            table=_uptake_table(view) if view else None,
            chart=_uptake_chart(view) if view else None,
            reached=_reached(view) if view else None,
        )

    @app.post(f"{PREFIX}/programme/release", include_in_schema=False)
    async def release_uptake(request: Request) -> Response:
        posted = await checked_post(request)
        if isinstance(posted, Response):
            return posted
        if programme is None:
            return refused(request, "This node has no intervention programme store.")
        return release(request, posted[0], programme.get, f"{PREFIX}/programme")

    # ------------------------------------------------------------------ evidence report
    @app.get(f"{PREFIX}/evidence", include_in_schema=False)
    def evidence(request: Request) -> Response:
        who = current(request)
        if who is None:
            return to_login(request, "expired" if request.cookies.get(COOKIE) else None)
        try:
            stored, problem = latest_report(reports_dir), None
        except (OSError, ValueError, KeyError) as e:
            stored, problem = None, f"the kept report cannot be read: {e}"
        report = stored.report if stored else None
        figures = []
        if report:
            v = report.get("value", {})
            names = ["absence_days_averted", "events_averted"] + (
                ["claims_saved"] if v.get("saving_claimed") else []
            )
            figures = [v[n] for n in names if v.get(n)]
        return page(
            request,
            "evidence.html",
            title="Evidence report",
            current=f"{PREFIX}/evidence",
            session=who[1],
            stored=stored,
            report=report,
            problem=problem,
            figures=figures,
            paragraphs=[p for p in (report["summaries"]["hr"].split("\n") if report else []) if p.strip()],
        )

    return sessions


def _tier_labels(cutoffs) -> dict[str, str]:
    """Tier names with the cut-offs in use, e.g. ``Medium (5–10%)``."""
    c = [f"{100 * x:g}" for x in cutoffs]
    return {
        "low": f"Low (<{c[0]}%)",
        "medium": f"Medium ({c[0]}–{c[1]}%)",
        "high": f"High ({c[1]}–{c[2]}%)",
        "very_high": f"Very high (≥{c[2]}%)",
    }


def _headers() -> dict[str, str]:
    return {
        "Content-Security-Policy": _CSP,
        "Cache-Control": "no-store",
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "same-origin",
        "X-Frame-Options": "DENY",
    }


def _risk_chart(view: dict, by: str):
    rows = [
        (g["group"], g["mean_risk"] * 100 if g["mean_risk"] is not None else None, f"{g['mean_risk']:.1%}")
        if g["mean_risk"] is not None
        else (g["group"], None, "")
        for g in view["groups"]
    ]
    label = " × ".join(DIM_LABELS[d].lower() for d in by.split(","))
    return hbars(
        rows,
        title=f"Mean predicted 10-year cardiovascular risk by {label}",
        desc="One bar per group: the group's mean predicted risk in percent; suppressed groups are "
        "marked 'suppressed' instead of a bar.",
        cid="risk-chart",
    )


def _matrix(view: dict) -> dict:
    """A crossed view as rows × columns of people (and mean risk), for the cross table."""
    d1, d2 = view["dimensions"]
    rows = list(dict.fromkeys(g["values"][d1] for g in view["groups"]))
    cols = list(dict.fromkeys(g["values"][d2] for g in view["groups"]))
    cell = {(g["values"][d1], g["values"][d2]): g for g in view["groups"]}
    return {"d1": d1, "d2": d2, "rows": rows, "cols": cols, "cell": cell}


def _uptake_table(view: dict) -> list[tuple[str, list[dict], int | None]]:
    by_dept: dict[str, list[dict]] = {d: [] for d in view["departments"]}
    for c in view["cells"]:
        by_dept[c["department"]].append(c)
    return [(d, by_dept[d], view["department_totals"][d]) for d in view["departments"]]


def _reached(view: dict) -> dict[str, int | None]:
    """Delivered (any stage after delivery), opened (opened or completed), completed: sums of
    released stage totals; withheld when any part is."""
    t = view["stage_totals"]

    def total(stages: tuple[str, ...]) -> int | None:
        parts = [t[s] for s in stages]
        return None if any(p is None for p in parts) else sum(parts)

    return {
        "delivered": total(("delivered", "opened", "completed")),
        "opened": total(("opened", "completed")),
        "completed": t["completed"],
    }


def _uptake_chart(view: dict):
    t = view["stage_totals"]
    rows = [
        (STAGE_LABELS[s], float(t[s]) if t[s] is not None else None, f"{t[s]:,}" if t[s] is not None else "")
        for s in STAGES
    ]
    return hbars(
        rows,
        title="People with a plan, by stage",
        desc="One bar per stage: the number of people (noised) whose newest plan is at that stage; "
        "stages with too few people are marked 'suppressed'.",
        cid="uptake-chart",
    )
