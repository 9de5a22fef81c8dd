"""A bounded on-disk spool for usage events that could not reach JetStream.

Events are appended as JSON lines to a segment file; when NATS is back the
recorder replays closed segments in order and deletes each once every event
in it is acknowledged (dedup ids make a replay after a crash harmless). When
the spool is full new events are dropped and counted — the bound keeps a long
outage from filling the disk.

Each gateway process spools into its own directory (``gateway-<id>``, a new id
per process) and holds an exclusive ``flock`` on ``<dir>/.lock`` while it runs.
A new spool adopts the segments of sibling directories whose lock is free (their
process is gone: stopped with NATS down, or crashed), so a restart replays them.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

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
        self._fh: BinaryIO | None = None
        self._current: Path | None = None
        self._size = 0
        self.dir.mkdir(parents=True, exist_ok=True)
        self._lock = _try_lock(self.dir)  # held while this spool is open: siblings see its process alive
        self.adopted = self._adopt_orphans()
        self._size = sum(p.stat().st_size for p in self.dir.glob("*.jsonl"))

    def _adopt_orphans(self) -> int:
        """Move into this spool the segments of sibling spools (``<prefix>-<id>``) whose process is gone."""
        prefix, sep, _ = self.dir.name.rpartition("-")
        if not sep:
            return 0
        moved = 0
        for other in sorted(self.dir.parent.glob(f"{prefix}-*")):
            if other == self.dir or not other.is_dir() or (fd := _try_lock(other)) is None:
                continue
            try:
                for seg in sorted(other.glob("*.jsonl")):
                    target = self.dir / seg.name.replace(".open", "")
                    seg.rename(target if not target.exists() else target.with_name(f"{time.time_ns():020d}.jsonl"))
                    moved += 1
                with contextlib.suppress(OSError):
                    (other / ".lock").unlink()
                    other.rmdir()
            finally:
                os.close(fd)
        if moved:
            log.warning("adopted usage spool segments of a gateway process that is gone", extra={"segments": moved})
        return moved

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
            self._fh = open(self._current, "ab")
        self._fh.write(line)
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._size += len(line)
        return True

    def _seal_current(self) -> None:
        if self._fh is not None and self._current is not None:
            self._fh.close()
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
        if self._lock is not None:
            os.close(self._lock)  # releases the flock: what is left here is adopted by the next process
            self._lock = None


def _try_lock(directory: Path) -> int | None:
    """An fd holding an exclusive flock on ``directory/.lock``, or None when a live process holds it."""
    try:
        fd = os.open(directory / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    except FileNotFoundError:  # removed by another process adopting it
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd
