"""One address classification for create time and connect time."""

from __future__ import annotations

import ipaddress

import pytest

from aigw_common import netguard
from aigw_common.errors import ConfigError
from aigw_common.settings import Settings


@pytest.mark.parametrize(("address", "klass"), [
    ("8.8.8.8", None), ("93.184.216.34", None), ("2606:4700::1111", None),
    ("127.0.0.1", "loopback"), ("127.8.9.10", "loopback"), ("::1", "loopback"),
    ("10.1.2.3", "private"), ("172.16.0.1", "private"), ("172.31.255.255", "private"), ("192.168.1.1", "private"),
    ("fd12:3456::1", "private"),
    ("169.254.1.1", "link-local"), ("fe80::1", "link-local"),
    ("100.64.0.1", "cgnat"), ("100.127.255.254", "cgnat"),
    ("169.254.169.254", "metadata"), ("169.254.170.2", "metadata"), ("100.100.100.200", "metadata"),
    ("fd00:ec2::254", "metadata"),
    ("::ffff:127.0.0.1", "loopback"), ("::ffff:169.254.169.254", "metadata"), ("::ffff:10.0.0.1", "private"),
    ("64:ff9b::a9fe:a9fe", "metadata"), ("64:ff9b::808:808", None), ("2002:7f00:1::", "loopback"),
    ("0.0.0.0", "reserved"), ("::", "reserved"), ("224.0.0.1", "reserved"), ("240.0.0.1", "reserved"),
    ("198.18.0.1", "reserved"), ("192.0.2.1", "reserved"), ("ff02::1", "reserved"),
])
def test_classify(address: str, klass: str | None) -> None:
    assert netguard.classify(ipaddress.ip_address(address)) == klass


@pytest.mark.parametrize(("host", "klass"), [
    ("api.openai.com", None), ("169.254.169.254.nip.io", None),  # names: checked at connect time
    ("2852039166", "metadata"), ("0xA9FEA9FE", "metadata"), ("0251.0376.0251.0376", "metadata"),
    ("127.1", "loopback"), ("[::1]", "loopback"), ("localhost", "loopback"), ("x.localhost.", "loopback"),
    ("METADATA.GOOGLE.INTERNAL.", "metadata"), ("instance-data.ec2.internal", "metadata"),
])
def test_classify_host(host: str, klass: str | None) -> None:
    assert netguard.classify_host(host) == klass


def test_allow_switch() -> None:
    assert Settings.from_env({}).allow_private_upstreams == frozenset()
    assert Settings.from_env({"AIGW_ALLOW_PRIVATE_UPSTREAMS": "true"}).allow_private_upstreams == frozenset(netguard.CLASSES)
    assert Settings.from_env({"AIGW_ALLOW_PRIVATE_UPSTREAMS": "false"}).allow_private_upstreams == frozenset()
    assert Settings.from_env({"AIGW_ALLOW_PRIVATE_UPSTREAMS": "loopback, private"}).allow_private_upstreams == \
        frozenset({"loopback", "private"})
    with pytest.raises(ConfigError, match="AIGW_ALLOW_PRIVATE_UPSTREAMS"):
        Settings.from_env({"AIGW_ALLOW_PRIVATE_UPSTREAMS": "loopback,intranet"})
    with pytest.raises(ConfigError, match="replaced by AIGW_ALLOW_PRIVATE_UPSTREAMS"):
        Settings.from_env({"AIGW_ALLOW_LINK_LOCAL_BASE_URLS": "true"})


def test_check_names_the_class() -> None:
    netguard.check("h", "8.8.8.8", frozenset())
    netguard.check("h", "127.0.0.1", frozenset({"loopback"}))
    with pytest.raises(netguard.ForbiddenAddress) as e:
        netguard.check("imds.example", "169.254.169.254", frozenset({"link-local"}))
    assert e.value.klass == "metadata" and "imds.example" in str(e.value)
