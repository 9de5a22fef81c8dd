"""CPU-time sampling of a benchmarked proxy (``python -m bench.run --cpu-profile DIR``), loaded through PYTHONPATH.

py-spy samples wall-clock time: a thread preempted at the end of a socket write (what a shared core does when
the write wakes another process) is sampled "in the write" for as long as it waits, so py-spy showed ~55 % of
the gateway in ``_writelines`` while ``perf`` put 7 % of its CPU in the kernel. ``ITIMER_PROF`` ticks on the
process's CPU time only, so these samples share out what a request really costs. Active only in the process
named by ``BENCH_CPUPROF_MATCH`` (the gateway, the bare proxy); the bench sends ``SIGRTMIN+1`` to sample
during its cells and ``SIGRTMIN+2`` to pause; collapsed stacks go to ``BENCH_CPUPROF_DIR`` at exit.
"""

from __future__ import annotations

import os

_DIR = os.environ.get("BENCH_CPUPROF_DIR")
if _DIR:
    _cmd = open("/proc/self/cmdline", "rb").read().split(b"\0")  # noqa: SIM115 - read once at start-up
    _names = {"gateway": (b"aigw_common.cli", b"gateway"), "bare": (b"bench.servers", b"bare")}
    _kind = next((k for k, need in _names.items() if all(n in _cmd for n in need)), None)
    if _kind is not None:
        import atexit
        import collections
        import signal
        import types

        _counts: collections.Counter[tuple[tuple[str, str, int], ...]] = collections.Counter()

        def _sample(_signum: int, frame: types.FrameType | None) -> None:
            stack = []
            while frame is not None:
                c = frame.f_code
                stack.append((c.co_filename, c.co_name, c.co_firstlineno))
                frame = frame.f_back
            _counts[tuple(stack)] += 1

        def _start(_signum: int, _frame: object) -> None:
            signal.setitimer(signal.ITIMER_PROF, 0.001, 0.001)

        def _pause(_signum: int, _frame: object) -> None:
            signal.setitimer(signal.ITIMER_PROF, 0, 0)

        def _dump() -> None:
            if not _counts:
                return
            with open(os.path.join(_DIR, f"{_kind}-{os.getpid()}.txt"), "w") as out:
                for stack, n in _counts.items():
                    frames = ";".join(f"{name} ({path.rsplit('/', 1)[-1]}:{line})" for path, name, line in reversed(stack))
                    out.write(f"{frames} {n}\n")

        signal.signal(signal.SIGPROF, _sample)
        signal.signal(signal.SIGRTMIN + 1, _start)
        signal.signal(signal.SIGRTMIN + 2, _pause)
        atexit.register(_dump)
