"""AWS Signature Version 4, written against the AWS spec, plus the usual credential chain.

Why our own: the gateway signs one request shape (a Bedrock runtime POST with a
JSON body) on the hot path, and botocore would pull a large dependency into the
service for a few HMACs. The implementation follows
https://docs.aws.amazon.com/IAM/latest/UserGuide/create-signed-request.html and
is checked byte for byte against AWS's published SigV4 test suite and against
botocore's signer (tests only).

Steps: canonical request → string to sign → signing key (HMAC chain over date,
region, service, ``aws4_request``) → signature. Signed headers are ``host``,
``x-amz-date``, ``x-amz-content-sha256`` (the payload hash, which Bedrock
accepts and which lets the server verify the body), ``content-type`` and,
for temporary credentials, ``x-amz-security-token``.

Credential chain (when a provider has no access key of its own): the
environment (``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` /
``AWS_SESSION_TOKEN``), then the shared credentials file
(``AWS_SHARED_CREDENTIALS_FILE`` or ``~/.aws/credentials``, profile
``AWS_PROFILE`` or ``default``). Not supported: IMDS / ECS task roles, IRSA web
identity, SSO, ``credential_process`` and ``~/.aws/config`` role assumption —
those need STS round trips; run the gateway with static or env credentials (or a
sidecar that writes the credentials file) instead.
"""

from __future__ import annotations

import configparser
import datetime as _dt
import hashlib
import hmac
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, unquote

from aigw_common.errors import AigwError

ALGORITHM = "AWS4-HMAC-SHA256"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


class CredentialsError(AigwError):
    """No usable AWS credentials (neither configured nor found in the chain)."""


@dataclass(frozen=True, slots=True)
class Credentials:
    access_key: str
    secret_key: str = field(repr=False)
    session_token: str | None = field(default=None, repr=False)
    source: str = "static"  # "static" | "env" | "shared-file:<profile>", for logs and errors


# ---------------------------------------------------------------- canonical request


def _uri_encode(text: str, *, keep_slash: bool) -> str:
    # RFC 3986 unreserved characters stay; everything else is %XX of its UTF-8 bytes (upper-case hex).
    return quote(text, safe="/~" if keep_slash else "~")


def canonical_uri(raw_path: str) -> str:
    """The path as sent on the wire, URI-encoded once more (every service but S3 double-encodes)."""
    return _uri_encode(raw_path or "/", keep_slash=True)


def canonical_query(raw_query: str) -> str:
    """Decode each pair, re-encode strictly, sort by key then value."""
    if not raw_query:
        return ""
    pairs = []
    for part in raw_query.split("&"):
        if not part:
            continue
        k, _, v = part.partition("=")
        pairs.append((_uri_encode(unquote(k), keep_slash=False), _uri_encode(unquote(v), keep_slash=False)))
    pairs.sort()
    return "&".join(f"{k}={v}" for k, v in pairs)


def _trim(value: str) -> str:
    return " ".join(value.strip().split())


def canonical_headers(headers: Iterable[tuple[str, str]]) -> tuple[str, str]:
    """``(canonical header block, signed header list)``; repeated names join their values with commas in order."""
    merged: dict[str, list[str]] = {}
    for name, value in headers:
        merged.setdefault(name.strip().lower(), []).append(_trim(value))
    names = sorted(merged)
    block = "".join(f"{n}:{','.join(merged[n])}\n" for n in names)
    return block, ";".join(names)


def canonical_request(
    method: str, raw_path: str, raw_query: str, headers: Iterable[tuple[str, str]], payload_hash: str
) -> tuple[str, str]:
    block, signed = canonical_headers(headers)
    creq = "\n".join(
        (method.upper(), canonical_uri(raw_path), canonical_query(raw_query), block, signed, payload_hash)
    )
    return creq, signed


def string_to_sign(amz_date: str, scope: str, creq: str) -> str:
    return "\n".join((ALGORITHM, amz_date, scope, hashlib.sha256(creq.encode()).hexdigest()))


