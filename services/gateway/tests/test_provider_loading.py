"""Building the provider set: a provider that cannot be loaded is skipped while the rest serve."""

from __future__ import annotations

import asyncio
import base64
import logging

import msgspec

from aigw_common.crypto import PURPOSE_BUS, Sealer, generate_key
from aigw_common.schemas import ProviderConfig, RegistrySnapshot, SealedKey
from aigw_gateway.adapters import Adapters
from aigw_gateway.app import LOADER
from aigw_gateway.keys import KeyPools
from aigw_gateway.providers import build_set


def _sealer() -> Sealer:
    return Sealer.from_keys((base64.b64decode(generate_key()),), PURPOSE_BUS)


def _good(ours: Sealer) -> ProviderConfig:
    return ProviderConfig(id="p1", name="good", type="openai", display_name="", base_url="http://127.0.0.1:1/v1",
                          keys=[SealedKey(id="k1", position=0, hint="sk-…0001", sealed=ours.seal("sk-test-0001"))])


def _bad(ours: Sealer, foreign: Sealer) -> list[ProviderConfig]:
    return [
        ProviderConfig(id="p2", name="foreign", type="openai", display_name="", base_url="http://127.0.0.1:2/v1",
                       keys=[SealedKey(id="k2", position=0, hint="sk-…0002", sealed=foreign.seal("sk-test-0002"))]),
        ProviderConfig(id="p3", name="gem", type="gemini", display_name="", base_url="http://127.0.0.1:3/v1"),
        ProviderConfig(id="p4", name="junk", type="bedrock", display_name="", base_url="http://127.0.0.1:4",
                       settings_sealed=ours.seal(b"not json")),
    ]


def test_bad_providers_skipped_and_named(caplog) -> None:  # type: ignore[no-untyped-def]
    ours, foreign = _sealer(), _sealer()
    caplog.set_level(logging.WARNING)
    s = build_set(RegistrySnapshot(revision=7, providers=[_good(ours), *_bad(ours, foreign)]), ours, KeyPools(), Adapters())
    assert list(s.by_name) == ["good"] and sorted(s.failed) == ["foreign", "gem", "junk"]
    assert s.by_name["good"].pool.keys[0].secret == "sk-test-0001"
    assert not [r for r in caplog.records if "no provider could be loaded" in r.getMessage()]


def test_nothing_loads_is_one_error(caplog) -> None:  # type: ignore[no-untyped-def]
    ours, foreign = _sealer(), _sealer()
    caplog.set_level(logging.WARNING)
    s = build_set(RegistrySnapshot(revision=8, providers=_bad(ours, foreign)), ours, KeyPools(), Adapters())
    assert s.by_name == {} and len(s.failed) == 3
    loud = [r for r in caplog.records if "no provider could be loaded" in r.getMessage()]
    assert len(loud) == 1 and loud[0].levelno == logging.ERROR
    # an empty registry is not a failure
    caplog.clear()
    assert build_set(RegistrySnapshot(revision=9), ours, KeyPools(), Adapters()).failed == ()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_settings_that_are_not_an_object_fail_that_provider_only() -> None:
    ours = _sealer()
    odd = ProviderConfig(id="p5", name="odd", type="openai", display_name="", base_url="http://127.0.0.1:5/v1",
                         settings_sealed=ours.seal(b"[1, 2]"))
    s = build_set(RegistrySnapshot(revision=10, providers=[_good(ours), odd]), ours, KeyPools(), Adapters())
    assert list(s.by_name) == ["good"] and s.failed == ("odd",)


async def test_a_bad_snapshot_does_not_stop_following(gw) -> None:  # type: ignore[no-untyped-def]
    """A snapshot the gateway cannot use (here: provider settings that are not an object) must not end the
    refresh loop: the next change is still followed."""
    reg = gw.registry
    odd = reg.put_provider("odd", "openai", gw.upstream.url + "/v1")
    reg.providers["odd"] = msgspec.structs.replace(odd, settings_sealed=reg.sealer.seal(b"[1, 2]"))
    await reg.publish_changed()
    await asyncio.sleep(0.5)
    reg.put_provider("later", "openai", gw.upstream.url + "/v1", ["sk-later-1"])
    await reg.publish_changed()
    await gw.wait_revision()
    assert "later" in gw.app[LOADER].current.by_name
