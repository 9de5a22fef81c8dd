"""A bounded on-disk spool for usage events that could not reach JetStream.

Events are appended as JSON lines to a segment file; when NATS is back the
recorder replays closed segments in order and deletes each once every event
in it is acknowledged (dedup ids make a replay after a crash harmless). When
the spool is full new events are dropped and counted — the bound keeps a long
outage from filling the disk.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path

import msgspec

log = logging.getLogger(__name__)


class SpoolRecord(msgspec.Struct, frozen=True):
    subject: str
    msg_id: str
    data: msgspec.Raw


_enc = msgspec.json.Encoder()
_dec = msgspec.json.Decoder(SpoolRecord)


class Spool:
    def __init__(self, directory: Path, max_bytes: int) -> None:
        self.dir = directory
        self.max_bytes = max_bytes
        self.dropped = 0
        self._fh: object | None = None
        self._current: Path | None = None
        self._size = 0
        self.dir.mkdir(parents=True, exist_ok=True)
        self._size = sum(p.stat().st_size for p in self.dir.glob("*.jsonl"))

    @property
    def size(self) -> int:
        return self._size

    def pending(self) -> bool:
        return self._size > 0

    def append(self, subject: str, msg_id: str, data: bytes) -> bool:
        line = _enc.encode(SpoolRecord(subject, msg_id, msgspec.Raw(data))) + b"\n"
        if self._size + len(line) > self.max_bytes:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.error("usage spool full; dropping events", extra={"dropped": self.dropped, "max_bytes": self.max_bytes})
            return False
        if self._fh is None:
            self._current = self.dir / f"{time.time_ns():020d}.open.jsonl"
            self._fh = open(self._current, "ab")  # noqa: SIM115 - kept open across appends
        self._fh.write(line)  # type: ignore[attr-defined]
        self._fh.flush()  # type: ignore[attr-defined]
        os.fsync(self._fh.fileno())  # type: ignore[attr-defined]
        self._size += len(line)
        return True

    def _seal_current(self) -> None:
        if self._fh is not None and self._current is not None:
            self._fh.close()  # type: ignore[attr-defined]
            self._current.rename(self._current.with_name(self._current.name.replace(".open", "")))
            self._fh, self._current = None, None

    def segments(self) -> list[Path]:
        """Closed segments, oldest first (the open one is sealed first; leftovers of a crash included)."""
        self._seal_current()
        for p in self.dir.glob("*.open.jsonl"):
            p.rename(p.with_name(p.name.replace(".open", "")))
        return sorted(self.dir.glob("*.jsonl"))

    @staticmethod
    def read(segment: Path) -> Iterator[SpoolRecord]:
        with open(segment, "rb") as f:
            for line in f:
                if line.strip():
                    try:
                        yield _dec.decode(line)
                    except msgspec.DecodeError:
                        log.error("skipping a corrupt spool line", extra={"segment": segment.name})

    def done(self, segment: Path) -> None:
        size = segment.stat().st_size
        segment.unlink()
        self._size = max(0, self._size - size)

    def close(self) -> None:
        self._seal_current()
