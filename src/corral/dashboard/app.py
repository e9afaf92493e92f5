"""The dashboard as a FastAPI sub-application, to be mounted into ``corral control``'s app.

:func:`create_dashboard` builds it from the :class:`~corral.dashboard.sources.Sources` it reads
and :class:`DashboardSettings` (the ``dashboard`` section of :mod:`corral.core.settings`, its one
definition, re-exported here); :func:`mount` puts it at ``/dashboard`` of control's app.
Nothing runs at import, and the sub-app has no lifespan of its own (a mounted app's lifespan
does not run): whoever built the sources closes them.
"""

from __future__ import annotations

import base64
import hashlib
from datetime import timedelta
from pathlib import Path
from typing import Protocol

import jinja2
from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp

from corral.broker.client import BrokerUnreachable
from corral.core.clock import Clock, SystemClock
from corral.core.errors import ConfigError
from corral.core.settings import DashboardSettings
from corral.dashboard.auth import LoginLimiter, OwnerStore
from corral.dashboard.pages import SESSION_COOKIE, Assets, Pages, install
from corral.dashboard.sources import Sources, SourceUnavailable

__all__ = ["DashboardSettings", "create_dashboard", "mount"]

_HERE = Path(__file__).parent
STATIC = _HERE / "static"
TEMPLATES = _HERE / "templates"

#: Same-origin everything, no inline script or style, no framing, forms post only here.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)


def _assets() -> Assets:
    """Each static file's cache-busting version and Subresource Integrity hash."""
    versions, integrity = {}, {}
    for path in sorted(STATIC.iterdir()):
        if path.suffix in (".css", ".js"):
            data = path.read_bytes()
            versions[path.name] = hashlib.sha256(data).hexdigest()[:12]
            digest = base64.b64encode(hashlib.sha384(data).digest()).decode("ascii")
            integrity[path.name] = f"sha384-{digest}"
    return Assets(versions, integrity)


def create_dashboard(
    sources: Sources,
    settings: DashboardSettings,
    *,
    clock: Clock | None = None,
    owners: OwnerStore | None = None,
) -> FastAPI:
    """The dashboard app. ``owners`` defaults to a store at ``settings.database_url`` (its
    tables created); pass one to share it with a CLI or a test."""
    clock = clock or SystemClock()
    if owners is None:
        if settings.database_url is None:
            raise ConfigError("the dashboard needs dashboard.database_url (or an OwnerStore)")
        owners = OwnerStore.from_url(
            settings.database_url,
            clock=clock,
            session_ttl=timedelta(hours=settings.session_hours),
        )
        owners.create_schema()
    limiter = LoginLimiter(
        clock, attempts=settings.login_attempts, window=timedelta(seconds=settings.login_window_s)
    )
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=jinja2.select_autoescape(["html"]),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    pages = Pages(sources, owners, limiter, settings, env, _assets(), clock)
    app = FastAPI(title="corral dashboard", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.owners = owners

    @app.middleware("http")
    async def headers(request: Request, call_next: _Next) -> Response:
        response = await call_next(request)
        response.headers.setdefault("Content-Security-Policy", CSP)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        response.headers.setdefault("Cross-Origin-Opener-Policy", "same-origin")
        if not request.url.path.startswith(f"{request.scope.get('root_path', '')}/static/"):
            response.headers.setdefault("Cache-Control", "no-store")
        return response

    @app.exception_handler(SourceUnavailable)
    async def source_down(request: Request, exc: SourceUnavailable) -> Response:
        return await _unavailable(pages, request, str(exc))

    @app.exception_handler(BrokerUnreachable)
    async def broker_down(request: Request, _exc: BrokerUnreachable) -> Response:
        text = "The broker is not answering, so connections cannot be shown right now."
        return await _unavailable(pages, request, text)

    install(app, pages)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


async def _unavailable(pages: Pages, request: Request, text: str) -> Response:
    """A page whose source is down (a host or broker not running) says so, with 503, instead
    of failing with a bare 500: the other pages keep working."""
    if request.headers.get("HX-Request") == "true":
        html = pages.env.get_template("_notice.html").render(kind="error", text=text)
        headers = {"HX-Retarget": "#notice", "HX-Reswap": "innerHTML"}
        return HTMLResponse(html, status_code=503, headers=headers)
    session = pages.owners.session(request.cookies.get(SESSION_COOKIE))
    inner = request.url.path.removeprefix(pages.base(request)).strip("/")
    active = inner.split("/", 1)[0]
    pending = await pages.pending_count(session.tenant) if session is not None else 0
    return pages.page(
        request, "error.html", status=503, session=session, text=text, active=active,
        pending=pending,
    )  # fmt: skip


class _Next(Protocol):
    async def __call__(self, request: Request, /) -> Response: ...


class _Wrapped(Protocol):
    """What ``corral.supervisor.app.create_app`` returns: an ASGI wrapper around the API."""

    api: FastAPI


def mount(app: Starlette | _Wrapped, dashboard: ASGIApp, path: str = "/dashboard") -> None:
    """Serve ``dashboard`` under ``path`` of control's app (or of the app it wraps)."""
    target = app if isinstance(app, Starlette) else app.api
    target.mount(path, dashboard, name="dashboard")