def signing_key(secret_key: str, date: str, region: str, service: str) -> bytes:
    k = ("AWS4" + secret_key).encode()
    for part in (date, region, service, "aws4_request"):
        k = hmac.new(k, part.encode(), hashlib.sha256).digest()
    return k


def amz_date(now: float) -> str:
    return _dt.datetime.fromtimestamp(now, _dt.UTC).strftime("%Y%m%dT%H%M%SZ")


def signature(
    secret_key: str,
    *,
    region: str,
    service: str,
    method: str,
    raw_path: str,
    raw_query: str,
    headers: Iterable[tuple[str, str]],
    payload_hash: str,
    date: str,
) -> tuple[str, str]:
    """``(hex signature, signed header list)`` for headers that already include ``x-amz-date``."""
    creq, signed = canonical_request(method, raw_path, raw_query, headers, payload_hash)
    scope = f"{date[:8]}/{region}/{service}/aws4_request"
    sts = string_to_sign(date, scope, creq)
    sig = hmac.new(signing_key(secret_key, date[:8], region, service), sts.encode(), hashlib.sha256).hexdigest()
    return sig, signed


def sign_headers(
    creds: Credentials,
    *,
    region: str,
    service: str,
    method: str,
    host: str,
    raw_path: str,
    raw_query: str = "",
    body: bytes = b"",
    extra: Mapping[str, str] | None = None,
    now: float | None = None,
) -> dict[str, str]:
    """The headers to add to a request so AWS accepts it: x-amz-date, x-amz-content-sha256,
    x-amz-security-token (temporary credentials), Authorization. ``extra`` headers are signed
    too and must be sent unchanged (e.g. content-type)."""
    date = amz_date(time.time() if now is None else now)
    payload_hash = hashlib.sha256(body).hexdigest()
    out = {"x-amz-date": date, "x-amz-content-sha256": payload_hash}
    if creds.session_token:
        out["x-amz-security-token"] = creds.session_token
    to_sign = [("host", host), *out.items(), *(extra or {}).items()]
    sig, signed = signature(
        creds.secret_key, region=region, service=service, method=method, raw_path=raw_path,
        raw_query=raw_query, headers=to_sign, payload_hash=payload_hash, date=date,
    )
    out["authorization"] = (
        f"{ALGORITHM} Credential={creds.access_key}/{date[:8]}/{region}/{service}/aws4_request, "
        f"SignedHeaders={signed}, Signature={sig}"
    )
    return out


# ---------------------------------------------------------------- verification (the mock Bedrock uses this)


@dataclass(frozen=True, slots=True)
class ParsedAuthorization:
    access_key: str
    date: str
    region: str
    service: str
    signed_headers: tuple[str, ...]
    signature: str


def parse_authorization(value: str) -> ParsedAuthorization:
    """Parse ``AWS4-HMAC-SHA256 Credential=…, SignedHeaders=…, Signature=…``; ValueError when malformed."""
    algo, _, rest = value.strip().partition(" ")
    if algo != ALGORITHM:
        raise ValueError(f"unsupported algorithm {algo!r}")
    parts = {}
    for item in rest.split(","):
        k, sep, v = item.strip().partition("=")
        if not sep:
            raise ValueError(f"malformed authorization component {item.strip()!r}")
        parts[k] = v
    try:
        access_key, date, region, service, term = parts["Credential"].split("/")
        signed = tuple(parts["SignedHeaders"].split(";"))
        sig = parts["Signature"]
    except (KeyError, ValueError):
        raise ValueError("authorization lacks Credential, SignedHeaders or Signature") from None
    if term != "aws4_request":
        raise ValueError("credential scope must end in aws4_request")
    return ParsedAuthorization(access_key, date, region, service, signed, sig)


