"""Request/reply against the real NATS server: a responder whose handler fails answers with an error."""

import asyncio

import pytest
from nats.aio.msg import Msg

from aigw_common.bus import Bus, encode
from aigw_common.errors import AigwError, BusError, DatabaseUnavailable, RemoteError
from aigw_common.schemas import (
    ALL_MESSAGES,
    AuditAck,
    AuditRecord,
    AuthVerifyReply,
    AuthVerifyRequest,
    BudgetLeaseReply,
    BudgetLeaseRequest,
    BudgetSnapshot,
    BudgetSnapshotRequest,
    BusErrorReply,
    DirectoryLookup,
    DirectoryReply,
    LimitLeaseReply,
    LimitLeaseRequest,
    LimitsSnapshot,
    LimitsSnapshotRequest,
    RegistrySnapshot,
    SnapshotRequest,
)


async def test_a_failing_handler_answers_with_an_error_not_silence(bus: Bus) -> None:
    """The caller hears why at once, instead of waiting out its timeout for an answer that never comes."""

    async def responder(_req: AuthVerifyRequest, _m: Msg) -> AuthVerifyReply:
        raise DatabaseUnavailable("postgres is restarting")

    await bus.subscribe(bus.subjects.auth_verify, AuthVerifyRequest, responder, queue="registry")
    await bus.flush()
    with pytest.raises(BusError) as e:
        await bus.request(bus.subjects.auth_verify, AuthVerifyRequest(token_hash="a" * 64), AuthVerifyReply,
                          timeout=10.0)
    assert "postgres is restarting" in e.value.message and e.value.retryable


async def test_a_bug_in_a_handler_answers_internal_error_without_its_details(bus: Bus) -> None:
    async def responder(_req: AuthVerifyRequest, _m: Msg) -> AuthVerifyReply:
        raise KeyError("secret-internal-detail")

    await bus.subscribe(bus.subjects.auth_verify, AuthVerifyRequest, responder, queue="registry")
    await bus.flush()
    with pytest.raises(BusError) as e:
        await bus.request(bus.subjects.auth_verify, AuthVerifyRequest(token_hash="a" * 64), AuthVerifyReply,
                          timeout=10.0)
    assert "internal error" in e.value.message and "secret-internal-detail" not in e.value.message


async def test_a_refusal_is_not_retryable(bus: Bus) -> None:
    async def responder(_req: AuthVerifyRequest, _m: Msg) -> AuthVerifyReply:
        raise AigwError("token hash is not hex")

    await bus.subscribe(bus.subjects.auth_verify, AuthVerifyRequest, responder, queue="registry")
    await bus.flush()
    with pytest.raises(BusError) as e:
        await bus.request(bus.subjects.auth_verify, AuthVerifyRequest(token_hash="a" * 64), AuthVerifyReply,
                          timeout=10.0, attempts=3)
    assert "token hash is not hex" in e.value.message and not e.value.retryable


async def test_an_error_to_a_signed_request_is_signed_by_its_responder(bus: Bus) -> None:
    """An error ends a wait for a registry-signed reply only when the registry signed it: a rogue's unsigned
    "error" is dropped like a rogue's unsigned reply, and the real answer is still taken."""
    assert bus.nc is not None
    subject = bus.subjects.registry_snapshot

    async def rogue(m: Msg) -> None:
        err = BusErrorReply(code="refused", message="go away", retryable=False)
        await bus.nc.publish(m.reply, encode(err))  # type: ignore[union-attr]

    await bus.nc.subscribe(subject, cb=rogue)

    async def registry(_req: SnapshotRequest, _m: Msg) -> RegistrySnapshot:
        await asyncio.sleep(0.2)  # the rogue answers first
        return RegistrySnapshot(revision=3)

    sub = await bus.subscribe(subject, SnapshotRequest, registry, queue="registry")
    await bus.flush()
    snap = await bus.request(subject, SnapshotRequest(), RegistrySnapshot, timeout=5.0)
    assert snap.revision == 3

    # the registry's own error reply is signed as the registry and ends the wait at once
    await bus.unsubscribe(sub)

    async def failing(_req: SnapshotRequest, _m: Msg) -> RegistrySnapshot:
        await asyncio.sleep(0.2)
        raise DatabaseUnavailable("database unavailable")

    await bus.subscribe(subject, SnapshotRequest, failing, queue="registry")
    await bus.flush()
    with pytest.raises(RemoteError) as e:
        await bus.request(subject, SnapshotRequest(), RegistrySnapshot, timeout=10.0)
    assert e.value.code == "unavailable" and e.value.retryable


async def test_an_unreadable_request_is_answered_bad_request(bus: Bus) -> None:
    async def responder(_req: AuthVerifyRequest, _m: Msg) -> AuthVerifyReply:
        raise AssertionError("never called")

    await bus.subscribe(bus.subjects.auth_verify, AuthVerifyRequest, responder, queue="registry")
    await bus.flush()
    with pytest.raises(RemoteError) as e:  # a request of another kind on the subject
        await bus.request(bus.subjects.auth_verify, SnapshotRequest(), AuthVerifyReply, timeout=10.0)
    assert e.value.code == "bad_request" and not e.value.retryable


def test_every_request_type_names_the_signer_of_its_reply() -> None:
    """Error replies are signed as ``answered_by``: it must be who signs the real reply."""
    pairs = [(SnapshotRequest, RegistrySnapshot), (AuthVerifyRequest, AuthVerifyReply),
             (DirectoryLookup, DirectoryReply), (AuditRecord, AuditAck), (BudgetSnapshotRequest, BudgetSnapshot),
             (BudgetLeaseRequest, BudgetLeaseReply), (LimitsSnapshotRequest, LimitsSnapshot),
             (LimitLeaseRequest, LimitLeaseReply)]
    for req, reply in pairs:
        assert req.answered_by and req.answered_by == reply.signed_by, req.__name__
    answered = {t for t in ALL_MESSAGES if t.answered_by}
    assert answered == {req for req, _ in pairs}, "a new request type: add it (and its reply) here"
