"""Upstream error bodies (aigw_common.llm.error_body): every shape, and inputs that must never raise."""

from __future__ import annotations

import pytest
from multidict import CIMultiDict

from aigw_common.llm import MAX_ERROR_BODY, ProviderError, error_body
from aigw_common.llm.error_body import MAX_FIELD, MAX_MESSAGE, MAX_TEXT

CASES: list[tuple[str, bytes, dict[str, str] | None, ProviderError]] = [
    ("openai", b'{"error":{"message":"Rate limit reached","type":"requests","param":null,"code":"rate_limit_exceeded"}}',
     None, ProviderError("openai", "requests", "rate_limit_exceeded", "Rate limit reached")),
    ("openai context", b'{"error":{"message":"This model\'s maximum context length is 8192 tokens",'
     b'"type":"invalid_request_error","code":"context_length_exceeded"}}', None,
     ProviderError("openai", "invalid_request_error", "context_length_exceeded",
                   "This model's maximum context length is 8192 tokens")),
    ("openai numeric code", b'{"error":{"message":"bad","code":400}}', None, ProviderError("openai", "", "400", "bad")),
    ("openai null fields", b'{"error":{"message":null,"type":null,"code":null}}', None, ProviderError("openai")),
    ("openai bool code is not a code", b'{"error":{"code":true,"message":"m"}}', None,
     ProviderError("openai", "", "", "m")),
    ("anthropic", b'{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}', None,
     ProviderError("anthropic", "overloaded_error", "", "Overloaded")),
    ("anthropic with request id", b'{"type":"error","error":{"type":"permission_error","message":"no"},'
     b'"request_id":"req_1"}', None, ProviderError("anthropic", "permission_error", "", "no")),
    ("error as a string (ollama)", b'{"error":"model \\"llama9\\" not found"}', None,
     ProviderError("error-string", "", "", 'model "llama9" not found')),
    ("bedrock message + header", b'{"message":"Too many requests, please wait before trying again."}',
     {"x-amzn-ErrorType": "ThrottlingException:http://internal.amazon.com/coral/com.amazon.bedrock/"},
     ProviderError("aws", "ThrottlingException", "", "Too many requests, please wait before trying again.")),
    ("bedrock header any case", b'{"message":"m"}', {"X-Amzn-Errortype": "ValidationException"},
     ProviderError("aws", "ValidationException", "", "m")),
    ("bedrock Message", b'{"Message":"User is not authorized"}', None,
     ProviderError("aws", "", "", "User is not authorized")),
    ("aws __type", b'{"__type":"com.amazon.coral.service#AccessDeniedException","message":"denied"}', None,
     ProviderError("aws", "AccessDeniedException", "", "denied")),
    ("bedrock message, no header", b'{"message":"You don\'t have access to the model with the specified model ID."}',
     None, ProviderError("flat", "", "", "You don't have access to the model with the specified model ID.")),
    ("flat responses-stream error", b'{"type":"error","code":"server_error","message":"boom","sequence_number":3}',
     None, ProviderError("flat", "error", "server_error", "boom")),
    ("header only, empty body", b"", {"x-amzn-ErrorType": "ServiceUnavailableException"},
     ProviderError("aws", "ServiceUnavailableException")),
    ("empty", b"", None, ProviderError("empty")),
    ("whitespace", b"  \r\n", None, ProviderError("empty")),
    ("empty object", b"{}", None, ProviderError("empty")),
    ("error is a list", b'{"error":[1,2]}', None, ProviderError("empty")),
    ("json array", b"[1,2,3]", None, ProviderError("empty")),
    ("json string", b'"oops"', None, ProviderError("empty")),
    ("html", b"<html><body>502 Bad Gateway</body></html>", None,
     ProviderError("text", "", "", "<html><body>502 Bad Gateway</body></html>")),
    ("plain text", b"upstream connect error\n", None, ProviderError("text", "", "", "upstream connect error")),
    ("invalid utf-8", b"\xff\xfe bad", None, ProviderError("text", "", "", "\ufffd\ufffd bad")),
    ("truncated json", b'{"error":{"message":"cut', None, ProviderError("text", "", "", '{"error":{"message":"cut')),
    ("text with aws header", b"Service Unavailable", {"x-amzn-ErrorType": "ServiceUnavailableException"},
     ProviderError("text", "ServiceUnavailableException", "", "Service Unavailable")),
]


@pytest.mark.parametrize(("body", "headers", "want"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_shapes(body: bytes, headers: dict[str, str] | None, want: ProviderError) -> None:
    assert error_body.parse(body, headers) == want


def test_multidict_headers_are_case_insensitive() -> None:
    h = CIMultiDict({"X-AMZN-ERRORTYPE": "ThrottlingException"})
    assert error_body.parse(b'{"message":"slow down"}', h) == ProviderError("aws", "ThrottlingException", "", "slow down")


def test_structured() -> None:
    assert error_body.parse(b'{"error":{"message":"m"}}').structured
    assert not error_body.parse(b"text").structured and not error_body.parse(b"").structured


def test_fields_are_bounded() -> None:
    huge = "x" * 10_000  # the body stays under MAX_ERROR_BODY
    e = error_body.parse(b'{"error":{"message":"%s","type":"%s","code":"%s"}}' % ((huge.encode(),) * 3))
    assert (len(e.message), len(e.type), len(e.code)) == (MAX_MESSAGE, MAX_FIELD, MAX_FIELD)
    assert e.message == huge[:MAX_MESSAGE]


def test_a_body_over_the_limit_is_text_never_decoded() -> None:
    body = b'{"error":{"message":"hidden","type":"t"},"pad":"' + b"p" * MAX_ERROR_BODY + b'"}'
    e = error_body.parse(body)
    assert e.shape == "text" and len(e.message) == MAX_TEXT and e.message.startswith('{"error"')
    # a caller's own (smaller) limit applies the same way
    assert error_body.parse(b'{"error":{"message":"m"}}', limit=10).shape == "text"


def test_nesting_too_deep_for_the_decoder_is_text() -> None:
    deep = b'{"error":' + b"[" * 50_000 + b"]" * 50_000 + b"}"
    e = error_body.parse(deep)
    assert e.shape == "text" and len(e.message) <= MAX_TEXT


def test_from_object_reads_stream_error_events() -> None:
    assert error_body.from_object({"type": "error", "error": {"type": "overloaded_error", "message": "busy"}}) == \
        ProviderError("anthropic", "overloaded_error", "", "busy")
    assert error_body.from_object({"error": {"message": "m", "code": "c"}}) == ProviderError("openai", "", "c", "m")
    assert error_body.from_object(None) == ProviderError("empty")
    assert error_body.from_object(["error"]) == ProviderError("empty")


@pytest.mark.parametrize("raw", [b"\x00", b"{", b"}", b"null", b"true", b"1e999", b'{"error":null}',
                                 b'{"message":{"nested":1}}', b'{"Message":5}', b'{"__type":7}', b"\xef\xbb\xbf{}"])
def test_never_raises(raw: bytes) -> None:
    assert isinstance(error_body.parse(raw), ProviderError)
