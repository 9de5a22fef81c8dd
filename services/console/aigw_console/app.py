"""console service: the admin console in the browser, and the admin APIs on the same origin.

``GET /`` is the sign-in form (or a redirect to ``/providers`` with a session);
``POST /signin`` checks the token with the registry and sets the session
cookie; ``/providers`` … ``/audit`` are the pages; ``/api/...`` is relayed to
the owning service (:mod:`aigw_console.proxy`); ``/static/...`` the script and
style sheet. The console owns no data and holds no secret of its own: no
database, no bus, only the signed-in browser's token on the way through.
See docs/console.md.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web
from yarl import URL

from aigw_common.api import (
    Forbidden,
    HttpError,
    NotFound,
    Unauthorized,
    Unavailable,
    error_middleware,
)
from aigw_common.auth import bearer_token
from aigw_common.db import MigrationSet
from aigw_common.metrics import Counter
from aigw_common.service import METRICS, base_app, lifecycle
from aigw_common.settings import CONSOLE_UPSTREAMS, Settings

from . import pages
from .proxy import ProxyMetrics, forward
from .session import (
    SAFE_METHODS,
    Me,
    Session,
    SignInLimiter,
    WhoCache,
    clear_session_cookie,
    csrf_ok,
    read_session,
    same_origin,
    set_session_cookie,
    valid_token_shape,
)

log = logging.getLogger(__name__)

MIGRATIONS: tuple[MigrationSet, ...] = ()
MAX_BODY = 1024 * 1024  # the largest admin body is a skill (64 KiB) or a key (10 KiB)

_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")


@dataclass(frozen=True, slots=True)
class ConsoleConfig:
    upstreams: dict[str, URL]
    session_ttl: float

    @classmethod
    def from_settings(cls, settings: Settings) -> ConsoleConfig:
        return cls({s: URL(settings.service_url(s)) for s in CONSOLE_UPSTREAMS}, settings.console_session_ttl)


@dataclass(slots=True)
class Runtime:
    http: aiohttp.ClientSession
    streams: set[aiohttp.ClientResponse] = field(default_factory=set)  # open SSE relays, ended at shutdown


CONFIG = web.AppKey("console_config", ConsoleConfig)
RUNTIME = web.AppKey("console_runtime", Runtime)
ASSETS = web.AppKey("console_assets", dict[str, pages.Asset])
WHO = web.AppKey("console_who", WhoCache)
LIMITER = web.AppKey("console_signin_limiter", SignInLimiter)
PROXY_METRICS = web.AppKey("console_proxy_metrics", ProxyMetrics)
SIGNINS = web.AppKey("console_signins", Counter)


class SignInRefused(Exception):
    """The registry answered, and the answer is no (401 or 403): the token cannot open a session."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


async def who_is(app: web.Application, token: str) -> Me:
    """The token's user (cached a few seconds); :class:`SignInRefused` or :class:`Unavailable` otherwise."""
    cache = app[WHO]
    if (me := cache.get(token)) is not None:
        return me
    url = app[CONFIG].upstreams["registry"].joinpath("api", "v2", "users", "me")
    try:
        async with app[RUNTIME].http.get(url, headers={"Authorization": f"Bearer {token}"},
                                         timeout=aiohttp.ClientTimeout(total=10, sock_connect=5)) as r:
            if r.status == 401:
                raise SignInRefused(401, "That token is unknown, expired or revoked.")
            if r.status == 403:
                raise SignInRefused(403, "That token may not manage aigw: it has gateway scope (LLM calls only). "
                                         "Sign in with an admin-scope token.")
            if r.status != 200:
                raise Unavailable(f"the registry answered {r.status}; try again", retry_after=None)
            body = await r.json()
        me = Me(str(body["id"]), str(body["username"]), tuple(body.get("roles") or ()),
                tuple(body.get("groups") or ()))
    except (aiohttp.ClientError, TimeoutError, ValueError, KeyError, TypeError, AttributeError):
        raise Unavailable("the registry is unavailable; try again") from None
    cache.put(token, me)
    return me


