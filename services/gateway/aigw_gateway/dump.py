"""API dumps for debugging a provider: every attempt's request and response, as sent and as streamed.

Files are ``<AIGW_DUMP_DIR>/<provider>/<interception>.<attempt>.request|response``: the 429 or 401 that
made a request fail over to the next key is there beside the answer that finally came back, and
pass-through routes are dumped too (their "interception" id is minted for the dump). Directories are
``0700`` and files ``0600`` (prompts are in them). Credentials are masked: auth headers by name, and any
header value holding a secret the gateway knows (the pool key, the user's key, and every provider setting
its type's record does not declare public: ``llm.Capabilities.public_settings``).

Nothing is held in memory: the relay hands each chunk to one writer thread through a queue bounded in
bytes; when the disk falls behind, the dump is cut (and says so) rather than the stream slowed or memory
grown. Each file is capped at ``AIGW_DUMP_MAX_BYTES / 16`` and all dumps together at
``AIGW_DUMP_MAX_BYTES``: the oldest finished files are deleted to make room.
"""

from __future__ import annotations

import collections
import logging
import os
import queue
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path

from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from aigw_common.llm import Capabilities

log = logging.getLogger(__name__)

MASKED_HEADERS = frozenset(h.lower() for h in (
    "Authorization", "Proxy-Authorization", "X-Api-Key", "Api-Key", "Cookie", "Set-Cookie", "X-AIGW-Token",
    "X-Amz-Security-Token", "Ocp-Apim-Subscription-Key", "X-Goog-Api-Key", "X-Functions-Key",
))
# A header or query parameter whose name says it carries a secret is masked whatever it is called exactly.
_SECRET_WORDS = ("key", "token", "secret", "password", "signature", "credential", "auth")
QUEUE_BYTES = 8 * 1024 * 1024  # chunks waiting for the writer thread, all dumps together
MIN_SECRET = 8  # shorter setting values are not treated as secrets to look for in headers


def mask_value(v: str) -> str:
    if len(v) <= 8:
        return "***"
    return v[:4] + "***" + v[-2:] if not v.lower().startswith("bearer ") else "Bearer ***" + v[-2:]


def secret_settings(cap: Capabilities, settings: Mapping[str, object]) -> tuple[str, ...]:
    """Values of provider settings to mask wherever they show up in a dumped header: all but those the
    type's record declares public (an allowlist: a secret field is masked whatever it is called, and so is
    a setting the record does not declare)."""
    public = cap.public_settings
    return tuple(v for k, v in settings.items() if isinstance(v, str) and len(v) >= MIN_SECRET and k not in public)


def _is_secret_name(name: str) -> bool:
    n = name.lower()
    return n in MASKED_HEADERS or any(w in n for w in _SECRET_WORDS)


def render_headers(headers: CIMultiDict[str] | CIMultiDictProxy[str], secrets: Iterable[str] = ()) -> str:
    secrets = tuple(s for s in secrets if s)
    lines = []
    for k, v in headers.items():
        if _is_secret_name(k) or any(s in v for s in secrets):
            v = mask_value(v)
        lines.append(f"{k}: {v}\n")
    return "".join(lines)


def render_url(url: URL | str) -> str:
    u = url if isinstance(url, URL) else URL(url)
    if not u.query_string:
        return str(u)
    return str(u.with_query([(k, mask_value(v) if _is_secret_name(k) else v) for k, v in u.query.items()]))


class _File:
    __slots__ = ("closed", "fd", "note", "path", "truncated", "written")

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd: int | None = None
        self.written = 0
        self.truncated = False
        self.closed = False
        self.note = ""


