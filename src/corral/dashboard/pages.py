"""The dashboard's routes: sign-in, the five pages, and their actions.

Every page and action starts from :meth:`Pages.session`: the signed-in owner's session, whose
``tenant`` is the only tenant passed to any source. No route reads a tenant from its path, query
or form (sign-in excepted: that is where the owner names their business). Every POST checks
the session's CSRF token, sent as the ``csrf`` form field or the ``X-CSRF-Token`` header (which
htmx adds from ``hx-headers`` on ``<body>``), before it reads anything else.

Pages work without JavaScript (plain forms, redirect after POST); with htmx, filters, paging
and actions swap only the part of the page that changed, and errors land in the page's notice
area (``HX-Retarget``).
"""

from __future__ import annotations

import secrets
import shutil
from base64 import b64encode
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal, NoReturn, cast
from urllib.parse import urlencode
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import anyio.to_thread
import jinja2
from fastapi import APIRouter, FastAPI
from starlette.background import BackgroundTask
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, RedirectResponse, Response

from corral.broker.client import BrokerRefused, BrokerUnreachable
from corral.core.clock import Clock
from corral.dashboard.auth import LoginLimiter, OwnerStore, Session, same_token
from corral.dashboard.sources import (
    OUTCOMES,
    ActionUnavailable,
    BundleFormat,
    ConnectionView,
    NotFound,
    Outcome,
    Sources,
    TimelineQuery,
)

if TYPE_CHECKING:
    from corral.dashboard.app import DashboardSettings

__all__ = ["SESSION_COOKIE", "Assets", "Pages", "install"]

SESSION_COOKIE = "corral_session"
LOGIN_COOKIE = "corral_login"
CSRF_HEADER = "X-CSRF-Token"
_FIELD = "cred_"  # prefix of credential form fields, so none can be taken for another field

OUTCOME_LABELS: dict[str, str] = {
    "done": "Done",
    "blocked": "Blocked",
    "waiting": "Pending",
    "failed": "Failed",
    "system": "System",
}
ISOLATION = {
    "vm": ("Virtual machine", "its own kernel in a Firecracker microVM: the strongest"),
    "gvisor": ("gVisor", "a user-space kernel between the agent and the machine"),
    "namespaces": ("Namespaces", "Linux namespaces and seccomp: the lightest"),
}
FIELD_LABELS = {
    "account_sid": "Account SID",
    "auth_token": "Auth token",
    "from_number": "Default sender number",
    "api_key": "Secret API key",
    "client_id": "OAuth client ID",
    "client_secret": "OAuth client secret",
    "refresh_token": "Refresh token",
    "realm_id": "Company (realm) ID",
    "location_id": "Location ID",
}
DONE = {
    "approve": "Approved. The call goes ahead.",
    "deny": "Denied. The call will not run.",
    "connect": "Connected.",
    "rotate": "Credential replaced.",
    "revoke": "Revoked. Agents can no longer use that account.",
    "opt_in": "Upgrade scheduled.",
}


@dataclass(frozen=True)
class Assets:
    versions: Mapping[str, str]
    integrity: Mapping[str, str]


class _Stop(Exception):
    """Answer this response now (sign-in needed, a refused request)."""

    def __init__(self, response: Response) -> None:
        super().__init__("stop")
        self.response = response


@dataclass
class Pages:
    sources: Sources
    owners: OwnerStore
    limiter: LoginLimiter
    settings: DashboardSettings
    env: jinja2.Environment
    assets: Assets
    clock: Clock

    # ------------------------------------------------------------------------- plumbing

    @staticmethod
    def base(request: Request) -> str:
        return str(request.scope.get("root_path", "")).rstrip("/")

    def zone(self, tenant: str) -> str:
        return str(self.settings.timezones.get(tenant, "UTC"))

    def secure(self, request: Request) -> bool:
        mode = self.settings.secure_cookies
        return mode == "always" or (mode == "auto" and request.url.scheme == "https")

    def page(
        self,
        request: Request,
        template: str,
        *,
        status: int = 200,
        session: Session | None = None,
        **context: Any,
    ) -> HTMLResponse:
        base = self.base(request)

        def asset(name: str) -> str:
            return f"{base}/static/{name}?v={self.assets.versions.get(name, '0')}"

        html = self.env.get_template(template).render(
            base=base,
            asset=asset,
            integrity=self.assets.integrity,
            session=session,
            tenant_name=self.settings.tenant_names.get(session.tenant, session.tenant)
            if session
            else "",
            b64=_b64,
            proof=_proof,
            utc=lambda when: _local(when, self.zone(session.tenant if session else "")),
            outcome_labels=OUTCOME_LABELS,
            isolation=ISOLATION,
            field_label=_field_label,
            **{"active": "", "pending": 0, "notice": None, **context},
        )
        return HTMLResponse(html, status_code=status)

    def session(self, request: Request) -> Session:
        session = self.owners.session(request.cookies.get(SESSION_COOKIE))
        if session is None:
            target = f"{self.base(request)}/login"
            if _htmx(request):
                raise _Stop(Response(status_code=200, headers={"HX-Redirect": target}))
            raise _Stop(RedirectResponse(target, status_code=303))
        return session

    async def checked(self, request: Request) -> tuple[Session, FormData]:
        """The session and the form of a POST whose CSRF token is the session's, else 403."""
        session = self.session(request)
        form = await request.form()
        given = request.headers.get(CSRF_HEADER) or _str(form.get("csrf"))
        if not same_token(given, session.csrf):
            self.refuse(request, session, 403, "This page has expired. Reload it and try again.")
        return session, form

    def refuse(self, request: Request, session: Session | None, status: int, text: str) -> NoReturn:
        """Stop with ``text``: into the notice area for htmx, as a page otherwise."""
        if _htmx(request):
            html = self.env.get_template("_notice.html").render(kind="error", text=text)
            headers = {"HX-Retarget": "#notice", "HX-Reswap": "innerHTML"}
            raise _Stop(HTMLResponse(html, status_code=status, headers=headers))
        raise _Stop(self.page(request, "error.html", status=status, session=session, text=text))

    async def pending_count(self, tenant: str) -> int:
        try:
            return len(await self.sources.approvals.pending(tenant))
        except Exception:  # the badge must never take a page down
            return 0

    async def common(self, request: Request, session: Session, active: str) -> dict[str, Any]:
        done = request.query_params.get("done")
        notice = {"kind": "ok", "text": DONE[done]} if done in DONE else None
        return {
            "active": active,
            "pending": await self.pending_count(session.tenant),
            "notice": notice,
        }


def _htmx(request: Request) -> bool:
    return request.headers.get("HX-Request") == "true"


