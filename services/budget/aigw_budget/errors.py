"""Map database failures onto AigwError so the consumer can choose nak (retryable) or term."""

from __future__ import annotations

import asyncpg

from aigw_common.errors import AigwError, DatabaseUnavailable

# Failures that say "the database is not there right now" or "try the same thing again".
_TRANSIENT: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
    asyncpg.AdminShutdownError,
    asyncpg.QueryCanceledError,
    asyncpg.TransactionRollbackError,  # deadlock, serialization failure
)


class RecordError(AigwError):
    """The database refused an event's data (not a connectivity problem): retrying will not help."""

    retryable = False


# Everything a database call can raise; catch these, then classify.
DB_ERRORS: tuple[type[BaseException], ...] = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)


def classify(exc: BaseException) -> AigwError:
    """Turn one of DB_ERRORS into DatabaseUnavailable (retryable) or RecordError (not)."""
    if isinstance(exc, _TRANSIENT):
        return DatabaseUnavailable(f"database unavailable: {type(exc).__name__}: {exc}")
    return RecordError(f"database rejected the data: {type(exc).__name__}: {exc}")
