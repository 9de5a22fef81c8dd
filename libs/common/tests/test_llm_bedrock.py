"""Bedrock endpoints and credential forms (aigw_common.llm.bedrock)."""

from __future__ import annotations

import pytest

from aigw_common.llm import bedrock

AKID = "AKIA" + "X" * 16


@pytest.mark.parametrize(("url", "region", "control"), [
    ("https://bedrock-runtime.us-east-1.amazonaws.com", "us-east-1", "https://bedrock.us-east-1.amazonaws.com"),
    ("https://bedrock-runtime-fips.us-gov-west-1.amazonaws.com/", "us-gov-west-1",
     "https://bedrock-fips.us-gov-west-1.amazonaws.com"),
    ("https://bedrock-runtime.cn-north-1.amazonaws.com.cn", "cn-north-1", "https://bedrock.cn-north-1.amazonaws.com.cn"),
    ("https://bedrock-runtime.us-east-1.amazonaws.com.evil.example", "",
     "https://bedrock-runtime.us-east-1.amazonaws.com.evil.example"),
    ("http://127.0.0.1:9/", "", "http://127.0.0.1:9"),
])
def test_endpoints(url: str, region: str, control: str) -> None:
    assert bedrock.region_of(url) == region
    assert bedrock.control_url(url) == control


def test_runtime_url_is_what_region_of_reads() -> None:
    assert bedrock.region_of(bedrock.runtime_url("eu-west-3")) == "eu-west-3"


@pytest.mark.parametrize(("cred", "pair", "akid"), [
    (f"{AKID}:s3cr3t", (AKID, "s3cr3t", None), AKID),
    (f"{AKID}:s3cr3t:tok/en+=", (AKID, "s3cr3t", "tok/en+="), AKID),
    (f"{AKID}:" + "s" * 257, None, AKID),  # not a usable pair, but never shown or sent as a bearer either
    (f"{AKID}:sec ret", None, AKID),
    ("ABSKQmVkcm9ja0FQSUtleS1example", None, None),  # a Bedrock API key
    ("akia-lowercase:secret", None, None),
    (":secret", None, None),
])
def test_access_key_pairs(cred: str, pair: tuple[str, str, str | None] | None, akid: str | None) -> None:
    got = bedrock.access_key_pair(cred)
    assert (None if got is None else (got.access_key_id, got.secret, got.session_token)) == pair
    assert bedrock.access_key_id_of(cred) == akid
    if got is not None:
        assert got.secret not in repr(got)
