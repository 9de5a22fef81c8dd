"""Shared by the security tests: every log record of the process, as the production formatter writes it."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from aigw_common.logging import JsonFormatter


class Logs(logging.Handler):
    """Keeps every record, and its line as ``JsonFormatter`` (what a deployment writes) renders it."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(JsonFormatter("test"))
        self.records: list[logging.LogRecord] = []
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        self.lines.append(self.format(record))

    def errors(self, logger: str) -> list[str]:
        """Warnings and worse of ``logger`` (and its children), with their ``error`` field."""
        return [f"{r.getMessage()} {getattr(r, 'error', '')}" for r in self.records
                if r.name.startswith(logger) and r.levelno >= logging.WARNING]


@pytest.fixture
def logs() -> Iterator[Logs]:
    h = Logs()
    root = logging.getLogger()
    old = root.level
    root.addHandler(h)
    root.setLevel(logging.DEBUG)
    yield h
    root.removeHandler(h)
    root.setLevel(old)
