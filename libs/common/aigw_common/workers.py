"""Several processes of one service on one port: ``AIGW_GATEWAY_WORKERS=N``.

One Python process serves on one core. With N > 1, ``aigw gateway`` becomes a
supervisor that starts N worker processes (``python -m aigw_common.workers
gateway``); each binds the same address with ``SO_REUSEPORT``, so the kernel
spreads connections over them, and each has its own event loop, identity
cache, budget leases, key-state watch and usage spool (spools are per process
already, and a dead worker's spool is adopted by the next one to start).

The supervisor restarts a worker that dies (at most once a second per slot, so
a worker that cannot start does not spin), and on SIGTERM/SIGINT sends SIGTERM
to every worker and waits for each to drain (the service's shutdown grace plus
a margin) before killing what is left. It holds no socket itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import subprocess
import sys
import time
from collections.abc import Mapping

from .embedded import die_with_parent, stop_process
from .settings import Settings

log = logging.getLogger(__name__)

RESTART_INTERVAL = 1.0  # a slot's worker is restarted at most this often


class Supervisor:
    def __init__(self, service: str, settings: Settings, env: Mapping[str, str], n: int) -> None:
        self.service = service
        self.settings = settings
        self.env = dict(env)
        self.n = n
        self.procs: list[subprocess.Popen[bytes] | None] = [None] * n
        self.restarts = 0

    def _spawn(self, slot: int) -> subprocess.Popen[bytes]:
        cmd = [sys.executable, "-m", "aigw_common.workers", self.service, str(slot)]
        p = subprocess.Popen(cmd, env=self.env, stdin=subprocess.DEVNULL,
                             preexec_fn=die_with_parent(signal.SIGTERM))
        log.info("worker started", extra={"service": self.service, "slot": slot, "pid": p.pid})
        return p

    async def run(self, stop: asyncio.Event) -> int:
        started = [0.0] * self.n
        try:  # a spawn that fails stops the workers started before it (the finally)
            for i in range(self.n):
                self.procs[i], started[i] = self._spawn(i), time.monotonic()
            while not stop.is_set():
                for i, p in enumerate(self.procs):
                    if p is not None and p.poll() is not None and not stop.is_set():
                        log.error("worker exited; restarting", extra={"service": self.service, "slot": i,
                                                                       "pid": p.pid, "code": p.returncode})
                        await asyncio.sleep(max(0.0, started[i] + RESTART_INTERVAL - time.monotonic()))
                        self.procs[i], started[i] = self._spawn(i), time.monotonic()
                        self.restarts += 1
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(0.2):
                        await stop.wait()
        finally:
            grace = self.settings.shutdown_grace + 5.0
            await asyncio.gather(*(stop_process(p, signal.SIGTERM, grace, f"{self.service} worker")
                                   for p in self.procs if p is not None))
        return 0


async def supervise(service: str, settings: Settings, env: Mapping[str, str], n: int) -> int:
    """Run ``n`` workers of ``service`` until SIGTERM/SIGINT; returns the exit code."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info("supervising workers", extra={"service": service, "workers": n})
    return await Supervisor(service, settings, env, n).run(stop)


def worker_main(argv: list[str]) -> int:
    """Entry of one worker: the service as ``aigw <service>`` runs it, its listener shared by port."""
    import os

    from .cli import run_service
    from .logging import setup_logging

    service, slot = argv[0], int(argv[1])
    settings = Settings.from_env(os.environ)
    setup_logging(f"{service}-{slot}", fmt=settings.log_format, level=settings.log_level)
    return run_service(service, settings, reuse_port=True)


if __name__ == "__main__":
    sys.exit(worker_main(sys.argv[1:]))
