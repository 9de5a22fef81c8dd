"""SigV4 against AWS's published test suite (aws-signing-test-suite/v4), botocore, and the credential chain."""

from __future__ import annotations

import calendar
import datetime as dt
import hashlib
import os

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials as BotoCredentials

from aigw_gateway import sigv4

AKID = "AKIDEXAMPLE"
SECRET = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
DATE = "20150830T123600Z"
HOST = "example.amazonaws.com"

# (name, method, path, query, extra headers, body, expected signature), transcribed from the suite's
# header-signed-request.txt files (context: us-east-1, service "service", 2015-08-30T12:36:00Z).
VECTORS = [
    ("get-vanilla", "GET", "/", "", [], b"", "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"),
    ("post-vanilla", "POST", "/", "", [], b"", "5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b"),
    ("post-vanilla-query", "POST", "/", "Param1=value1", [], b"",
     "28038455d6de14eafc1f9222cf5aa6f1a96197d7deb8263271d420d138af7f11"),
    ("get-vanilla-query-order-key-case", "GET", "/", "Param2=value2&Param1=value1", [], b"",
     "b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500"),
    ("get-vanilla-query-unreserved", "GET", "/",
     "-._~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz=-._~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz",
     [], b"", "9c3e54bfcdf0b19771a7f523ee5669cdf59bc7cc0884027167c21bb143a40197"),
    ("get-vanilla-utf8-query", "GET", "/", "ሴ=bar", [], b"",
     "2cdec8eed098649ff3a119c94853b13c643bcf08f8b0a1d91e12c9027818dd04"),
    ("get-utf8", "GET", "/ሴ", "", [], b"", "8318018e0b0f223aa2bbf98705b62bb787dc9c0e678f255a891fd03141be5d85"),
    ("get-unreserved", "GET", "/-._~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz", "", [], b"",
     "07ef7494c76fa4850883e2b006601f940f8a34d404d0cfa977f52a65bbf5f24f"),
    ("post-header-value-case", "POST", "/", "", [("My-Header1", "VALUE1")], b"",
     "cdbc9802e29d2942e5e10b5bccfdd67c5f22c7c4e8ae67b53629efa58b974b7d"),
    ("get-header-value-trim", "GET", "/", "", [("My-Header1", " value1"), ("My-Header2", ' "a   b   c"')], b"",
     "acc3ed3afb60bb290fc8d2dd0098b9911fcaa05412b367055dee359757a9c736"),
    ("get-header-value-order", "GET", "/", "",
     [("My-Header1", "value4"), ("My-Header1", "value1"), ("My-Header1", "value3"), ("My-Header1", "value2")], b"",
     "08c7e5a9acfcfeb3ab6b2185e75ce8b1deb5e634ec47601a50643f830c755c01"),
    ("get-header-key-duplicate", "GET", "/", "",
     [("My-Header1", "value2"), ("My-Header1", "value2"), ("My-Header1", "value1")], b"",
     "c9d5ea9f3f72853aea855b47ea873832890dbdd183b4468f858259531a5138ea"),
    ("get-vanilla-with-session-token", "GET", "/", "",
     [("X-Amz-Security-Token", "6e86291e8372ff2a2260956d9b8aae1d763fbf315fa00fa31553b73ebf194267")], b"",
     "07ec1639c89043aa0e3e2de82b96708f198cceab042d4a97044c66dd9f74e7f8"),
    ("post-x-www-form-urlencoded", "POST", "/", "",
     [("Content-Type", "application/x-www-form-urlencoded"), ("Content-Length", "13"),
      ("x-amz-content-sha256", "9095672bbd1f56dfc5b65f3e153adc8731a4a654192329106275f4c7b24d0b6e")],
     b"Param1=value1", "d3875051da38690788ef43de4db0d8f280229d82040bfac253562e56c3f20e0b"),
]


@pytest.mark.parametrize(("name", "method", "path", "query", "extra", "body", "expected"), VECTORS,
                         ids=[v[0] for v in VECTORS])
def test_aws_test_suite(name, method, path, query, extra, body, expected) -> None:  # type: ignore[no-untyped-def]
    headers = [("Host", HOST), ("X-Amz-Date", DATE), *extra]
    sig, _ = sigv4.signature(SECRET, region="us-east-1", service="service", method=method, raw_path=path,
                             raw_query=query, headers=headers, payload_hash=hashlib.sha256(body).hexdigest(),
                             date=DATE)
    assert sig == expected


def test_intermediate_steps_match_the_suite() -> None:
    # post-x-www-form-urlencoded (older revision of the suite, signed without x-amz-content-sha256):
    # header-canonical-request.txt and header-string-to-sign.txt.
    creq, signed = sigv4.canonical_request(
        "POST", "/", "", [("Content-Type", "application/x-www-form-urlencoded"), ("Host", HOST),
                          ("Content-Length", "13"), ("X-Amz-Date", DATE)], sigv4.EMPTY_SHA256)
    assert creq == (
        "POST\n/\n\ncontent-length:13\ncontent-type:application/x-www-form-urlencoded\nhost:example.amazonaws.com\n"
        "x-amz-date:20150830T123600Z\n\ncontent-length;content-type;host;x-amz-date\n"
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    )
    assert signed == "content-length;content-type;host;x-amz-date"
    assert sigv4.string_to_sign(DATE, "20150830/us-east-1/service/aws4_request", creq) == (
        "AWS4-HMAC-SHA256\n20150830T123600Z\n20150830/us-east-1/service/aws4_request\n"
        "0eccf3fbe5a3c5d3df1d87c98cdf5dbde190d26aabdd91c9407db930a0c00896"
    )


def _epoch(amz: str) -> int:
    return calendar.timegm(dt.datetime.strptime(amz, "%Y%m%dT%H%M%SZ").timetuple())


