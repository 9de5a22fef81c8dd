"""Key rotation of stored secrets (real Postgres): prepend a key, re-seal everything, drop the old key.

``POST /api/v2/secrets/rotate`` (``aigw admin rotate-secrets``) re-seals provider keys, provider settings
and users' own keys with the first key of AIGW_ENCRYPTION_KEYS, in batches; it is idempotent and
resumable, owner-only and audited. Afterwards a registry holding only the new key opens everything.
"""

from __future__ import annotations

import base64

import msgspec

from aigw_common.crypto import PURPOSE_BUS, Sealer, generate_key, hash_token, key_id
from aigw_registry.responders import build_snapshot, verify_token

from .test_admin import run
from .test_bus import _setup_data

R = "/api/v2/secrets/rotate"


async def _kids(pool) -> set[str]:  # type: ignore[no-untyped-def]
    rows = await pool.fetch(
        "SELECT key_id AS k FROM registry.ai_provider_keys UNION ALL"
        " SELECT settings_key_id FROM registry.ai_providers WHERE settings_sealed IS NOT NULL UNION ALL"
        " SELECT key_id FROM registry.user_ai_provider_keys")
    return {r["k"] for r in rows}


async def test_rotate_then_drop_the_old_key(start_registry, apps) -> None:  # type: ignore[no-untyped-def]
    old, new = generate_key(), generate_key()
    r1 = await start_registry(AIGW_ENCRYPTION_KEYS=old)
    user, token, _ = await _setup_data(r1.client)
    _, adm_token = await r1.client.new_user("adm", ["admin"])
    await apps.stop(r1.app)

    r2 = await start_registry(AIGW_ENCRYPTION_KEYS=f"{new},{old}")
    c = r2.client
    new_kid, old_kid = key_id(base64.b64decode(new)), key_id(base64.b64decode(old))
    assert await _kids(r2.reg.pool) == {old_kid}
    # an admin who is not an owner may not; a gateway-scoped owner token may not either
    assert (await c.as_(adm_token).post(R, {})).status == 403
    # one small batch: partial, resumable
    part = await c.ok("POST", R, {"batch_size": 1, "max_rows": 2}, status=200)
    assert part["key_id"] == new_kid and sum(part["resealed"].values()) == 2
    assert sum(part["remaining"].values()) == 4 - 2, part  # 2 pool keys, bed's settings, gina's own key
    assert await _kids(r2.reg.pool) == {old_kid, new_kid}
    done = await c.ok("POST", R, {"batch_size": 2}, status=200)
    assert sum(done["resealed"].values()) == 2 and not any(done["remaining"].values())
    assert await _kids(r2.reg.pool) == {new_kid}
    again = await c.ok("POST", R, status=200)  # idempotent: nothing left to do
    assert not any(again["resealed"].values()) and not any(again["remaining"].values())
    audit = await c.ok("GET", "/api/v2/audit-logs", params={"action": "secrets.rotate"})
    assert len(audit["audit_logs"]) == 3 and audit["audit_logs"][0]["resource_id"] == new_kid
    await apps.stop(r2.app)

    # the old key is gone from the list: everything still opens
    r3 = await start_registry(AIGW_ENCRYPTION_KEYS=new)
    bed = await r3.client.ok("GET", "/api/v2/ai/providers/bed")
    assert bed["settings"]["region"] == "eu-west-1"
    opener = Sealer.from_keys(r3.settings.bus_keys(), PURPOSE_BUS)
    snap = await build_snapshot(r3.reg)
    oai = next(p for p in snap.providers if p.name == "oai")
    assert [opener.open(k.sealed) for k in oai.keys] == ["sk-first-key-0001", "sk-second-key-0002"]
    bed_settings = next(p for p in snap.providers if p.name == "bed").settings_sealed
    assert msgspec.json.decode(opener.open(bed_settings))["access_key_secret"] == "bus/secret/000001"
    ident = await verify_token(r3.reg, hash_token(token))
    assert ident and opener.open(ident.provider_keys[0].sealed) == "sk-gina-own-key-0003"
    assert user


async def test_rotate_with_a_missing_key_is_a_clear_409(start_registry, apps) -> None:  # type: ignore[no-untyped-def]
    old = generate_key()
    r1 = await start_registry(AIGW_ENCRYPTION_KEYS=old)
    await _setup_data(r1.client)
    await apps.stop(r1.app)
    r2 = await start_registry(AIGW_ENCRYPTION_KEYS=generate_key())  # the old key was dropped too early
    r = await r2.client.post(R, {})
    assert r.status == 409 and "AIGW_ENCRYPTION_KEYS" in r.body["message"], r


async def test_admin_rotate_secrets_command(start_registry, apps) -> None:  # type: ignore[no-untyped-def]
    old, new = generate_key(), generate_key()
    r1 = await start_registry(AIGW_ENCRYPTION_KEYS=old)
    await _setup_data(r1.client)
    await apps.stop(r1.app)
    r2 = await start_registry(AIGW_ENCRYPTION_KEYS=f"{new},{old}")
    rc, out, err = await run(r2.url, "rotate-secrets", "--batch-size", "1", token=r2.owner_token)
    assert rc == 0, err
    assert sum(out["resealed"].values()) == 4 and not any(out["remaining"].values())  # type: ignore[index]
