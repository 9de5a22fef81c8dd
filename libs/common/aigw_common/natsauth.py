"""NATS authorization: one user per service, least privilege, in one place.

``permissions(service)`` is the single definition of what each service may publish and subscribe to:
the contract's subjects it really uses, its own reply inbox (``_INBOX.<service>.>``; a responder
answers through ``allow_responses``, never through a right on every inbox), and exactly the
JetStream API subjects of the streams, consumers and bucket it uses. The gateway, facing the
internet, may publish usage and read the key-state bucket; it cannot update, delete or purge a
stream, write the bucket, or touch another service's consumer.

``authorization_block`` renders it as nats-server configuration. ``aigw dev`` writes it with
generated passwords; ``deploy/compose.nats.conf`` and ``deploy/k8s/nats.yaml`` embed it with
``$NATS_<SERVICE>_PASSWORD`` variables (``aigw nats-auth`` prints it; a test checks they match).
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Mapping
from pathlib import Path

from .bus import Subjects

# The services that connect to NATS (the console talks HTTP only).
BUS_USERS = ("gateway", "registry", "keypool", "budget", "chatd")


def _js(stream: str, *verbs: str) -> list[str]:
    return [f"$JS.API.STREAM.{v}.{stream}" for v in verbs]


def _durable(stream: str, durable: str) -> list[str]:
    """Rights to one durable pull consumer: create/bind it, read its info, pull from it, ack its messages."""
    return [
        f"$JS.API.CONSUMER.DURABLE.CREATE.{stream}.{durable}",
        f"$JS.API.CONSUMER.CREATE.{stream}.{durable}",
        f"$JS.API.CONSUMER.CREATE.{stream}.{durable}.>",
        f"$JS.API.CONSUMER.INFO.{stream}.{durable}",
        f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{durable}",
        f"$JS.ACK.{stream}.{durable}.>",
    ]


def _watch(stream: str) -> list[str]:
    """Rights to read a stream through ephemeral (ordered) consumers: the key-state watch."""
    return [
        f"$JS.API.CONSUMER.CREATE.{stream}",
        f"$JS.API.CONSUMER.CREATE.{stream}.>",
        f"$JS.API.CONSUMER.INFO.{stream}.>",
        f"$JS.API.CONSUMER.DELETE.{stream}.>",
        f"$JS.FC.{stream}.>",
    ]


def permissions(service: str, prefix: str = "aigw") -> dict[str, object]:
    """The NATS permissions of ``service`` (a nats-server ``permissions`` object)."""
    s = Subjects(prefix)
    p = prefix
    usage, marks, kv = s.usage_stream, s.keys_marked_stream, f"KV_{s.keys_bucket}"
    inbox = f"_INBOX.{service}.>"
    # Subjects only one service may publish: denied explicitly to every other user, so a later
    # widening of an allow list cannot grant them by accident.
    single_writer = {
        "registry": [s.providers_changed, s.auth_revoked, s.directory_changed],
        "budget": [s.budget_state, s.budget("prices"), s.budget("reclaim"), s.budget("limits"),
                   s.budget("limits.reclaim")],
        "keypool": [f"$KV.{s.keys_bucket}.>", s.keys_exhausted],
        "gateway": [s.usage_all],
        "chatd": [f"{p}.chat.>"],
    }
    pub: list[str]
    sub: list[str]
    responds = False
    if service == "gateway":
        pub = [s.usage_all, s.keys_marked, s.keys_report, s.registry_snapshot, s.auth_verify,
               s.budget("lease"), s.budget_snapshot, s.budget("limits.lease"), s.budget("limits.snapshot"),
               # usage and marks streams: look up, create when missing (same definition as their owners);
               # never update, purge or delete
               *_js(usage, "INFO", "CREATE"), *_js(marks, "INFO", "CREATE"), *_js(kv, "INFO", "CREATE", "MSG.GET"),
               f"$JS.API.DIRECT.GET.{kv}.>", *_watch(kv)]
        sub = [s.providers_changed, s.auth_revoked, s.budget_state, s.budget("prices"), s.budget("reclaim"),
               s.budget("limits"), s.budget("limits.reclaim"), s.keys_exhausted, inbox]
    elif service == "registry":
        pub = [s.providers_changed, s.auth_revoked, s.directory_changed]
        sub = [s.registry_snapshot, s.auth_verify, s.registry_directory, s.registry_audit, inbox]
        responds = True
    elif service == "keypool":
        pub = [s.keys_exhausted, s.registry_snapshot, s.auth_verify, s.registry_audit, f"$KV.{s.keys_bucket}.>",
               *_js(marks, "INFO", "CREATE", "UPDATE"), *_durable(marks, s.durable("keypool")),
               *_js(kv, "INFO", "CREATE", "UPDATE", "MSG.GET"), f"$JS.API.DIRECT.GET.{kv}.>", *_watch(kv)]
        sub = [s.keys_report, s.providers_changed, s.auth_revoked, inbox]
        responds = True
    elif service == "budget":
        pub = [s.budget_state, s.budget("prices"), s.budget("reclaim"), s.budget("limits"), s.budget("limits.reclaim"),
               s.auth_verify, s.registry_directory,
               *_js(usage, "INFO", "CREATE", "UPDATE"), *_durable(usage, s.durable("budget_usage"))]
        sub = [f"{p}.budget.>", s.auth_revoked, s.directory_changed, inbox]
        responds = True
    elif service == "chatd":
        pub = [f"{p}.chat.>", s.registry_snapshot, s.auth_verify, s.registry_directory]
        sub = [f"{p}.chat.>", s.providers_changed, s.auth_revoked, inbox]
    else:
        raise ValueError(f"no NATS user for {service!r}")
    deny = sorted({subj for owner, subjects in single_writer.items() if owner != service for subj in subjects})
    out: dict[str, object] = {"publish": {"allow": pub, "deny": deny}, "subscribe": {"allow": sub}}
    if responds:
        # may publish to the reply subject of a request it received (once, within a minute), nothing else
        out["allow_responses"] = {"max": 1, "expires": "1m"}
    return out


def password_var(service: str) -> str:
    return f"NATS_{service.upper()}_PASSWORD"


def authorization_block(passwords: Mapping[str, str] | None = None, prefix: str = "aigw", indent: str = "") -> str:
    """``authorization { users = [...] }`` for nats-server; anonymous connections are refused.

    ``passwords`` None writes ``$NATS_<SERVICE>_PASSWORD`` references (resolved by nats-server from its
    environment); otherwise the given passwords, quoted.
    """
    lines = ["authorization {", "  users = ["]
    for svc in BUS_USERS:
        pw = f"${password_var(svc)}" if passwords is None else json.dumps(passwords[svc])
        perms = permissions(svc, prefix)
        lines += ["    {", f"      user: {svc}", f"      password: {pw}", "      permissions: {"]
        for direction in ("publish", "subscribe"):
            rules = perms[direction]
            assert isinstance(rules, dict)
            lines.append(f"        {direction}: {{")
            lines += [f"          {k}: {json.dumps(v)}" for k, v in rules.items()]
            lines.append("        }")
        if "allow_responses" in perms:
            lines.append(f"        allow_responses: {json.dumps(perms['allow_responses'])}")
        lines += ["      }", "    }"]
    lines += ["  ]", "}"]
    return "\n".join(indent + ln if ln else ln for ln in lines) + "\n"


def write_service_secrets(directory: Path, *, host: str = "nats:4222") -> list[Path]:
    """Per-service env files for Docker Compose (``aigw compose-secrets``): ``nats.env`` with every
    ``NATS_<SERVICE>_PASSWORD`` for the NATS container, and ``<service>.env`` with that service's own
    ``AIGW_NATS_URL`` (its user and password), its own bus signing key if it is a producer, the
    producers' public keys, ``AIGW_BUS_SEALING_KEYS`` for the services that hold it, and chatd's own
    ``AIGW_ENCRYPTION_KEYS`` (the registry's at-rest key stays in deploy/.env). Existing files are kept
    (rerunning never rotates a secret by accident)."""
    from .crypto import generate_key
    from .settings import holds
    from .signing import PRODUCERS, Signer, generate_keypair

    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    if (directory / "nats.env").exists():
        return []
    passwords = {u: secrets.token_urlsafe(24) for u in BUS_USERS}
    private = {p: generate_keypair()[0] for p in PRODUCERS}
    verify = ",".join(f"{p}:{Signer.from_b64(p, k).public_b64()}" for p, k in private.items())
    sealing = generate_key()
    files = {"nats.env": "".join(f"{password_var(u)}={pw}\n" for u, pw in passwords.items())}
    for u in BUS_USERS:
        lines = [f"AIGW_NATS_URL=nats://{u}:{passwords[u]}@{host}", f"AIGW_BUS_VERIFY_KEYS={verify}"]
        if u in private:
            lines.append(f"AIGW_{u.upper()}_SIGNING_KEY={private[u]}")
        if holds(u, "AIGW_BUS_SEALING_KEYS"):
            lines.append(f"AIGW_BUS_SEALING_KEYS={sealing}")
        if u == "chatd":
            lines.append(f"AIGW_ENCRYPTION_KEYS={generate_key()}")  # chatd's own, not the registry's
        files[f"{u}.env"] = "\n".join(lines) + "\n"
    out = []
    for name, text in files.items():
        path = directory / name
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        out.append(path)
    return out


__all__ = ["BUS_USERS", "authorization_block", "password_var", "permissions", "write_service_secrets"]
