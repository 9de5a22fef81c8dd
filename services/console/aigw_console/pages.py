"""The HTML the console serves: a sign-in form, and one small shell per page.

Pages are rendered on the server with the signed-in user's name and role and
the session's CSRF token; their data is loaded by ``static/console.js`` from
the same-origin admin APIs, so a slow query never holds up the page itself.
Every value written into HTML goes through :func:`html.escape`.
"""

from __future__ import annotations

import gzip
import hashlib
from dataclasses import dataclass
from html import escape
from importlib import resources

import msgspec

from aigw_common.auth import is_admin
from aigw_common.llm import CAPABILITIES, PROVIDER_TYPES

from .session import Me

# path → (title, what it is for); the order is the navigation's
PAGES: dict[str, tuple[str, str]] = {
    "providers": ("Providers", "providers, their keys and the keys' live health"),
    "people": ("People", "users, groups, members, API tokens and BYOK keys"),
    "budgets": ("Budgets", "spend limits per group and user"),
    "usage": ("Spend and usage", "spend and tokens over time"),
    "traffic": ("Traffic", "recorded interceptions"),
    "audit": ("Audit log", "who changed what"),
}


@dataclass(frozen=True, slots=True)
class Asset:
    body: bytes
    gzipped: bytes  # compressed once at start, sent to browsers that accept gzip
    content_type: str
    version: str  # content hash: the URL changes when the file does, so it can be cached forever


def load_assets() -> dict[str, Asset]:
    out = {}
    for name, ctype in (("console.js", "text/javascript"), ("console.css", "text/css")):
        body = resources.files("aigw_console").joinpath("static", name).read_bytes()
        out[name] = Asset(body, gzip.compress(body, 9, mtime=0), ctype, hashlib.sha256(body).hexdigest()[:16])
    return out


def _head(title: str, assets: dict[str, Asset], csrf: str = "") -> str:
    css = assets["console.css"]
    meta = f'<meta name="csrf-token" content="{escape(csrf)}">' if csrf else ""
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">{meta}'
            f'<title>{escape(title)} · aigw</title><link rel="icon" href="data:,">'
            f'<link rel="stylesheet" href="/static/console.css?v={css.version}"></head>')


def signin_page(assets: dict[str, Asset], error: str = "") -> str:
    err = f'<p class="error" role="alert">{escape(error)}</p>' if error else ""
    return (_head("Sign in", assets) +
            '<body class="signin"><main class="signin-box"><h1>aigw console</h1>'
            '<p>Sign in with an aigw API token that has admin scope.</p>' + err +
            '<form method="post" action="/signin" autocomplete="off">'
            '<label for="token">Token</label>'
            '<input id="token" name="token" type="password" required autofocus spellcheck="false">'
            '<button type="submit">Sign in</button></form>'
            '<p class="hint">The owner token of <code>aigw dev</code> is in <code>.aigw/owner-token</code>. '
            'Create another with <code>aigw admin tokens create --scope admin</code>.</p></main></body></html>')


# Each type's own settings as the console's forms need them: {type: [[field, secret], …]}.
_PROVIDER_SETTINGS = msgspec.json.encode(
    {t.value: [[f.name, f.secret] for f in cap.settings] for t, cap in CAPABILITIES.items() if cap.settings}).decode()


def app_page(page: str, me: Me, csrf: str, assets: dict[str, Asset]) -> str:
    title, _ = PAGES[page]
    nav = "".join(
        f'<a href="/{p}"{" aria-current=page" if p == page else ""}>{escape(t)}</a>' for p, (t, _) in PAGES.items()
    )
    role = "admin" if is_admin(me) else "member"
    js = assets["console.js"]
    return (_head(title, assets, csrf) +
            f'<body data-page="{escape(page)}" data-role="{role}" data-user-id="{escape(me.id)}" '
            f'data-username="{escape(me.username)}" data-provider-types="{escape(" ".join(PROVIDER_TYPES))}" '
            f'data-provider-settings="{escape(_PROVIDER_SETTINGS)}">'
            f'<header><span class="brand">aigw</span><nav>{nav}</nav>'
            f'<span class="who">{escape(me.username)} <small>({escape(", ".join(me.roles))})</small></span>'
            f'<form method="post" action="/signout"><input type="hidden" name="csrf" value="{escape(csrf)}">'
            '<button type="submit" class="link">Sign out</button></form></header>'
            f'<main><h1>{escape(title)}</h1><div id="flash" role="status" aria-live="polite"></div>'
            '<div id="app"><p class="muted">Loading…</p></div></main>'
            f'<script src="/static/console.js?v={js.version}" defer></script></body></html>')


def error_page(assets: dict[str, Asset], title: str, message: str) -> str:
    return (_head(title, assets) + f'<body class="signin"><main class="signin-box"><h1>{escape(title)}</h1>'
            f'<p class="error">{escape(message)}</p><p><a href="/">Back to the console</a></p></main></body></html>')