def _html(body: str, status: int = 200) -> web.Response:
    return web.Response(text=body, status=status, content_type="text/html", charset="utf-8")


def _redirect(location: str) -> web.Response:
    return web.Response(status=303, headers={"Location": location})


# Where a sign-in leads (the contract's landing page; no "next" parameter, so never an open redirect).
LANDING = "/providers"


async def index(request: web.Request) -> web.Response:
    app = request.app
    session = read_session(request, app[CONFIG].session_ttl)
    if session is not None:
        try:
            await who_is(app, session.token)
            return _redirect(LANDING)
        except SignInRefused:
            pass
        except HttpError as e:
            return _html(pages.error_page(app[ASSETS], "Console unavailable", e.message), e.status)
    resp = _html(pages.signin_page(app[ASSETS]))
    if session is not None:
        clear_session_cookie(resp, request)
    return resp


async def signin(request: web.Request) -> web.Response:
    app = request.app
    if not same_origin(request):
        app[SIGNINS].labels("cross-site").inc()
        return _html(pages.signin_page(app[ASSETS], "Sign-in must come from this page."), 403)
    form = await request.post()
    token = str(form.get("token") or "").strip()
    addr = request.remote or ""
    if (wait := app[LIMITER].retry_after(addr)) > 0:
        app[SIGNINS].labels("limited").inc()
        resp = _html(pages.signin_page(app[ASSETS], "Too many failed sign-ins; wait a minute."), 429)
        resp.headers["Retry-After"] = str(int(wait) + 1)
        return resp
    if not valid_token_shape(token):
        app[SIGNINS].labels("malformed").inc()
        app[LIMITER].failed(addr)
        return _html(pages.signin_page(app[ASSETS], "Paste an aigw API token."), 400)
    try:
        me = await who_is(app, token)
    except SignInRefused as e:
        app[SIGNINS].labels(str(e.status)).inc()
        app[LIMITER].failed(addr)
        log.info("console sign-in refused", extra={"status": e.status, "remote": addr})
        return _html(pages.signin_page(app[ASSETS], e.message), e.status)
    except HttpError as e:
        return _html(pages.signin_page(app[ASSETS], e.message[:1].upper() + e.message[1:] + "."), e.status)
    app[SIGNINS].labels("ok").inc()
    app[LIMITER].succeeded(addr)
    log.info("console sign-in", extra={"user": me.username, "user_id": me.id, "remote": addr})
    resp = _redirect(LANDING)
    set_session_cookie(resp, request, Session(token, int(time.time())), app[CONFIG].session_ttl)
    return resp


async def signout(request: web.Request) -> web.Response:
    session = read_session(request, request.app[CONFIG].session_ttl)
    if session is not None:
        form = await request.post()
        if not csrf_ok(request, session, str(form.get("csrf") or "")):
            return _html(pages.error_page(request.app[ASSETS], "Not signed out",
                                          "The request did not come from this console."), 403)
        request.app[WHO].drop(session.token)
    resp = _redirect("/")
    clear_session_cookie(resp, request)
    return resp


def page_handler(page: str) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handle(request: web.Request) -> web.Response:
        app = request.app
        session = read_session(request, app[CONFIG].session_ttl)
        if session is None:
            return _redirect("/")
        try:
            me = await who_is(app, session.token)
        except SignInRefused:
            resp = _redirect("/")
            clear_session_cookie(resp, request)
            return resp
        except HttpError as e:
            return _html(pages.error_page(app[ASSETS], "Console unavailable", e.message), e.status)
        return _html(pages.app_page(page, me, session.csrf, app[ASSETS]))

    return handle


async def static(request: web.Request) -> web.Response:
    asset = request.app[ASSETS].get(request.match_info["name"])
    if asset is None:
        raise NotFound(f"asset {request.match_info['name']!r} not found")
    versioned = request.query.get("v") == asset.version
    etag = f'"{asset.version}"'
    headers = {"ETag": etag, "Cache-Control": "public, max-age=31536000, immutable" if versioned else "no-cache"}
    headers["Vary"] = "Accept-Encoding"
    if request.headers.get("If-None-Match") == etag:
        return web.Response(status=304, headers=headers)
    if "gzip" in request.headers.get("Accept-Encoding", ""):
        headers["Content-Encoding"] = "gzip"
        return web.Response(body=asset.gzipped, content_type=asset.content_type, charset="utf-8", headers=headers)
    return web.Response(body=asset.body, content_type=asset.content_type, charset="utf-8", headers=headers)


async def api(request: web.Request) -> web.StreamResponse:
    """The admin APIs on this origin: with the session's token (and its CSRF checks), or, for scripts and
    ``aigw admin``, with their own ``Authorization: Bearer`` (which no other site can make a browser send)."""
    app = request.app
    if (token := bearer_token(request)) is not None:
        return await forward(request, app[RUNTIME].http, app[CONFIG].upstreams, token, app[PROXY_METRICS],
                             app[RUNTIME].streams)
    session = read_session(request, app[CONFIG].session_ttl)
    if session is None:
        raise Unauthorized("not signed in to the console")
    if request.method not in SAFE_METHODS and not csrf_ok(request, session):
        raise Forbidden("missing or wrong CSRF token, or a cross-site request",
                        "send the page's csrf-token in X-CSRF-Token from this origin")
    resp = await forward(request, app[RUNTIME].http, app[CONFIG].upstreams, session.token, app[PROXY_METRICS],
                         app[RUNTIME].streams)
    if resp.status == 401:  # revoked or expired: forget it now, so / shows the sign-in form, not a redirect loop
        app[WHO].drop(session.token)
    return resp


@web.middleware
async def security_headers(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                           ) -> web.StreamResponse:
    resp = await handler(request)
    if not resp.prepared:
        h = resp.headers
        h.setdefault("Content-Security-Policy", _CSP)
        h.setdefault("X-Content-Type-Options", "nosniff")
        h.setdefault("Referrer-Policy", "same-origin")  # "no-referrer" would make Chromium send Origin: null on our own form posts
        h.setdefault("X-Frame-Options", "DENY")
        h.setdefault("Cache-Control", "no-store")
    return resp


def create_app(settings: Settings) -> web.Application:
    settings = settings.for_service("console")  # only the secrets console holds (docs/security.md)
    app = base_app("console", settings, middlewares=[security_headers, error_middleware], client_max_size=MAX_BODY)
    app[CONFIG] = ConsoleConfig.from_settings(settings)
    app[ASSETS] = pages.load_assets()
    app[WHO] = WhoCache()
    app[LIMITER] = SignInLimiter()
    app[PROXY_METRICS] = ProxyMetrics.create(app[METRICS])
    app[SIGNINS] = Counter("aigw_console_signins_total", "Console sign-in attempts by outcome", ["outcome"],
                           registry=app[METRICS])
    app.router.add_get("/", index)
    app.router.add_post("/signin", signin)
    app.router.add_post("/signout", signout)
    for p in pages.PAGES:
        app.router.add_get(f"/{p}", page_handler(p))
    app.router.add_get("/static/{name}", static)
    app.router.add_route("*", "/api/{tail:.*}", api)

    async def build(app: web.Application, stack: contextlib.AsyncExitStack) -> None:
        """The one resource: the HTTP client to the services (no bus, no pool)."""
        http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=200, limit_per_host=100),
                                     cookie_jar=aiohttp.DummyCookieJar())
        stack.push_async_callback(http.close)
        app[RUNTIME] = Runtime(http)

    async def end_streams(app: web.Application) -> None:
        """On shutdown, end relayed SSE streams (the browser reconnects elsewhere) so the drain is not held
        for the whole grace period by connections that never finish on their own."""
        if RUNTIME in app:
            for upstream in list(app[RUNTIME].streams):
                upstream.close()

    app.cleanup_ctx.append(lifecycle(build))
    app.on_shutdown.append(end_streams)
    return app