@pytest.mark.parametrize("token", [None, "FQoGZXIvYXdzEXAMPLE//token+/="])
@pytest.mark.parametrize("model", ["anthropic.claude-sonnet-4-5-20250929-v1:0",
                                   "arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.anthropic.claude-x"])
def test_matches_botocore_for_bedrock_requests(token: str | None, model: str) -> None:
    from urllib.parse import quote

    body = b'{"anthropic_version":"bedrock-2023-05-31","max_tokens":10,"messages":[]}'
    path = f"/model/{quote(model, safe=':')}/invoke-with-response-stream"
    host = "bedrock-runtime.eu-west-3.amazonaws.com"
    req = AWSRequest(method="POST", url=f"https://{host}{path}", data=body,
                     headers={"Content-Type": "application/json",
                              "X-Amz-Content-SHA256": hashlib.sha256(body).hexdigest()})
    SigV4Auth(BotoCredentials("AKIDTEST", "s3cr3t/+=", token), "bedrock", "eu-west-3").add_auth(req)
    mine = sigv4.sign_headers(sigv4.Credentials("AKIDTEST", "s3cr3t/+=", token), region="eu-west-3",
                              service="bedrock", method="POST", host=host, raw_path=path, body=body,
                              extra={"content-type": "application/json"}, now=_epoch(req.headers["X-Amz-Date"]))
    assert mine["authorization"] == req.headers["Authorization"]
    assert ("x-amz-security-token" in mine) == (token is not None)


def test_verify_accepts_own_signature_and_rejects_tampering() -> None:
    creds = sigv4.Credentials("AKIDTEST", "secret")
    body = b'{"x":1}'
    h = sigv4.sign_headers(creds, region="us-east-1", service="bedrock", method="POST", host="h:1",
                           raw_path="/model/m%2Fx/invoke", body=body, extra={"content-type": "application/json"})
    headers = [("Host", "h:1"), ("Content-Type", "application/json"), *h.items()]
    auth = sigv4.parse_authorization(h["authorization"])
    assert auth.access_key == "AKIDTEST" and auth.service == "bedrock"
    ok = {"method": "POST", "raw_path": "/model/m%2Fx/invoke", "raw_query": "", "headers": headers, "body": body}
    assert sigv4.verify("secret", auth, **ok)
    assert not sigv4.verify("other", auth, **ok)
    assert not sigv4.verify("secret", auth, **{**ok, "body": b'{"x":2}'})
    assert not sigv4.verify("secret", auth, **{**ok, "raw_path": "/model/m%2Fy/invoke"})
    assert not sigv4.verify("secret", auth, **{**ok, "headers": headers[1:]})  # a signed header is missing
    with pytest.raises(ValueError):
        sigv4.parse_authorization("Bearer abc")


def test_chain_prefers_static_then_env_then_file(tmp_path) -> None:  # type: ignore[no-untyped-def]
    static = sigv4.Credentials("AKSTATIC", "s")
    assert sigv4.CredentialChain(static, {"AWS_ACCESS_KEY_ID": "AKENV", "AWS_SECRET_ACCESS_KEY": "e"}).get() is static
    env = {"AWS_ACCESS_KEY_ID": "AKENV", "AWS_SECRET_ACCESS_KEY": "e", "AWS_SESSION_TOKEN": "t"}
    got = sigv4.CredentialChain(None, env).get()
    assert (got.access_key, got.secret_key, got.session_token, got.source) == ("AKENV", "e", "t", "env")

    aws = tmp_path / ".aws"
    aws.mkdir()
    (aws / "credentials").write_text(
        "[default]\naws_access_key_id = AKDEF\naws_secret_access_key = d\n\n"
        "[work]\naws_access_key_id=AKWORK\naws_secret_access_key=w\naws_session_token=wt\n"
    )
    chain = sigv4.CredentialChain(None, {}, home=tmp_path, recheck=0)
    assert chain.get().access_key == "AKDEF"
    work = sigv4.CredentialChain(None, {"AWS_PROFILE": "work"}, home=tmp_path).get()
    assert (work.access_key, work.session_token, work.source) == ("AKWORK", "wt", "shared-file:work")

    # a rotated file is picked up (mtime changes)
    (aws / "credentials").write_text("[default]\naws_access_key_id = AKNEW\naws_secret_access_key = n\n")
    os.utime(aws / "credentials", (1, 1))
    assert chain.get().access_key == "AKNEW"

    with pytest.raises(sigv4.CredentialsError, match="no profile"):
        sigv4.CredentialChain(None, {"AWS_PROFILE": "nope"}, home=tmp_path).get()
    with pytest.raises(sigv4.CredentialsError, match="no AWS credentials"):
        sigv4.CredentialChain(None, {}, home=tmp_path / "empty").get()
    alt = tmp_path / "alt"
    alt.write_text("[default]\naws_access_key_id = AKALT\naws_secret_access_key = a\n")
    assert sigv4.CredentialChain(None, {"AWS_SHARED_CREDENTIALS_FILE": str(alt)}).get().access_key == "AKALT"


def test_credentials_repr_hides_secrets() -> None:
    r = repr(sigv4.Credentials("AKID", "supersecret", "supertoken"))
    assert "supersecret" not in r and "supertoken" not in r


def test_settings_capture_aws_env(make_settings) -> None:  # type: ignore[no-untyped-def]
    s = make_settings(AWS_ACCESS_KEY_ID="AKX", AWS_SECRET_ACCESS_KEY="sx", AWS_REGION="ignored")
    assert s.aws_env == {"AWS_ACCESS_KEY_ID": "AKX", "AWS_SECRET_ACCESS_KEY": "sx"}
    assert "sx" not in repr(s)
