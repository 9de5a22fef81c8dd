"""Map database failures onto AigwError so the consumer can choose nak (retryable) or term."""

from __future__ import annotations

from aigw_common.db import DB_ERRORS, is_transient
from aigw_common.errors import AigwError, DatabaseUnavailable

__all__ = ["DB_ERRORS", "RecordError", "classify"]


class RecordError(AigwError):
    """The database refused an event's data (not a connectivity problem): retrying will not help."""

    retryable = False


def classify(exc: BaseException) -> AigwError:
    """Turn one of DB_ERRORS into DatabaseUnavailable (retryable) or RecordError (not)."""
    if is_transient(exc):
        return DatabaseUnavailable(f"database unavailable: {type(exc).__name__}: {exc}")
    return RecordError(f"database rejected the data: {type(exc).__name__}: {exc}")