def verify(
    secret_key: str,
    auth: ParsedAuthorization,
    *,
    method: str,
    raw_path: str,
    raw_query: str,
    headers: Iterable[tuple[str, str]],
    body: bytes,
) -> bool:
    """Recompute the signature the way AWS does (from the signed headers as received) and compare."""
    wanted = set(auth.signed_headers)
    picked = [(k, v) for k, v in headers if k.lower() in wanted]
    date = next((v for k, v in picked if k.lower() == "x-amz-date"), "")
    if not date or date[:8] != auth.date or {k.lower() for k, _ in picked} != wanted:
        return False
    payload_hash = hashlib.sha256(body).hexdigest()
    declared = next((v for k, v in picked if k.lower() == "x-amz-content-sha256"), payload_hash)
    if declared != payload_hash:
        return False
    sig, _ = signature(
        secret_key, region=auth.region, service=auth.service, method=method, raw_path=raw_path,
        raw_query=raw_query, headers=picked, payload_hash=payload_hash, date=date,
    )
    return hmac.compare_digest(sig, auth.signature)


# ---------------------------------------------------------------- credential chain


class CredentialChain:
    """Static credentials when the provider has them, else env, else the shared credentials file.

    The file is re-read when its mtime changes (checked at most every ``recheck`` seconds), so
    a sidecar that rotates it is picked up without a restart and the hot path does no I/O.
    """

    def __init__(
        self,
        static: Credentials | None,
        aws_env: Mapping[str, str],  # Settings.aws_env
        *,
        home: Path | None = None,
        recheck: float = 30.0,
    ) -> None:
        self._static = static
        self._env = aws_env
        self._home = home
        self._recheck = recheck
        self._cached: Credentials | None = None
        self._checked_at = 0.0
        self._mtime: float | None = None

    def _file(self) -> Path:
        if p := self._env.get("AWS_SHARED_CREDENTIALS_FILE"):
            return Path(p).expanduser()
        return (self._home or Path.home()) / ".aws" / "credentials"

    def get(self) -> Credentials:
        if self._static is not None:
            return self._static
        key, secret = self._env.get("AWS_ACCESS_KEY_ID"), self._env.get("AWS_SECRET_ACCESS_KEY")
        if key and secret:
            return Credentials(key, secret, self._env.get("AWS_SESSION_TOKEN") or None, "env")
        now = time.monotonic()
        if self._cached is not None and now - self._checked_at < self._recheck:
            return self._cached
        self._checked_at = now
        path = self._file()
        try:
            mtime = path.stat().st_mtime
        except OSError:
            self._cached = None
            raise CredentialsError(
                "no AWS credentials: set the provider's access key and secret, AWS_ACCESS_KEY_ID and "
                f"AWS_SECRET_ACCESS_KEY, or a shared credentials file ({path} not found)"
            ) from None
        if self._cached is None or mtime != self._mtime:
            self._cached = read_shared_credentials(path, self._env.get("AWS_PROFILE") or "default")
            self._mtime = mtime
        return self._cached


def read_shared_credentials(path: Path, profile: str) -> Credentials:
    parser = configparser.RawConfigParser()
    try:
        with path.open(encoding="utf-8") as f:
            parser.read_file(f)
    except (OSError, configparser.Error) as e:
        raise CredentialsError(f"cannot read AWS shared credentials file {path}: {e}") from None
    if not parser.has_section(profile):
        raise CredentialsError(f"AWS shared credentials file {path} has no profile [{profile}]")
    sec = parser[profile]
    key, secret = sec.get("aws_access_key_id", "").strip(), sec.get("aws_secret_access_key", "").strip()
    if not key or not secret:
        raise CredentialsError(
            f"profile [{profile}] in {path} lacks aws_access_key_id/aws_secret_access_key "
            "(SSO, role assumption and credential_process are not supported)"
        )
    token = sec.get("aws_session_token", "").strip() or None
    return Credentials(key, secret, token, f"shared-file:{profile}")

