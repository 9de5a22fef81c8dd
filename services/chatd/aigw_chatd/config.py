"""chatd's tunables that are not deployment configuration (tests shorten them)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ChatdConfig:
    max_attempts: int = 3  # per turn, across retries (and across replicas, if a runner dies)
    backoff_base: float = 0.5
    backoff_max: float = 8.0
    retry_after_cap: float = 10.0  # a Retry-After beyond this is not waited out inside a turn
    connect_timeout: float = 10.0
    read_timeout: float = 120.0  # silence on an open stream longer than this is a timeout
    control_timeout: float = 2.0  # registry snapshot and identity requests
    lease: float = 30.0  # a running turn's lease; the runner renews it every `heartbeat`
    heartbeat: float = 10.0
    sweep_interval: float = 15.0  # requeue turns of dead runners, start orphaned queues
    keepalive: float = 15.0  # SSE comment interval
    max_tokens: int = 4096
    summary: bool = True
    summary_timeout: float = 30.0
    summary_max_chars: int = 200
    owner_reconcile_interval: float = 600.0  # how often skills of users deleted while chatd was away are purged