def _str(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _b64(data: bytes) -> str:
    return b64encode(data).decode("ascii")


def _proof(hashes: Sequence[bytes] | None) -> str:
    return ",".join(_b64(h) for h in hashes or ())


def _local(when: datetime | None, zone: str) -> str:
    """An instant in the tenant's time zone: ``Mar 4, 2026, 8:30 AM PST``."""
    if when is None:
        return "—"
    try:
        local = when.astimezone(ZoneInfo(zone))
    except (ZoneInfoNotFoundError, ValueError):
        local = when.astimezone(UTC)
    hour = local.strftime("%I").lstrip("0")
    return f"{local.strftime('%b')} {local.day}, {local.year}, {hour}:{local.strftime('%M %p %Z')}"


def _field_label(name: str) -> str:
    return FIELD_LABELS.get(name, name.replace("_", " ").capitalize())


def install(app: FastAPI, pages: Pages) -> None:
    """Add the routes and the handler that answers :class:`_Stop`."""

    @app.exception_handler(_Stop)
    async def stop(_request: Request, exc: _Stop) -> Response:
        return exc.response

    app.include_router(router(pages))


def router(pages: Pages) -> APIRouter:
    r = APIRouter()
    sources = pages.sources

    def redirect(request: Request, path: str, **query: str) -> RedirectResponse:
        suffix = f"?{urlencode(query)}" if query else ""
        return RedirectResponse(f"{pages.base(request)}{path}{suffix}", status_code=303)

    # ----------------------------------------------------------------------- sign-in

    def login_page(
        request: Request,
        *,
        status: int = 200,
        error: str | None = None,
        tenant: str = "",
        email: str = "",
    ) -> HTMLResponse:
        token = secrets.token_urlsafe(24)
        response = pages.page(
            request,
            "login.html",
            status=status,
            csrf=token,
            error=error,
            tenant=tenant,
            email=email,
        )
        response.set_cookie(
            LOGIN_COOKIE,
            token,
            max_age=3600,
            path=pages.base(request) or "/",
            httponly=True,
            samesite="strict",
            secure=pages.secure(request),
        )
        return response

    @r.get("/")
    async def home(request: Request) -> Response:
        return redirect(request, "/activity")

    @r.get("/login")
    async def login_form(request: Request) -> Response:
        if pages.owners.session(request.cookies.get(SESSION_COOKIE)) is not None:
            return redirect(request, "/activity")
        return login_page(request)

    @r.post("/login")
    async def login(request: Request) -> Response:
        form = await request.form()
        tenant = (_str(form.get("tenant")) or "").strip()
        email = (_str(form.get("email")) or "").strip()
        password = _str(form.get("password")) or ""
        cookie = request.cookies.get(LOGIN_COOKIE)
        if cookie is None or not same_token(_str(form.get("csrf")), cookie):
            return login_page(
                request,
                status=403,
                error="This form expired. Please try again.",
                tenant=tenant,
                email=email,
            )
        address = request.client.host if request.client else "-"
        key = (tenant.lower(), address)
        wait = pages.limiter.retry_after(key)
        if wait is not None:
            minutes = max(1, round(wait / 60))
            response = login_page(
                request,
                status=429,
                tenant=tenant,
                email=email,
                error=f"Too many attempts. Try again in {minutes} minute{'s' * (minutes > 1)}.",
            )
            response.headers["Retry-After"] = str(int(wait))
            return response
        owner = await anyio.to_thread.run_sync(pages.owners.authenticate, tenant, email, password)
        if owner is None:
            pages.limiter.failed(key)
            return login_page(
                request,
                status=401,
                tenant=tenant,
                email=email,
                error="Wrong business ID, email or password.",
            )
        pages.limiter.succeeded(key)
        token, _session = pages.owners.open_session(owner)
        answer = redirect(request, "/activity")
        answer.set_cookie(
            SESSION_COOKIE,
            token,
            max_age=int(pages.owners.session_ttl.total_seconds()),
            path=pages.base(request) or "/",
            httponly=True,
            samesite="strict",
            secure=pages.secure(request),
        )
        answer.delete_cookie(
            LOGIN_COOKIE, path=pages.base(request) or "/", httponly=True, samesite="strict"
        )
        return answer

    @r.post("/logout")
    async def logout(request: Request) -> Response:
        await pages.checked(request)
        token = request.cookies.get(SESSION_COOKIE)
        if token:
            pages.owners.close_session(token)
        response = redirect(request, "/login")
        response.delete_cookie(SESSION_COOKIE, path=pages.base(request) or "/")
        return response

    # ---------------------------------------------------------------------- activity

    @r.get("/activity")
    async def activity(request: Request) -> Response:
        session = pages.session(request)
        params = request.query_params
        agent = params.get("agent") or None
        chosen = params.get("outcome")
        outcome = cast(Outcome, chosen) if chosen in OUTCOMES else None
        try:
            number = int(params.get("page", "1"))
        except ValueError:
            number = 1
        query = TimelineQuery(agent, outcome, number, pages.settings.per_page)
        data = await sources.activity.timeline(session.tenant, query)
        filters = {k: v for k, v in (("agent", agent), ("outcome", outcome)) if v}
        context: dict[str, Any] = {
            "data": data,
            "filters": filters,
            "query": query,
            "page_url": lambda n: "?" + urlencode({**filters, "page": n}),
        }
        if _htmx(request) and request.headers.get("HX-Target") == "timeline":
            return pages.page(request, "_timeline.html", session=session, **context)
        common = await pages.common(request, session, "activity")
        return pages.page(request, "activity.html", session=session, **context, **common)

    # --------------------------------------------------------------------- approvals

    @r.get("/approvals")
    async def approvals(request: Request) -> Response:
        session = pages.session(request)
        queue = await sources.approvals.pending(session.tenant)
        common = await pages.common(request, session, "approvals")
        common["pending"] = len(queue)
        return pages.page(request, "approvals.html", session=session, queue=queue, **common)

    @r.post("/approvals/{call_id}")
    async def decide(request: Request, call_id: str) -> Response:
        session, form = await pages.checked(request)
        decision = _str(form.get("decision"))
        if decision not in ("approve", "deny"):
            pages.refuse(request, session, 400, "Choose approve or deny.")
        try:
            await sources.approvals.decide(
                session.tenant,
                call_id,
                cast(Literal["approve", "deny"], decision),
                operator=session.owner_id,
            )
        except NotFound:
            pages.refuse(request, session, 404, "That request is no longer waiting for you.")
        if not _htmx(request):
            return redirect(request, "/approvals", done=decision)
        queue = await sources.approvals.pending(session.tenant)
        return pages.page(
            request,
            "_queue.html",
            pending=len(queue),
            session=session,
            queue=queue,
            notice={"kind": "ok", "text": DONE[decision]},
            oob=True,
        )

    # ------------------------------------------------------------------- connections

    async def own_connection(request: Request, session: Session, cid: str) -> ConnectionView:
        for view in await sources.connections.connections(session.tenant):
            if view.connection_id == cid:
                return view
        pages.refuse(request, session, 404, "No such connection.")

    def credential_fields(
        request: Request, session: Session, form: FormData, view: ConnectionView
    ) -> dict[str, str]:
        fields: dict[str, str] = {}
        for name in (*view.fields, *view.optional_fields):
            value = (_str(form.get(_FIELD + name)) or "").strip()
            if value:
                fields[name] = value
        missing = [n for n in view.fields if n not in fields]
        if missing:
            fields.clear()
            labels = ", ".join(_field_label(n) for n in missing)
            pages.refuse(request, session, 400, f"Fill in every field ({labels}).")
        return fields

    async def connection_action(
        request: Request, session: Session, done: str, run: Callable[[], Awaitable[None]]
    ) -> Response:
        try:
            await run()
        except NotFound:
            pages.refuse(request, session, 404, "No such connection.")
        except ActionUnavailable as exc:
            pages.refuse(request, session, 409, str(exc))
        except BrokerRefused as exc:
            pages.refuse(request, session, 502, f"The broker refused: {exc.code}.")
        except BrokerUnreachable:
            pages.refuse(request, session, 503, "The broker did not answer. Try again shortly.")
        if not _htmx(request):
            return redirect(request, "/connections", done=done)
        views = await sources.connections.connections(session.tenant)
        return pages.page(
            request,
            "_connections.html",
            session=session,
            connections=views,
            notice={"kind": "ok", "text": DONE[done]},
            oob=True,
        )

    @r.get("/connections")
    async def connections(request: Request) -> Response:
        session = pages.session(request)
        views = await sources.connections.connections(session.tenant)
        common = await pages.common(request, session, "connections")
        return pages.page(request, "connections.html", session=session, connections=views, **common)

    @r.post("/connections/connect/{provider}")
    async def connect(request: Request, provider: str) -> Response:
        session, form = await pages.checked(request)
        views = {v.provider: v for v in await sources.connections.connections(session.tenant)}
        if provider not in views:
            pages.refuse(request, session, 404, "No such provider.")
        fields = credential_fields(request, session, form, views[provider])

        async def run() -> None:
            try:
                await sources.connections.connect(
                    session.tenant, provider, fields, operator=session.owner_id
                )
            finally:
                fields.clear()

        return await connection_action(request, session, "connect", run)

    @r.post("/connections/rotate/{connection_id}")
    async def rotate(request: Request, connection_id: str) -> Response:
        session, form = await pages.checked(request)
        view = await own_connection(request, session, connection_id)
        fields = credential_fields(request, session, form, view)

        async def run() -> None:
            try:
                await sources.connections.rotate(
                    session.tenant, connection_id, fields, operator=session.owner_id
                )
            finally:
                fields.clear()

        return await connection_action(request, session, "rotate", run)

    @r.post("/connections/revoke/{connection_id}")
    async def revoke(request: Request, connection_id: str) -> Response:
        session, _form = await pages.checked(request)
        await own_connection(request, session, connection_id)

        async def run() -> None:
            await sources.connections.revoke(
                session.tenant, connection_id, operator=session.owner_id
            )

        return await connection_action(request, session, "revoke", run)

    # ------------------------------------------------------------------------ agents

    @r.get("/agents")
    async def agents(request: Request) -> Response:
        session = pages.session(request)
        views = await sources.agents.agents(session.tenant)
        common = await pages.common(request, session, "agents")
        return pages.page(request, "agents.html", session=session, agents=views, **common)

    @r.post("/agents/opt-in")
    async def opt_in(request: Request) -> Response:
        session, form = await pages.checked(request)
        template, version = _str(form.get("template")), _str(form.get("version"))
        if not template or not version:
            pages.refuse(request, session, 400, "Choose an upgrade.")
        try:
            await sources.agents.opt_in(session.tenant, template, version)
        except NotFound:
            pages.refuse(request, session, 404, "That upgrade is not offered to you.")
        if not _htmx(request):
            return redirect(request, "/agents", done="opt_in")
        views = await sources.agents.agents(session.tenant)
        return pages.page(
            request,
            "_agents.html",
            session=session,
            agents=views,
            notice={"kind": "ok", "text": DONE["opt_in"]},
            oob=True,
        )

    # ------------------------------------------------------------------------- audit

    @r.get("/audit")
    async def audit(request: Request) -> Response:
        session = pages.session(request)
        overview = await sources.audit.overview(session.tenant)
        common = await pages.common(request, session, "audit")
        return pages.page(request, "audit.html", session=session, audit=overview, **common)

    @r.get("/audit/bundle")
    async def bundle(request: Request) -> Response:
        session = pages.session(request)
        fmt: BundleFormat = "zip" if request.query_params.get("format") == "zip" else "tar.gz"
        try:
            archive = await sources.audit.bundle(session.tenant, fmt)
        except NotFound:
            pages.refuse(request, session, 404, "Nothing is recorded yet: there is no bundle.")
        media = "application/zip" if fmt == "zip" else "application/gzip"
        cleanup = BackgroundTask(shutil.rmtree, archive.parent, ignore_errors=True)
        return FileResponse(archive, media_type=media, filename=archive.name, background=cleanup)

    return r
