"""The ``aigw`` command: one program that starts any service, migrates, runs the dev stack, or administers."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import logging
import os
import sys
from collections.abc import Callable, Coroutine, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

from .errors import AigwError, ConfigError
from .logging import setup_logging
from .settings import SERVICES, Settings

_T = TypeVar("_T")


def load_service(name: str) -> ModuleType:
    """Import ``aigw_<name>.app``: it exports ``create_app(settings)`` and optionally ``MIGRATIONS``."""
    try:
        return importlib.import_module(f"aigw_{name}.app")
    except ModuleNotFoundError as e:
        if e.name in (f"aigw_{name}", f"aigw_{name}.app"):
            raise ConfigError(f"service {name!r} is not installed in this environment") from None
        raise


def available_services() -> list[str]:
    out = []
    for s in SERVICES:
        try:
            load_service(s)
        except ConfigError:
            continue
        out.append(s)
    return out


async def run_one(name: str, settings: Settings, *, reuse_port: bool = False) -> None:
    from . import tracing
    from .service import serve

    tracing.setup_tracing(name)
    for var in settings.foreign_secrets(name):
        logging.getLogger("aigw").warning(
            "a secret this service does not hold is set in its environment; it is ignored: remove it",
            extra={"variable": var, "service": name, "see": "docs/security.md"})
    mod = load_service(name)
    app = mod.create_app(settings)
    addr = settings.addrs[name]
    await serve(app, addr.host, addr.port, grace=settings.shutdown_grace, reuse_port=reuse_port)


def run_loop(main: Coroutine[Any, Any, _T]) -> _T:
    """``asyncio.run`` on uvloop when it is installed (production), else on the standard loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


