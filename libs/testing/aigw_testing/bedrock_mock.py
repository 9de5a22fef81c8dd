"""A mock AWS Bedrock: a real HTTP server that checks SigV4 and replays Anthropic fixtures.

Operations: ``POST /model/{id}/invoke`` (the fixture's ``non-streaming``
section as JSON), ``POST /model/{id}/invoke-with-response-stream`` (the
fixture's ``streaming`` SSE, one Anthropic event per AWS event-stream
``chunk`` frame), ``POST /model/{id}/count-tokens`` (``{"inputTokens":
mock.input_tokens}``), and the control plane's ``GET /foundation-models`` /
``GET /foundation-models/{id}`` (from ``mock.models``).

Every request must carry a valid SigV4 signature for the configured access key
and secret — recomputed with botocore's signer, an implementation independent
of the gateway's — or a Bedrock API key from ``mock.api_keys`` as a bearer;
otherwise Bedrock's 403 error shape. Bodies are checked the way Bedrock does:
``anthropic_version`` required; ``model``, ``stream`` and unknown fields are a
400 ``ValidationException`` ("Extra inputs are not permitted"); beta flags must
be ones Bedrock accepts; ``thinking`` must suit the model.

``mock.stream_exception = ("throttlingException", "…", n)`` sends an exception
frame after ``n`` events; ``mock.fail = (status, "ThrottlingException", "…")``
answers every operation with a Bedrock error.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

import msgspec
from aiohttp import web

from .upstream import MockUpstream, SeenRequest, split_events

BEDROCK_FIELDS = frozenset({
    "anthropic_version", "anthropic_beta", "max_tokens", "messages", "system", "stop_sequences", "temperature",
    "top_p", "top_k", "tools", "tool_choice", "thinking", "output_config", "context_management", "mcp_servers",
})
BEDROCK_BETAS = frozenset({
    "computer-use-2025-01-24", "token-efficient-tools-2025-02-19", "interleaved-thinking-2025-05-14",
    "output-128k-2025-02-19", "dev-full-thinking-2025-05-14", "context-1m-2025-08-07",
    "context-management-2025-06-27", "effort-2025-11-24", "tool-search-tool-2025-10-19", "tool-examples-2025-10-29",
})
SIGNATURE_MISMATCH = (
    "The request signature we calculated does not match the signature you provided. Check your AWS Secret "
    "Access Key and signing method. Consult the service documentation for details."
)
INVALID_TOKEN = "The security token included in the request is invalid."


@dataclass
class SeenBedrock(SeenRequest):
    operation: str = ""  # invoke | invoke-with-response-stream | count-tokens | list-models | get-model
    model: str = ""
    streaming: bool = False
    signed_headers: tuple[str, ...] = ()
    invoke_body: dict[str, Any] | None = None  # the InvokeModel body (count-tokens: decoded)


class Rejected(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def aws_error(status: int, code: str, message: str) -> web.Response:
    return web.Response(
        status=status, body=msgspec.json.encode({"message": message}),
        headers={"Content-Type": "application/json",
                 "x-amzn-ErrorType": f"{code}:http://internal.amazon.com/coral/com.amazon.bedrock/",
                 "x-amzn-RequestId": "00000000-0000-0000-0000-000000000000"},
    )


class MockBedrock(MockUpstream):
    def __init__(self, access_key: str = "AKIDMOCKBEDROCK", secret_key: str = "mock/bedrock+secret",
                 region: str = "us-east-1", session_token: str | None = None) -> None:
        super().__init__()
        self.access_key = access_key
        self.secret_key = secret_key
        self.region = region
        self.session_token = session_token
        self.api_keys: set[str] = set()  # Bedrock API keys accepted as "Authorization: Bearer"
        self.adaptive_models: tuple[str, ...] = ("claude-opus-4-6", "claude-sonnet-4-6")
        self.input_tokens = 17
        self.models = [
            {"modelId": "anthropic.claude-sonnet-4-5-20250929-v1:0", "modelName": "Claude Sonnet 4.5"},
            {"modelId": "anthropic.claude-haiku-4-5-20251001-v1:0", "modelName": "Claude Haiku 4.5"},
        ]
        self.stream_exception: tuple[str, str, int] | None = None
        self.fail: tuple[int, str, str] | None = None
        self.rejections: list[tuple[int, str, str]] = []

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        try:
            seen = self._route(request, body)
            self.requests.append(seen)
            self.count_by_key[seen.key] += 1
            self._authenticate(request, body, seen)
            if seen.operation in ("invoke", "invoke-with-response-stream"):
                seen.invoke_body = self._invoke_body(body, seen.model)
            elif seen.operation == "count-tokens":
                seen.invoke_body = self._count_tokens_body(body, seen.model)
        except Rejected as r:
            self.rejections.append((r.status, r.code, r.message))
            return aws_error(r.status, r.code, r.message)
        if self.handler is not None and (custom := await self.handler(request, body)) is not None:
            return custom
        if self.fail is not None:
            return aws_error(*self.fail)
        if seen.operation == "count-tokens":
            return web.json_response({"inputTokens": self.input_tokens})
        if seen.operation == "list-models":
            return web.json_response({"modelSummaries": [
                {**m, "providerName": "Anthropic", "modelArn": f"arn:aws:bedrock:{self.region}::foundation-model/{m['modelId']}",
                 "responseStreamingSupported": True} for m in self.models]})
        if seen.operation == "get-model":
            for m in self.models:
                if m["modelId"] == seen.model:
                    return web.json_response({"modelDetails": {**m, "providerName": "Anthropic"}})
            return aws_error(404, "ResourceNotFoundException", "The provided model identifier is invalid.")
        if self.fixture is None:
            return aws_error(500, "InternalServerException", "mock bedrock has no fixture")
        if not seen.streaming:
            rec = self.fixture.response("non-streaming")
            return web.Response(status=rec.status, body=rec.body, headers={
                "Content-Type": "application/json", "x-amzn-bedrock-input-token-count": "10"})
        return await self._stream(request, self.fixture.response("streaming").body)

    # ------------------------------------------------------------ checks

    def _route(self, request: web.Request, body: bytes) -> SeenBedrock:
        raw_path = request.raw_path.partition("?")[0]
        parts = raw_path.split("/")

        def seen(op: str, model: str = "") -> SeenBedrock:
            return SeenBedrock(request.method, request.path, request.query_string, request.headers, body,
                               operation=op, model=unquote(model), streaming=op == "invoke-with-response-stream")

        if request.method == "POST" and len(parts) == 4 and parts[1] == "model" and parts[3] in (
                "invoke", "invoke-with-response-stream", "count-tokens"):
            return seen(parts[3], parts[2])
        if request.method == "GET" and raw_path == "/foundation-models":
            return seen("list-models")
        if request.method == "GET" and len(parts) == 3 and parts[1] == "foundation-models":
            return seen("get-model", parts[2])
        self.requests.append(seen("unknown"))
        raise Rejected(404, "UnknownOperationException", f"unknown operation {request.method} {raw_path}")

    def _authenticate(self, request: web.Request, body: bytes, seen: SeenBedrock) -> None:
        from botocore.auth import SigV4Auth
        from botocore.awsrequest import AWSRequest
        from botocore.credentials import Credentials

        auth = request.headers.get("Authorization", "")
        if auth[:7].lower() == "bearer ":
            if auth[7:] in self.api_keys:
                return
            raise Rejected(403, "UnrecognizedClientException", INVALID_TOKEN)
        try:
            algo, _, rest = auth.partition(" ")
            fields = dict(p.strip().split("=", 1) for p in rest.split(","))
            akid, date, region, service, _term = fields["Credential"].split("/")
            signed = tuple(fields["SignedHeaders"].split(";"))
            given = fields["Signature"]
        except (KeyError, ValueError):
            raise Rejected(403, "IncompleteSignatureException", "Authorization header requires a valid SigV4 value") from None
        seen.signed_headers = signed
        if algo != "AWS4-HMAC-SHA256" or akid != self.access_key:
            raise Rejected(403, "UnrecognizedClientException", INVALID_TOKEN)
        if region != self.region or service != "bedrock":
            raise Rejected(403, "InvalidSignatureException", f"Credential should be scoped to a valid region/service, not {region}/{service}")
        if self.session_token is not None and request.headers.get("X-Amz-Security-Token") != self.session_token:
            raise Rejected(403, "UnrecognizedClientException", INVALID_TOKEN)
        if not {"host", "x-amz-date"} <= set(signed) or (
                "x-amz-security-token" in request.headers and "x-amz-security-token" not in signed):
            raise Rejected(403, "InvalidSignatureException", "host, x-amz-date and the security token must be signed")
        declared = request.headers.get("X-Amz-Content-SHA256")
        if declared is not None and declared != hashlib.sha256(body).hexdigest():
            raise Rejected(400, "XAmzContentSHA256Mismatch", "The provided 'x-amz-content-sha256' header does not match what was computed.")
        amz_date = request.headers.get("X-Amz-Date", "")
        if amz_date[:8] != date:
            raise Rejected(403, "InvalidSignatureException", "Date in Credential scope does not match X-Amz-Date")
        headers = {k: v for k, v in request.headers.items() if k.lower() in signed and k.lower() != "host"}
        areq = AWSRequest(method=request.method, url=f"http://{request.headers.get('Host', '')}{request.raw_path}",
                          data=body, headers=headers)
        signer = SigV4Auth(Credentials(self.access_key, self.secret_key, self.session_token), "bedrock", self.region)
        areq.context["timestamp"] = amz_date
        expected = signer.signature(signer.string_to_sign(areq, signer.canonical_request(areq)), areq)
        if expected != given:
            raise Rejected(403, "InvalidSignatureException", SIGNATURE_MISMATCH)

    def _count_tokens_body(self, body: bytes, model: str) -> dict[str, Any]:
        try:
            inner = base64.b64decode(msgspec.json.decode(body)["input"]["invokeModel"]["body"], validate=True)
        except (msgspec.DecodeError, KeyError, TypeError, binascii.Error):
            raise Rejected(400, "ValidationException", "input.invokeModel.body: a base64 InvokeModel body is required") from None
        return self._invoke_body(inner, model)

    def _invoke_body(self, body: bytes, model: str) -> dict[str, Any]:
        def invalid(message: str) -> Rejected:
            return Rejected(400, "ValidationException", message)

        try:
            data = msgspec.json.decode(body)
        except msgspec.DecodeError:
            raise invalid("Malformed input request, please reformat your input and try again.") from None
        if not isinstance(data, dict):
            raise invalid("Malformed input request: expected a JSON object")
        if not isinstance(data.get("anthropic_version"), str):  # the gateway sends bedrock-2023-05-31
            raise invalid("Malformed input request: #: required key [anthropic_version] not found")
        extra = sorted(set(data) - BEDROCK_FIELDS)
        if extra:
            raise invalid(f"{extra[0]}: Extra inputs are not permitted")
        bad = [b for b in data.get("anthropic_beta", []) if b not in BEDROCK_BETAS]
        if bad:
            raise invalid(f"invalid beta flag: {bad[0]}")
        thinking = data.get("thinking")
        if isinstance(thinking, dict):
            if thinking.get("type") == "adaptive" and not any(m in model for m in self.adaptive_models):
                raise invalid("thinking.type: adaptive is not supported by this model")
            budget = thinking.get("budget_tokens")
            if thinking.get("type") == "enabled" and not (
                    isinstance(budget, int) and 1024 <= budget < data.get("max_tokens", 0)):
                raise invalid("thinking.budget_tokens: must be at least 1024 and less than max_tokens")
        return data

    # ------------------------------------------------------------ streaming

    async def _stream(self, request: web.Request, sse: bytes) -> web.StreamResponse:
        from aigw_gateway.eventstream import encode_chunk, encode_exception

        def frames() -> Iterator[bytes]:
            for i, event in enumerate(split_events(sse)):
                if self.stream_exception is not None and i == self.stream_exception[2]:
                    yield encode_exception(self.stream_exception[0], self.stream_exception[1])
                    return
                data = next(line[6:] for line in event.split(b"\n") if line.startswith(b"data: "))
                yield encode_chunk(data, pad="abcdefghij"[: len(data) % 11])

        resp = web.StreamResponse(status=200, headers={
            "Content-Type": "application/vnd.amazon.eventstream", "x-amzn-RequestId": "00000000-0000-0000-0000-000000000001"})
        return await self.stream(request, resp, frames())
