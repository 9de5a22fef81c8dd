"""Budget admission in the gateway (placeholder: admits everything; the budget service work replaces the internals)."""

from __future__ import annotations

from dataclasses import dataclass

from aigw_common.bus import Bus
from aigw_common.metrics import CollectorRegistry
from aigw_common.schemas import Identity, TokenCounts
from aigw_common.settings import Settings

from .usage import RequestInfo


@dataclass(slots=True)
class Admission:
    allowed: bool
    reservation_micros: int = 0
    message: str = ""
    retry_after: float | None = None
    token: object = None


class BudgetGuard:
    def __init__(self, bus: Bus, settings: Settings, registry: CollectorRegistry) -> None:
        self.bus = bus

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    def admit(self, identity: Identity | None, provider_name: str, model: str, info: RequestInfo) -> Admission:
        return Admission(True)

    def settle(self, admission: Admission, model: str, tokens: TokenCounts | None) -> None:
        return None
