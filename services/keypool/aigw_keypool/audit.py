"""Audit of keypool's admin actions (key resets), in the registry's audit log.

The registry's ``audit_logs`` table is the one place an operator reads who did
what (``GET /api/v2/audit-logs``), so a reset is recorded there too, beside the
key's other changes. keypool writes no table of another service: it sends the
record to the registry on ``aigw.registry.audit`` (signed with keypool's bus key;
the registry writes it and acknowledges). A record that cannot be delivered is
still logged in full (``aigw.audit`` logger), so nothing is lost silently.
"""

from __future__ import annotations

import logging
from typing import Any

import msgspec

from aigw_common.bus import Bus
from aigw_common.errors import BusError, DecodeError
from aigw_common.schemas import AuditAck, AuditRecord, Identity

log = logging.getLogger("aigw.audit")


class AuditLog:
    def __init__(self, bus: Bus, *, timeout: float = 2.0) -> None:
        self.bus = bus
        self.timeout = timeout

    async def record(self, actor: Identity, action: str, resource_type: str, resource_id: str,
                     before: dict[str, Any] | None, after: dict[str, Any] | None) -> bool:
        """Have the registry write one audit row; False (and the whole record in the log) when it could not."""
        rec = AuditRecord(actor_id=actor.user_id, actor_name=actor.username, action=action,
                          resource_type=resource_type, resource_id=resource_id, before=before, after=after)
        entry = msgspec.structs.asdict(rec)
        log.info("audit", extra=entry)
        try:
            ack = await self.bus.request(self.bus.subjects.registry_audit, rec, AuditAck, timeout=self.timeout)
        except (BusError, DecodeError) as e:
            log.error("audit row not written to the registry's audit log", extra={**entry, "error": str(e)})
            return False
        if ack.error:
            log.error("the registry refused the audit row", extra={**entry, "error": ack.error})
            return False
        return True