class DumpStore:
    """All dump files of one gateway process: the writer thread, the per-file and total bounds."""

    def __init__(self, base: Path, max_bytes: int, *, queue_bytes: int = QUEUE_BYTES) -> None:
        self.base = base
        self.max_bytes = max_bytes
        self.per_file = max(4096, max_bytes // 16)
        self.queue_bytes = queue_bytes
        self.used = 0  # bytes of dump files on disk (the writer thread's count)
        self._done: collections.deque[tuple[Path, int]] = collections.deque()  # finished files, oldest first
        self._q: queue.SimpleQueue[tuple[str, _File, bytes] | None] = queue.SimpleQueue()
        self._queued = 0
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._dirs: set[Path] = set()
        self.dropped = 0  # dumps cut because the writer fell behind

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self._ensure_dir(self.base)
        old = []
        for p in self.base.glob("*/*"):
            try:
                st = p.stat()
            except OSError:
                continue
            old.append((st.st_mtime, p, st.st_size))
        for _m, p, size in sorted(old):
            self._done.append((p, size))
            self.used += size
        self._thread = threading.Thread(target=self._run, name="api-dump-writer", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Write what is queued, close every file, stop the thread (blocking: call it in a thread)."""
        if self._thread is not None:
            self._q.put(None)
            self._thread.join(timeout)
            self._thread = None

    # ------------------------------------------------------------ producers (event loop)

    def attempt(self, provider: str, interception_id: str, n: int) -> AttemptDump:
        d = self.base / provider
        return AttemptDump(self, _File(d / f"{interception_id}.{n}.request"), _File(d / f"{interception_id}.{n}.response"))

    def _submit(self, op: str, f: _File, data: bytes = b"") -> bool:
        with self._lock:
            if data and self._queued + len(data) > self.queue_bytes:
                self.dropped += 1
                return False
            self._queued += len(data)
        self._q.put((op, f, data))
        return True

    # ------------------------------------------------------------ the writer thread

    def _run(self) -> None:
        while True:
            item = self._q.get()
            if item is None:
                return
            op, f, data = item
            with self._lock:
                self._queued -= len(data)
            try:
                if op == "write":
                    self._write(f, data)
                else:
                    self._close(f)
            except OSError as e:
                log.warning("api dump failed", extra={"path": str(f.path), "error": str(e)})
                f.truncated = True

    def _ensure_dir(self, d: Path) -> None:
        if d in self._dirs:
            return
        d.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(d, 0o700)
        self._dirs.add(d)

    def _open(self, f: _File) -> int:
        if f.fd is None:
            self._ensure_dir(f.path.parent)
            f.fd = os.open(f.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        return f.fd

    def _write(self, f: _File, data: bytes) -> None:
        if f.truncated or f.closed:
            return
        room = self.per_file - f.written
        if len(data) > room:
            data, f.truncated, f.note = data[:room], True, f"per-file limit of {self.per_file} bytes"
        if data and not self._make_room(len(data)):
            f.truncated, f.note = True, "AIGW_DUMP_MAX_BYTES reached"
            return
        fd = self._open(f)
        if data:
            os.write(fd, data)
            f.written += len(data)
            self.used += len(data)

    def _close(self, f: _File) -> None:
        if f.closed:
            return
        if f.truncated and f.note:
            marker = f"\n[dump truncated: {f.note}]\n".encode()
            if self._make_room(len(marker)):
                os.write(self._open(f), marker)
                f.written += len(marker)
                self.used += len(marker)
        elif f.fd is None:
            self._open(f)  # an empty body is still a file: the attempt happened
        if f.fd is not None:
            os.close(f.fd)
            f.fd = None
        f.closed = True
        self._done.append((f.path, f.written))

    def _make_room(self, n: int) -> bool:
        while self.used + n > self.max_bytes and self._done:
            path, size = self._done.popleft()
            try:
                path.unlink()
            except FileNotFoundError:
                pass
            self.used -= size
        return self.used + n <= self.max_bytes


class AttemptDump:
    """One upstream attempt: its request file and its response file, written as the bytes go by."""

    __slots__ = ("_cut", "request_file", "response_file", "store")

    def __init__(self, store: DumpStore, request_file: _File, response_file: _File) -> None:
        self.store = store
        self.request_file = request_file
        self.response_file = response_file
        self._cut = False

    def request(self, method: str, url: URL | str, headers: CIMultiDict[str] | CIMultiDictProxy[str], body: bytes,
                secrets: Iterable[str] = ()) -> None:
        head = f"{method} {render_url(url)}\n{render_headers(headers, secrets)}\n".encode()
        f = self.request_file
        if not (self.store._submit("write", f, head) and self.store._submit("write", f, body)):
            f.truncated, f.note = True, "the dump writer fell behind"
        self.store._submit("close", f)

    def response_head(self, status: int, headers: CIMultiDict[str] | CIMultiDictProxy[str],
                      secrets: Iterable[str] = ()) -> None:
        self.chunk(f"HTTP {status}\n{render_headers(headers, secrets)}\n".encode())

    def chunk(self, data: bytes) -> None:
        if self._cut or not data:
            return
        if not self.store._submit("write", self.response_file, data):
            self._cut = True
            self.response_file.truncated = True
            self.response_file.note = "the dump writer fell behind"

    def error(self, message: str) -> None:
        """The attempt got no answer (unreachable, timed out): say so in the response file."""
        self.chunk(f"[no response: {message}]\n".encode())

    def close(self) -> None:
        self.store._submit("close", self.response_file)
