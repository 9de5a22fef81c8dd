"""``aigw admin``: a thin client for the registry and budget APIs, so an operator never hand-writes curl.

Every command prints the API's JSON answer on stdout (``{"ok": true}`` for a
204) and exits 0; an API error prints the error body on stderr and exits 1.
The token comes from ``--token``, else ``AIGW_ADMIN_TOKEN``, else the owner
token ``aigw dev`` wrote (``<dir>/owner-token``). Keys can be read from stdin
(``--key-stdin``) so they stay out of the shell history and the process list.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import quote, urlencode

from .errors import ConfigError
from .llm import PROVIDER_TYPES
from .settings import Settings

USER_HELP = "user id, username or 'me'"


class AdminError(Exception):
    """A problem the operator must fix (no token, service unreachable)."""


def _seg(s: str) -> str:
    return quote(s, safe="")


def _local_url(addr: Any) -> str:
    host = "127.0.0.1" if addr.host in ("0.0.0.0", "", "::") else addr.host
    return f"http://{host}:{addr.port}"


class Api:
    def __init__(self, base: str, token: str, timeout: float = 30.0) -> None:
        self.base, self.token, self.timeout = base.rstrip("/"), token, timeout

    def call(self, method: str, path: str, body: Any = None, query: Mapping[str, str] | None = None) -> Any:
        url = self.base + path + (("?" + urlencode({k: v for k, v in query.items() if v})) if query else "")
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(url, data=data, method=method, headers={
            "Authorization": f"Bearer {self.token}", "Accept": "application/json",
            **({"Content-Type": "application/json"} if data is not None else {})})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as r:
                raw = r.read()
        except urllib.error.HTTPError as e:
            raw = e.read()
            try:
                err = json.loads(raw) if raw else {"message": e.reason}
            except ValueError:
                err = {"message": raw.decode(errors="replace")[:500]}
            raise ApiFailure(e.code, err) from None
        except (urllib.error.URLError, OSError) as e:
            raise AdminError(f"cannot reach {self.base}: {getattr(e, 'reason', e)}") from None
        return json.loads(raw) if raw else {"ok": True}


class ApiFailure(Exception):
    def __init__(self, status: int, body: Any) -> None:
        super().__init__(f"HTTP {status}")
        self.status, self.body = status, body


def _settings_pairs(pairs: list[str] | None) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for p in pairs or ():
        k, sep, v = p.partition("=")
        if not sep or not k:
            raise AdminError(f"--setting {p!r}: expected key=value (key= removes it on update)")
        out[k.strip()] = v if v != "" else None
    return out


def _keys(args: argparse.Namespace, stdin: TextIO) -> list[str]:
    keys = list(args.key or ())
    if getattr(args, "key_stdin", False):
        keys += [line.strip() for line in stdin.read().splitlines() if line.strip()]
    return keys


def _budget_path(args: argparse.Namespace) -> str:
    if bool(args.user) == bool(args.group):
        raise AdminError("give exactly one of --user or --group")
    if args.user:
        return f"/api/v2/users/{_seg(args.user)}/ai/budget"
    return f"/api/v2/groups/{_seg(args.group)}/ai/budget"


def _user_opt(p: argparse.ArgumentParser) -> None:
    p.add_argument("--user", default="me", help=USER_HELP)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="aigw admin", description="administer a running aigw (prints JSON)")
    p.add_argument("--registry-url", help="registry base URL (default: from AIGW_REGISTRY_ADDR)")
    p.add_argument("--budget-url", help="budget base URL (default: from AIGW_BUDGET_ADDR)")
    p.add_argument("--keypool-url", help="keypool base URL (default: from AIGW_KEYPOOL_ADDR)")
    p.add_argument("--token", help="aigw token (default: AIGW_ADMIN_TOKEN, else <dir>/owner-token)")
    p.add_argument("--dir", help="aigw dev state directory holding owner-token (default: .aigw)")
    res = p.add_subparsers(dest="resource", required=True)

    pr = res.add_parser("providers", help="AI providers").add_subparsers(dest="verb", required=True)
    pr.add_parser("list")
    pr.add_parser("get").add_argument("provider")
    c = pr.add_parser("create")
    c.add_argument("--name", required=True)
    c.add_argument("--type", required=True,
                   help=", ".join(PROVIDER_TYPES))
    c.add_argument("--base-url", required=True)
    c.add_argument("--display-name", default="")
    c.add_argument("--disabled", action="store_true")
    c.add_argument("--no-byok", action="store_true")
    c.add_argument("--setting", action="append", metavar="KEY=VALUE", help="e.g. region=us-east-1 (repeatable)")
    c.add_argument("--key", action="append", help="API key (repeatable; order = failover order)")
    c.add_argument("--key-stdin", action="store_true", help="read API keys from stdin, one per line")
    u = pr.add_parser("update")
    u.add_argument("provider")
    u.add_argument("--name")
    u.add_argument("--display-name")
    u.add_argument("--base-url")
    g = u.add_mutually_exclusive_group()
    g.add_argument("--enable", dest="enabled", action="store_const", const=True)
    g.add_argument("--disable", dest="enabled", action="store_const", const=False)
    g2 = u.add_mutually_exclusive_group()
    g2.add_argument("--byok", dest="allow_byok", action="store_const", const=True)
    g2.add_argument("--no-byok", dest="allow_byok", action="store_const", const=False)
    u.add_argument("--setting", action="append", metavar="KEY=VALUE", help="KEY= removes a setting")
    pr.add_parser("delete").add_argument("provider")

    k = res.add_parser("keys", help="a provider's key pool").add_subparsers(dest="verb", required=True)
    k.add_parser("list").add_argument("provider")
    a = k.add_parser("add")
    a.add_argument("provider")
    a.add_argument("--key", action="append")
    a.add_argument("--key-stdin", action="store_true")
    a.add_argument("--position", type=int, help="0 is tried first (default: last)")
    r = k.add_parser("remove")
    r.add_argument("provider")
    r.add_argument("key_id")
    k.add_parser("health", help="fleet-wide health of the pool: state, why, next re-check").add_argument("provider")
    rs = k.add_parser("reset", help="return a key to valid on every gateway now (keypool; audited)")
    rs.add_argument("provider")
    rs.add_argument("key_id")

    us = res.add_parser("users", help="users").add_subparsers(dest="verb", required=True)
    us.add_parser("list")
    us.add_parser("get").add_argument("user", help=USER_HELP)
    c = us.add_parser("create")
    c.add_argument("username")
    c.add_argument("--email")
    c.add_argument("--role", action="append", choices=["owner", "admin", "member"], help="repeatable (default member)")
    u = us.add_parser("update")
    u.add_argument("user", help=USER_HELP)
    u.add_argument("--username")
    u.add_argument("--email")
    u.add_argument("--role", action="append", choices=["owner", "admin", "member"])
    us.add_parser("delete").add_argument("user", help=USER_HELP)

    t = res.add_parser("tokens", help="API tokens").add_subparsers(dest="verb", required=True)
    _user_opt(t.add_parser("list"))
    c = t.add_parser("create")
    _user_opt(c)
    c.add_argument("--name", default="")
    c.add_argument("--scope", choices=["gateway", "admin"], default="gateway",
                   help="gateway (default): LLM routes only; admin: also the admin APIs the user's roles allow")
    exp = c.add_mutually_exclusive_group()
    exp.add_argument("--expires-at", help="RFC 3339 time, e.g. 2030-01-01T00:00:00Z (default: 90 days from now)")
    exp.add_argument("--no-expiry", action="store_true", help="a token that never expires (owners only)")
    r = t.add_parser("revoke")
    r.add_argument("token_id")
    _user_opt(r)

    uk = res.add_parser("user-keys", help="a user's own provider keys (BYOK)").add_subparsers(dest="verb", required=True)
    _user_opt(uk.add_parser("list"))
    s = uk.add_parser("set")
    s.add_argument("provider")
    _user_opt(s)
    s.add_argument("--key", action="append")
    s.add_argument("--key-stdin", action="store_true")
    d = uk.add_parser("delete")
    d.add_argument("provider")
    _user_opt(d)

    gr = res.add_parser("groups", help="groups and members").add_subparsers(dest="verb", required=True)
    gr.add_parser("list")
    gr.add_parser("get").add_argument("group")
    gr.add_parser("create").add_argument("name")
    rn = gr.add_parser("rename")
    rn.add_argument("group")
    rn.add_argument("name")
    gr.add_parser("delete").add_argument("group")
    for verb in ("add-member", "remove-member"):
        m = gr.add_parser(verb)
        m.add_argument("group")
        m.add_argument("user", help=USER_HELP)

    b = res.add_parser("budgets", help="user and group budgets").add_subparsers(dest="verb", required=True)
    for verb in ("get", "set", "delete"):
        x = b.add_parser(verb)
        x.add_argument("--user", help=USER_HELP)
        x.add_argument("--group")
        if verb == "set":
            lim = x.add_mutually_exclusive_group(required=True)
            lim.add_argument("--limit-usd", type=float)
            lim.add_argument("--limit-micros", type=int)
            x.add_argument("--period", default="month")

    au = res.add_parser("audit", help="the registry's audit log, newest first")
    au.add_argument("--limit", default="50")
    au.add_argument("--action")
    au.add_argument("--resource-type")
    au.add_argument("--resource-id")
    au.add_argument("--actor")
    au.add_argument("--cursor")

    rs = res.add_parser("rotate-secrets", help="re-seal every stored secret with the first key of "
                        "AIGW_ENCRYPTION_KEYS (owners; batched, resumable), so older keys can be dropped")
    rs.add_argument("--batch-size", type=int, default=100, help="rows per transaction (1-1000)")
    return p


P = "/api/v2/ai/providers"
# The registry's collections: path, and the argument naming one item (an id or a name). list, get and delete
# are the same three calls on each.
COLLECTIONS = {"providers": (P, "provider"), "users": ("/api/v2/users", "user"), "groups": ("/api/v2/groups", "group")}


def _run(args: argparse.Namespace, reg: Api, budget: Api, stdin: TextIO, keypool: Api | None = None) -> Any:
    res, verb = args.resource, getattr(args, "verb", None)
    if res in COLLECTIONS and verb in ("list", "get", "delete"):
        base, item = COLLECTIONS[res]
        if verb == "list":
            return reg.call("GET", base)
        return reg.call("GET" if verb == "get" else "DELETE", f"{base}/{_seg(getattr(args, item))}")
    if res == "providers":
        if verb == "create":
            body: dict[str, Any] = {"name": args.name, "type": args.type, "base_url": args.base_url,
                                    "display_name": args.display_name, "enabled": not args.disabled,
                                    "allow_byok": not args.no_byok}
            if args.setting:
                body["settings"] = {k: v for k, v in _settings_pairs(args.setting).items() if v is not None}
            if keys := _keys(args, stdin):
                body["keys"] = keys
            return reg.call("POST", P, body)
        if verb == "update":
            body = {k: v for k, v in {"name": args.name, "display_name": args.display_name,
                                      "base_url": args.base_url, "enabled": args.enabled,
                                      "allow_byok": args.allow_byok}.items() if v is not None}
            if args.setting:
                body["settings"] = _settings_pairs(args.setting)
            return reg.call("PATCH", f"{P}/{_seg(args.provider)}", body)
    if res == "keys":
        if verb == "list":
            return reg.call("GET", f"{P}/{_seg(args.provider)}/keys")
        if verb == "add":
            keys = _keys(args, stdin)
            if not keys:
                raise AdminError("give --key or --key-stdin")
            out = []
            for i, key in enumerate(keys):
                body = {"api_key": key}
                if args.position is not None:
                    body["position"] = args.position + i
                out.append(reg.call("POST", f"{P}/{_seg(args.provider)}/keys", body))
            return out[0] if len(out) == 1 else {"keys": out}
        if verb == "remove":
            return reg.call("DELETE", f"{P}/{_seg(args.provider)}/keys/{_seg(args.key_id)}")
        if args.verb in ("health", "reset"):
            if keypool is None:
                raise AdminError("no keypool URL")
            if args.verb == "health":
                return keypool.call("GET", f"{P}/{_seg(args.provider)}/keys/health")
            return keypool.call("POST", f"{P}/{_seg(args.provider)}/keys/{_seg(args.key_id)}/reset")
    if res == "users":
        if verb == "create":
            body = {"username": args.username, "roles": args.role or ["member"]}
            if args.email:
                body["email"] = args.email
            return reg.call("POST", "/api/v2/users", body)
        if verb == "update":
            body = {k: v for k, v in {"username": args.username, "email": args.email, "roles": args.role}.items()
                    if v is not None}
            return reg.call("PATCH", f"/api/v2/users/{_seg(args.user)}", body)
    if res == "tokens":
        base = f"/api/v2/users/{_seg(args.user)}/tokens"
        if verb == "list":
            return reg.call("GET", base)
        if verb == "create":
            body = {"name": args.name, "scope": args.scope}
            if args.no_expiry:
                body["expires_at"] = None
            elif args.expires_at:
                body["expires_at"] = args.expires_at
            return reg.call("POST", base, body)
        if verb == "revoke":
            return reg.call("DELETE", f"{base}/{_seg(args.token_id)}")
    if res == "user-keys":
        base = f"/api/v2/users/{_seg(args.user)}/ai/provider-keys"
        if verb == "list":
            return reg.call("GET", base)
        if verb == "set":
            keys = _keys(args, stdin)
            if len(keys) != 1:
                raise AdminError("give exactly one key (--key or --key-stdin)")
            return reg.call("PUT", f"{base}/{_seg(args.provider)}", {"api_key": keys[0]})
        if verb == "delete":
            return reg.call("DELETE", f"{base}/{_seg(args.provider)}")
    if res == "groups":
        if verb == "create":
            return reg.call("POST", "/api/v2/groups", {"name": args.name})
        if verb == "rename":
            return reg.call("PATCH", f"/api/v2/groups/{_seg(args.group)}", {"name": args.name})
        if verb in ("add-member", "remove-member"):
            return reg.call("PUT" if verb == "add-member" else "DELETE",
                            f"/api/v2/groups/{_seg(args.group)}/members/{_seg(args.user)}")
    if res == "budgets":
        path = _budget_path(args)
        if verb == "get":
            return budget.call("GET", path)
        if verb == "set":
            micros = args.limit_micros if args.limit_micros is not None else round(args.limit_usd * 1_000_000)
            return budget.call("PUT", path, {"spend_limit_micros": micros, "period": args.period})
        if verb == "delete":
            return budget.call("DELETE", path)
    if res == "rotate-secrets":
        return _rotate(reg, args.batch_size)
    if res == "audit":
        return reg.call("GET", "/api/v2/audit-logs", query={
            "limit": args.limit, "action": args.action, "resource_type": args.resource_type,
            "resource_id": args.resource_id, "actor": args.actor, "cursor": args.cursor})
    raise AdminError(f"unknown command {res} {verb}")


def _rotate(reg: Api, batch: int) -> Any:
    """Call the registry until nothing is left under an older key; rows another writer held locked are
    picked up by the next round. Prints the totals; exits 1 if rows remain after the rounds stop helping."""
    total: dict[str, int] = {}
    out: Any = None
    for _ in range(100):
        out = reg.call("POST", "/api/v2/secrets/rotate", {"batch_size": batch})
        for kind, n in out["resealed"].items():
            total[kind] = total.get(kind, 0) + n
        if not any(out["remaining"].values()) or not any(out["resealed"].values()):
            break
    out["resealed"] = total
    if any(out["remaining"].values()):
        raise AdminError(f"secrets still under an older key: {out['remaining']}; run rotate-secrets again")
    return out


def _token(args: argparse.Namespace, settings: Settings) -> str:
    if args.token:
        return str(args.token)
    if settings.admin_token:
        return settings.admin_token
    path = Path(args.dir or ".aigw") / "owner-token"
    if path.is_file():
        return path.read_text().strip()
    raise AdminError(f"no token: pass --token, set AIGW_ADMIN_TOKEN, or run aigw dev (writes {path})")


def main(argv: list[str], env: Mapping[str, str], *, stdin: TextIO | None = None,
         stdout: TextIO | None = None, stderr: TextIO | None = None) -> int:
    out, err = stdout or sys.stdout, stderr or sys.stderr
    try:
        args = _parser().parse_args(argv)
    except SystemExit as e:  # argparse: --help (0) or a usage error (2)
        return int(e.code or 0)
    try:
        settings = Settings.from_env(env)
        token = _token(args, settings)
        reg = Api(args.registry_url or _local_url(settings.addrs["registry"]), token)
        budget = Api(args.budget_url or _local_url(settings.addrs["budget"]), token)
        keypool = Api(args.keypool_url or _local_url(settings.addrs["keypool"]), token)
        result = _run(args, reg, budget, stdin or sys.stdin, keypool)
    except ApiFailure as e:
        print(json.dumps({"status": e.status, **(e.body if isinstance(e.body, dict) else {"body": e.body})},
                         indent=2), file=err)
        return 1
    except (AdminError, ConfigError) as e:
        print(f"aigw admin: {e}", file=err)
        return 1
    print(json.dumps(result, indent=2), file=out)
    return 0
