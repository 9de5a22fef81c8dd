"""Base URLs pointing at link-local or cloud-metadata addresses are refused unless explicitly allowed
(AIGW_ALLOW_PRIVATE_UPSTREAMS), through the API (create and update) and through env seeding (legacy and
indexed variables).

(DNS names are not resolved at create time; every upstream connection is checked on its resolved address
instead: services/gateway/tests/test_ssrf.py.)
"""

from __future__ import annotations

import pytest

from aigw_common.errors import ConfigError
from aigw_registry.app import create_app as registry_app
from aigw_testing.system import Api

pytestmark = pytest.mark.reliability
P = "/api/v2/ai/providers"
METADATA = [
    "http://169.254.169.254/latest/meta-data",  # AWS, Azure, GCP, OCI
    "http://169.254.170.2/v2/credentials",  # ECS task credentials
    "http://169.254.169.254./",  # trailing dot
    "http://2852039166/",  # 169.254.169.254 as one integer
    "http://0xA9FEA9FE/",  # … in hex
    "http://0251.0376.0251.0376/",  # … in octal
    "http://169.254.1/",  # … short form
    "http://[::ffff:169.254.169.254]/",  # IPv4-mapped IPv6
    "http://[fe80::1]/v1",  # IPv6 link-local
    "http://[fd00:ec2::254]/",  # AWS IMDS over IPv6
    "http://metadata.google.internal/computeMetadata/v1",
    "http://METADATA.GOOGLE.INTERNAL./",
    "http://metadata.goog/",
    "https://169.254.169.254:443/",
]


async def test_api_refuses_link_local_and_metadata_base_urls(start_system, reliability) -> None:  # type: ignore[no-untyped-def]
    s = await start_system(services=("registry",))
    owner: Api = s.owner
    reg = s.urls["registry"]
    await owner.ok("POST", reg + P, {"name": "fine", "type": "openai", "base_url": "https://api.openai.com/v1"})
    accepted = []
    for i, url in enumerate(METADATA):
        for ptype in ("openai", "anthropic"):
            r = await owner.call("POST", reg + P, {"name": f"meta-{i}-{ptype}", "type": ptype, "base_url": url})
            if r.status != 400 or r.body["validations"][0]["field"] != "base_url":
                accepted.append(f"create {ptype} {url}: {r}")
        r = await owner.call("PATCH", reg + P + "/fine", {"base_url": url})
        if r.status != 400:
            accepted.append(f"update to {url}: {r}")
    assert not accepted, "\n".join(accepted)
    assert (await owner.ok("GET", reg + P + "/fine"))["base_url"] == "https://api.openai.com/v1"
    reliability.record("Link-local / metadata base URLs",
                       client=f"{len(METADATA)} address forms refused (400 on base_url) on create and update",
                       usage="—", measured="allowed only with AIGW_ALLOW_PRIVATE_UPSTREAMS; env seeding "
                                           "refuses them at startup naming the variable")


async def test_explicitly_allowed(start_system) -> None:  # type: ignore[no-untyped-def]
    s = await start_system(services=("registry",), env={"AIGW_ALLOW_PRIVATE_UPSTREAMS": "true"})
    for i, url in enumerate(METADATA[:3]):
        await s.owner.ok("POST", s.urls["registry"] + P, {"name": f"meta-{i}", "type": "openai", "base_url": url})


@pytest.mark.parametrize("env", [
    {"AIGW_OPENAI_BASE_URL": "http://169.254.169.254/v1", "AIGW_OPENAI_KEY": "zzseed-key-12345"},
    {"AIGW_ANTHROPIC_BASE_URL": "http://metadata.google.internal", "AIGW_ANTHROPIC_KEY": "zzseed-key-12345"},
    {"AIGW_PROVIDER_0_TYPE": "openai", "AIGW_PROVIDER_0_NAME": "idx", "AIGW_PROVIDER_0_BASE_URL": "http://[fe80::1]/v1",
     "AIGW_PROVIDER_0_KEY": "zzseed-key-12345"},
])
async def test_env_seeding_refuses_link_local_unless_allowed(make_settings, database_url, apps, env) -> None:  # type: ignore[no-untyped-def]
    clean = {"AIGW_OPENAI_BASE_URL": None, "AIGW_ANTHROPIC_BASE_URL": None}
    with pytest.raises(ConfigError) as e:
        await apps.start(registry_app(make_settings(AIGW_DATABASE_URL=database_url, **{**clean, **env})))
    assert "AIGW_ALLOW_PRIVATE_UPSTREAMS" in str(e.value) and "BASE_URL" in str(e.value), e.value
    url = await apps.start(registry_app(make_settings(AIGW_DATABASE_URL=database_url, AIGW_BOOTSTRAP_TOKEN="aigw_" + "b" * 40,
                                                      AIGW_ALLOW_PRIVATE_UPSTREAMS="true", **{**clean, **env})))
    import aiohttp

    async with aiohttp.ClientSession() as http:
        names = (await (await http.get(url + P, headers={"Authorization": "Bearer aigw_" + "b" * 40})).json())["providers"]
    assert len(names) == 1, names
