"""AES-GCM sealing of secrets, with key rotation.

``AIGW_ENCRYPTION_KEYS`` is an ordered list of 32-byte keys: the first seals,
every one opens. A sealed value carries the id of the key that sealed it
(``v1.<kid>.<base64 nonce|ciphertext>``), so rotation (prepend a new key) keeps
old rows readable. Two purposes get separate keys derived with HKDF, so a
value sealed for the bus cannot be replayed into the database and vice versa.
"""

from __future__ import annotations

import base64
import hashlib
import os
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .errors import ConfigError, CryptoError

PURPOSE_AT_REST = b"aigw at-rest v1"
PURPOSE_BUS = b"aigw bus v1"


def key_id(master: bytes) -> str:
    """Stable, non-secret identifier of a master key."""
    return hashlib.sha256(b"aigw-kid:" + master).hexdigest()[:12]


def _derive(master: bytes, purpose: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=purpose).derive(master)


@dataclass(frozen=True, slots=True)
class Sealer:
    """Seals with the first key, opens with any; one instance per purpose."""

    purpose: bytes
    _keys: tuple[tuple[str, AESGCM], ...]

    @classmethod
    def from_keys(cls, masters: tuple[bytes, ...], purpose: bytes = PURPOSE_AT_REST) -> Sealer:
        if not masters:
            raise ConfigError("AIGW_ENCRYPTION_KEYS is required to seal secrets")
        return cls(purpose, tuple((key_id(m), AESGCM(_derive(m, purpose))) for m in masters))

    @property
    def current_key_id(self) -> str:
        return self._keys[0][0]

    def seal(self, plaintext: str | bytes, *, aad: bytes = b"") -> str:
        data = plaintext.encode() if isinstance(plaintext, str) else plaintext
        kid, aes = self._keys[0]
        nonce = os.urandom(12)
        ct = aes.encrypt(nonce, data, self.purpose + b"|" + aad)
        return f"v1.{kid}.{base64.urlsafe_b64encode(nonce + ct).decode().rstrip('=')}"

    def open_bytes(self, sealed: str, *, aad: bytes = b"") -> bytes:
        try:
            version, kid, blob = sealed.split(".", 2)
        except ValueError:
            raise CryptoError("malformed sealed value") from None
        if version != "v1":
            raise CryptoError(f"unknown sealed-value version {version!r}")
        for k, aes in self._keys:
            if k == kid:
                raw = base64.urlsafe_b64decode(blob + "=" * (-len(blob) % 4))
                try:
                    return aes.decrypt(raw[:12], raw[12:], self.purpose + b"|" + aad)
                except InvalidTag:
                    raise CryptoError(f"sealed value under key {kid} failed authentication") from None
        raise CryptoError(f"sealed with unknown key id {kid}; is AIGW_ENCRYPTION_KEYS missing an old key?")

    def open(self, sealed: str, *, aad: bytes = b"") -> str:
        return self.open_bytes(sealed, aad=aad).decode()

    def key_id_of(self, sealed: str) -> str:
        return sealed.split(".", 2)[1]


def generate_key() -> str:
    """A fresh base64 key for AIGW_ENCRYPTION_KEYS."""
    return base64.b64encode(os.urandom(32)).decode()


def hash_token(token: str) -> str:
    """Tokens are stored and looked up by SHA-256; they carry 256 bits of entropy so no salt is needed."""
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return "aigw_" + base64.urlsafe_b64encode(os.urandom(32)).decode().rstrip("=")


def mask_secret(secret: str) -> str:
    """A hint that identifies a key to a human without revealing it: ``sk-…abcd``."""
    s = secret.strip()
    if len(s) <= 8:
        return "…" + s[-2:] if len(s) > 4 else "****"
    prefix = s[:3] if s[:3] in {"sk-", "gsk", "xai"} else s[:2]
    return f"{prefix}…{s[-4:]}"
