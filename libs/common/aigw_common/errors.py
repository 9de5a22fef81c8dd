"""One root error for aigw.

Every error we raise on purpose derives from :class:`AigwError`. ``retryable``
tells a bus consumer what to do with the message that caused it: retryable →
nak with a delay, not retryable → term (dead-letter with a log line).
"""

from __future__ import annotations


class AigwError(Exception):
    """Root of every aigw error."""

    retryable: bool = False

    def __init__(self, message: str, *, retryable: bool | None = None) -> None:
        super().__init__(message)
        self.message = message
        if retryable is not None:
            self.retryable = retryable


class ConfigError(AigwError):
    """Configuration is invalid; raised at startup before any socket opens."""


class BusError(AigwError):
    """A bus operation failed (NATS unreachable, timeout, no responder)."""

    retryable = True


class RemoteError(BusError):
    """The responder answered a request with an error (a ``bus.error`` reply) instead of the reply asked for.

    ``code`` is the responder's classification (``unavailable``, ``refused``, ``bad_request``,
    ``internal``); ``retryable`` is what the responder said about asking again.
    """

    def __init__(self, message: str, *, code: str, retryable: bool) -> None:
        super().__init__(message, retryable=retryable)
        self.code = code


class PayloadTooLarge(BusError):
    """A message is larger than the NATS server's ``max_payload``: sending it again will never work."""

    retryable = False


class DecodeError(AigwError):
    """A message could not be decoded into its schema: poison, never retried."""

    retryable = False


class UnsupportedVersion(DecodeError):
    """A message of a breaking version (its ``v``) this code does not read. Not poison: a replica that
    knows the version (the rest of a rolling upgrade) can read it, so a stream consumer redelivers it."""

    retryable = True

    def __init__(self, kind: str, v: int, known: int) -> None:
        super().__init__(f"{kind} v{v} is newer than this version reads (v{known}): upgrade this service")
        self.kind = kind
        self.v = v


class CryptoError(AigwError):
    """A sealed value could not be opened (wrong key, tampered, unknown key id)."""


class DatabaseUnavailable(AigwError):
    """Postgres is unreachable; the operation may succeed later."""

    retryable = True


class MigrationError(AigwError):
    """A schema migration failed to apply."""
