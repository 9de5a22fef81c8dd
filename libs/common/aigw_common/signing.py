"""Proof of sender for bus messages that grant or change authority: Ed25519 signatures.

Each producing service (registry, budget, keypool) holds its own private key;
every service holds the producers' public keys. A receiver can therefore check
who sent a message but never forge one: a compromised gateway cannot answer
``auth.verify`` as the registry or write a key state as keypool.

What is signed (``signed_bytes``): a domain tag, the signer's name, the subject
the message travels on, a context (for a reply: the request subject; the reply
itself travels on the requester's unique inbox, so a captured reply cannot be
replayed to another request), a timestamp in milliseconds, and the exact
payload bytes. Core messages carry the proof in the ``Aigw-Sig`` header
(``<signer> <ts_ms> <base64url signature>``); values stored in a JetStream KV
bucket (which keeps no headers) are wrapped in a :class:`~aigw_common.schemas.SignedEntry`.

Which message needs whose signature is declared on the message type
(``signed_by`` in :mod:`aigw_common.schemas`), so a new authority-granting
message is covered by writing one line.
"""

from __future__ import annotations

import base64
import binascii
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

from .errors import ConfigError

# The services that sign what they publish; every other service only verifies.
PRODUCERS = ("registry", "budget", "keypool")
HEADER = "Aigw-Sig"
DOMAIN = b"aigw-bus-sig/v1"
# A broadcast or reply older (or further in the future) than this is refused: bounds the replay of a
# captured broadcast. Hosts are expected to run NTP; two minutes leaves room for sloppy clocks.
DEFAULT_MAX_AGE = 120.0


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _decode_key(var: str, raw: str) -> bytes:
    v = raw.strip()
    try:
        key = base64.b64decode(v, validate=True)
    except (binascii.Error, ValueError):
        try:
            key = _unb64(v)
        except (binascii.Error, ValueError):
            raise ConfigError(f"{var}: not base64") from None
    if len(key) != 32:
        raise ConfigError(f"{var}: decodes to {len(key)} bytes, expected a 32-byte Ed25519 key")
    return key


def signed_bytes(signer: str, subject: str, context: str, ts_ms: int, payload: bytes) -> bytes:
    """The exact bytes a signature covers (NUL-separated; subjects and names never hold NUL)."""
    return b"\0".join((DOMAIN, signer.encode(), subject.encode(), context.encode(), str(ts_ms).encode(), payload))


def generate_keypair() -> tuple[str, str]:
    """A new (private, public) pair, each as standard base64 of the raw 32 bytes."""
    priv = Ed25519PrivateKey.generate()
    raw_priv = priv.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    raw_pub = priv.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return base64.b64encode(raw_priv).decode(), base64.b64encode(raw_pub).decode()


@dataclass(frozen=True, slots=True)
class Signer:
    """One producer's private key."""

    name: str
    key: Ed25519PrivateKey = field(repr=False)

    @classmethod
    def from_b64(cls, name: str, raw: str, var: str = "signing key") -> Signer:
        return cls(name, Ed25519PrivateKey.from_private_bytes(_decode_key(var, raw)))

    def public_b64(self) -> str:
        return base64.b64encode(self.key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)).decode()

    def sign(self, subject: str, context: str, payload: bytes, ts_ms: int | None = None) -> tuple[int, str]:
        ts = int(time.time() * 1000) if ts_ms is None else ts_ms
        return ts, _b64(self.key.sign(signed_bytes(self.name, subject, context, ts, payload)))

    def header(self, subject: str, context: str, payload: bytes) -> str:
        ts, sig = self.sign(subject, context, payload)
        return f"{self.name} {ts} {sig}"


class Rejected(Exception):
    """A message failed its proof-of-sender check; ``reason`` is a short metric label."""

    def __init__(self, reason: str, claimed: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.claimed = claimed


@dataclass(frozen=True, slots=True)
class Verifier:
    """The producers' public keys (several per producer while one is being rotated)."""

    keys: Mapping[str, tuple[Ed25519PublicKey, ...]] = field(default_factory=dict, repr=False)
    max_age: float = DEFAULT_MAX_AGE

    @classmethod
    def from_pairs(cls, pairs: Iterable[tuple[str, str]], var: str = "verify keys",
                   max_age: float = DEFAULT_MAX_AGE) -> Verifier:
        keys: dict[str, list[Ed25519PublicKey]] = {}
        for name, raw in pairs:
            keys.setdefault(name, []).append(Ed25519PublicKey.from_public_bytes(_decode_key(f"{var} ({name})", raw)))
        return cls({k: tuple(v) for k, v in keys.items()}, max_age)

    def knows(self, name: str) -> bool:
        return bool(self.keys.get(name))

    def check(self, expected: str, subject: str, context: str, payload: bytes, signer: str, ts_ms: int, sig: str,
              *, max_age: float | None = None, now: float | None = None) -> None:
        """Raise :class:`Rejected` unless ``sig`` is ``expected``'s signature over these bytes.

        ``max_age`` None uses the verifier's bound; 0 disables the age check (stored values).
        """
        claimed = signer if signer in PRODUCERS else "other"
        if signer != expected:
            raise Rejected("wrong_signer", claimed)
        bound = self.max_age if max_age is None else max_age
        if bound:
            age = (time.time() if now is None else now) - ts_ms / 1000.0
            if abs(age) > bound:
                raise Rejected("expired", claimed)
        try:
            raw = _unb64(sig)
        except (binascii.Error, ValueError):
            raise Rejected("malformed", claimed) from None
        data = signed_bytes(signer, subject, context, ts_ms, payload)
        for key in self.keys.get(expected, ()):
            try:
                key.verify(raw, data)
                return
            except InvalidSignature:
                continue
        raise Rejected("bad_signature" if self.keys.get(expected) else "no_key", claimed)

    def check_header(self, expected: str, header: str | None, subject: str, context: str, payload: bytes) -> None:
        if not header:
            raise Rejected("unsigned")
        parts = header.split(" ")
        if len(parts) != 3 or not parts[1].isdigit() or len(parts[1]) > 15:
            raise Rejected("malformed")
        self.check(expected, subject, context, payload, parts[0], int(parts[1]), parts[2])


def parse_verify_keys(var: str, raw: str) -> tuple[tuple[str, str], ...]:
    """``registry:<b64>,budget:<b64>,keypool:<b64>`` (a name may repeat during a rotation)."""
    out = []
    for i, part in enumerate(p.strip() for p in raw.split(",")):
        if not part:
            continue
        name, sep, key = part.partition(":")
        name = name.strip()
        if not sep or name not in PRODUCERS:
            raise ConfigError(f"{var}: entry {i} must be <{'|'.join(PRODUCERS)}>:<base64 Ed25519 public key>")
        _decode_key(f"{var} ({name})", key)
        out.append((name, key.strip()))
    if not out:
        raise ConfigError(f"{var} is set but holds no key")
    return tuple(out)


def check_private_key(var: str, raw: str) -> str:
    _decode_key(var, raw)
    return raw.strip()


__all__ = ["DEFAULT_MAX_AGE", "HEADER", "PRODUCERS", "Rejected", "Signer", "Verifier", "generate_keypair",
           "parse_verify_keys", "signed_bytes"]