def _exit_code(cmd: str, run: Callable[[], object]) -> int:
    """What ``aigw <cmd>`` exits with: 0 once ``run`` returns, 1 on an AigwError (said on stderr), 130 on Ctrl-C."""
    try:
        run()
        return 0
    except AigwError as e:
        print(f"aigw {cmd}: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def run_service(name: str, settings: Settings, *, reuse_port: bool = False) -> int:
    """Serve one service in this process until SIGTERM/SIGINT; returns the exit code."""
    return _exit_code(name, lambda: run_loop(run_one(name, settings, reuse_port=reuse_port)))


async def run_migrations(settings: Settings, *, owners: Mapping[str, str] | None = None) -> list[str]:
    from .db import migrate_dsn

    sets: list[Any] = []
    for s in available_services():
        sets.extend(getattr(load_service(s), "MIGRATIONS", ()))
    unknown = set(owners or ()) - {s.schema for s in sets}
    if unknown:
        raise ConfigError(f"--owner names no schema of an installed service: {', '.join(sorted(unknown))}")
    return await migrate_dsn(settings.require_database(), *sets, owners=owners)


def openapi_documents() -> dict[str, dict[str, Any]]:
    """Each installed service's OpenAPI document (``aigw_<name>.openapi.document()``), by service name."""
    out = {}
    for s in available_services():
        try:
            mod = importlib.import_module(f"aigw_{s}.openapi")
        except ModuleNotFoundError as e:
            if e.name == f"aigw_{s}.openapi":
                continue  # a service without an HTTP API of its own to describe (the console)
            raise
        out[s] = mod.document()
    return out


def write_openapi(out: Path) -> list[Path]:
    """Write ``<out>/<service>.json`` (2-space JSON, a final newline); returns the paths written."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, doc in openapi_documents().items():
        path = out / f"{name}.json"
        path.write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
        written.append(path)
    return written


def main(argv: list[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    env = os.environ if env is None else env
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["admin"]:
        # everything after "admin" is the admin CLI's, including -h/--help (argparse's REMAINDER would not
        # take an option in first position)
        from .admin import main as admin_main

        return admin_main(argv[1:], env)
    parser = argparse.ArgumentParser(prog="aigw", description="aigw: a self-hosted AI gateway")
    sub = parser.add_subparsers(dest="cmd", required=True)
    for s in SERVICES:
        sub.add_parser(s, help=f"run the {s} service (configured by AIGW_* env vars)")
    mig = sub.add_parser("migrate", help="apply database migrations and exit")
    mig.add_argument("--owner", action="append", default=[], metavar="SCHEMA=ROLE",
                     help="give SCHEMA (registry, budget, chatd) its own role, created if missing, and migrate it "
                          "as that role; repeat per service (docs/security.md)")
    dev = sub.add_parser("dev", help="run the whole system on this machine (embedded Postgres and NATS when unset)")
    dev.add_argument("--dir", default=".aigw", help="state directory (default .aigw)")
    sub.add_parser("proto", help="regenerate proto/ JSON Schemas from the bus messages")
    oa = sub.add_parser("openapi", help="write every service's OpenAPI document into docs/openapi/")
    oa.add_argument("--out", default="docs/openapi", help="directory (default docs/openapi)")
    cd = sub.add_parser("config-doc", help="rewrite the variable tables of docs/configuration.md from the "
                        "table in aigw_common/settings.py")
    cd.add_argument("--out", default="docs/configuration.md", help="file (default docs/configuration.md)")
    na = sub.add_parser("nats-auth", help="print the NATS authorization block (one user per service, least "
                        "privilege; passwords as $NATS_<SERVICE>_PASSWORD)")
    na.add_argument("--prefix", default="aigw", help="bus subject prefix (AIGW_BUS_PREFIX; default aigw)")
    cs = sub.add_parser("compose-secrets", help="write per-service secret env files for deploy/compose.yaml "
                        "(NATS passwords, bus signing keys), each holding only what its service needs")
    cs.add_argument("dir", nargs="?", default="deploy/secrets", help="target directory (default deploy/secrets)")
    sub.add_parser("bus-keys", help="generate Ed25519 bus signing keys: AIGW_<PRODUCER>_SIGNING_KEY lines "
                   "and the AIGW_BUS_VERIFY_KEYS line for every service")
    admin = sub.add_parser("admin", help="administer a running aigw (providers, keys, users, tokens, budgets)", add_help=False)
    admin.add_argument("rest", nargs=argparse.REMAINDER)  # for the listing in `aigw --help`; handled above
    args = parser.parse_args(argv)

    if args.cmd == "openapi":
        for p in write_openapi(Path(args.out)):
            print(p)
        return 0
    if args.cmd == "config-doc":
        from .configdoc import write

        print(f"{args.out}: {'rewritten' if write(Path(args.out)) else 'current'}")
        return 0
    if args.cmd == "nats-auth":
        from .natsauth import authorization_block

        print(authorization_block(prefix=args.prefix), end="")
        return 0
    if args.cmd == "compose-secrets":
        from .natsauth import write_service_secrets

        written = write_service_secrets(Path(args.dir))
        print("\n".join(str(p) for p in written) if written else f"{args.dir}/nats.env exists: nothing written")
        return 0
    if args.cmd == "bus-keys":
        from .signing import PRODUCERS, generate_keypair

        pairs = {p: generate_keypair() for p in PRODUCERS}
        for producer, (priv, _pub) in pairs.items():
            print(f"AIGW_{producer.upper()}_SIGNING_KEY={priv}")
        print("AIGW_BUS_VERIFY_KEYS=" + ",".join(f"{p}:{pub}" for p, (_priv, pub) in pairs.items()))
        return 0
    if args.cmd == "proto":
        from .proto import write_schemas

        for p in write_schemas():
            print(p)
        return 0
    try:
        settings = Settings.from_env(env)
    except ConfigError as e:
        print(f"aigw: configuration error: {e}", file=sys.stderr)
        return 2
    if args.cmd == "dev":
        from .dev import main as dev_main

        return dev_main(args.dir, env)
    setup_logging(args.cmd, fmt=settings.log_format, level=settings.log_level)
    if args.cmd == "gateway" and settings.gateway_workers > 1:
        from .workers import supervise

        return asyncio.run(supervise(args.cmd, settings, env, settings.gateway_workers))
    if args.cmd != "migrate":
        return run_service(args.cmd, settings)
    owners = dict(o.split("=", 1) for o in args.owner if "=" in o)
    if len(owners) != len(args.owner):
        print("aigw migrate: --owner takes SCHEMA=ROLE", file=sys.stderr)
        return 2

    def migrate() -> None:
        applied = asyncio.run(run_migrations(settings, owners=owners))
        print(f"applied {len(applied)} migration(s)" + (": " + ", ".join(applied) if applied else ""))

    return _exit_code(args.cmd, migrate)


if __name__ == "__main__":
    sys.exit(main())
