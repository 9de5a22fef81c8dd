"""CPU accounting from ``/proc``: what one process, or a whole process tree, has spent.

A tree's figure is the CPU time of every live process in it — from each
thread's ``schedstat`` (nanoseconds: a request costs a fraction of the 10 ms
clock tick ``stat`` counts in) — plus the time of the children each has
already reaped (``cutime``/``cstime``, in ticks), so a Postgres backend or a
gateway worker that exited during the run still counts.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path

CLK = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _children_map() -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit() and (f := _stat(int(d))) is not None:
            out.setdefault(int(f[1]), []).append(int(d))
    return out


def tree(root: int) -> list[int]:
    """``root`` and every descendant alive now."""
    kids = _children_map()
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(kids.get(pid, ()))
    return out


def _thread_ns(pid: int) -> int | None:
    """CPU nanoseconds of the live threads of ``pid`` (None when it is gone or schedstat is unavailable)."""
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return None
    total = 0
    for tid in tids:
        try:
            total += int(Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue  # the thread ended in between
    return total


def cpu_seconds(pids: Iterable[int]) -> float:
    """CPU time of these processes (their threads' schedstat) and of the children they reaped."""
    total = 0.0
    for pid in pids:
        f = _stat(pid)
        if f is None:
            continue
        ns = _thread_ns(pid)  # fields after the name: 11 utime, 12 stime, 13 cutime, 14 cstime
        own = ns / 1e9 if ns is not None else (int(f[11]) + int(f[12])) / CLK
        total += own + (int(f[13]) + int(f[14])) / CLK
    return total


def tree_cpu(roots: Iterable[int]) -> float:
    return cpu_seconds(p for r in roots for p in tree(r))


def threads(roots: Iterable[int]) -> Iterator[int]:
    """Every thread id of these process trees, alive now."""
    for r in roots:
        for pid in tree(r):
            try:
                yield from (int(t) for t in os.listdir(f"/proc/{pid}/task"))
            except OSError:
                continue  # exited in between


def pin(roots: Iterable[int], cores: set[int]) -> None:
    """Move every thread of these trees onto ``cores`` (what ``taskset -a -p`` does)."""
    for tid in threads(roots):
        try:
            os.sched_setaffinity(tid, cores)
        except OSError:
            pass  # exited in between: nothing to pin


def renice(roots: Iterable[int], niceness: int) -> None:
    """Give every thread of these trees this nice value (Linux: per thread; raising it needs no privilege)."""
    for tid in threads(roots):
        try:
            os.setpriority(os.PRIO_PROCESS, tid, niceness)
        except OSError:
            pass  # exited in between
