"""A mock AWS Bedrock runtime: a real HTTP server that checks SigV4 and replays Anthropic fixtures.

It answers ``POST /model/{id}/invoke`` (the fixture's ``non-streaming`` section
as JSON) and ``POST /model/{id}/invoke-with-response-stream`` (the fixture's
``streaming`` SSE, one Anthropic event per AWS event-stream ``chunk`` frame).
Every request must carry a valid SigV4 signature for the configured access key
and secret — recomputed with botocore's signer, an implementation independent
of the gateway's — or it gets Bedrock's 403 error shape. The body is checked
the way Bedrock does: ``anthropic_version`` required; ``model``, ``stream`` and
the fields Bedrock does not know are a 400 ``ValidationException``; beta flags
must be ones Bedrock accepts; ``thinking.type`` must suit the model.

``mock.stream_exception = ("throttlingException", "…", n)`` sends an exception
frame after ``n`` events; ``mock.fail = (status, "ThrottlingException", "…")``
answers every request with a Bedrock error.
"""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass

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


@dataclass
class SeenBedrock(SeenRequest):
    model: str = ""
    streaming: bool = False
    signed_headers: tuple[str, ...] = ()


def aws_error(status: int, code: str, message: str) -> web.Response:
    return web.Response(
        status=status, body=msgspec.json.encode({"message": message}),
        headers={"Content-Type": "application/json", "x-amzn-ErrorType": f"{code}:http://internal.amazon.com/coral/com.amazon.bedrock/",
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
        self.adaptive_models: tuple[str, ...] = ("claude-opus-4-6", "claude-sonnet-4-6")
        self.stream_exception: tuple[str, str, int] | None = None
        self.fail: tuple[int, str, str] | None = None
        self.rejections: list[tuple[int, str, str]] = []

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        resp = await self._check(request, body)
        if resp is not None:
            return resp
        if self.handler is not None and (custom := await self.handler(request, body)) is not None:
            return custom
        if self.fail is not None:
            return aws_error(*self.fail)
        if self.fixture is None:
            return aws_error(500, "InternalServerException", "mock bedrock has no fixture")
        seen = self.requests[-1]
        assert isinstance(seen, SeenBedrock)
        if not seen.streaming:
            rec = self.fixture.response("non-streaming")
            return web.Response(status=rec.status, body=rec.body, headers={
                "Content-Type": "application/json", "x-amzn-bedrock-input-token-count": "10"})
        return await self._stream(request, self.fixture.response("streaming").body)

    def _reject(self, status: int, code: str, message: str) -> web.Response:
        self.rejections.append((status, code, message))
        return aws_error(status, code, message)

    async def _check(self, request: web.Request, body: bytes) -> web.Response | None:
        from botocore.auth import SigV4Auth
        from botocore.awsrequest import AWSRequest
        from botocore.credentials import Credentials

        raw_path = request.raw_path.partition("?")[0]
        parts = raw_path.split("/")
        if request.method != "POST" or len(parts) != 4 or parts[1] != "model" or parts[3] not in (
                "invoke", "invoke-with-response-stream"):
            return self._reject(404, "UnknownOperationException", f"unknown operation {request.method} {raw_path}")
        from urllib.parse import unquote

        seen = SeenBedrock(request.method, request.path, request.query_string, request.headers, body,
                           model=unquote(parts[2]), streaming=parts[3] == "invoke-with-response-stream")
        self.requests.append(seen)
        self.count_by_key[self.access_key] += 1

        # --- SigV4, recomputed with botocore from what was received
        auth = request.headers.get("Authorization", "")
        try:
            algo, _, rest = auth.partition(" ")
            fields = dict(p.strip().split("=", 1) for p in rest.split(","))
            akid, date, region, service, _term = fields["Credential"].split("/")
            signed = tuple(fields["SignedHeaders"].split(";"))
            given = fields["Signature"]
        except (KeyError, ValueError):
            return self._reject(403, "IncompleteSignatureException", "Authorization header requires a valid SigV4 value")
        seen.signed_headers = signed
        if algo != "AWS4-HMAC-SHA256" or akid != self.access_key:
            return self._reject(403, "UnrecognizedClientException", "The security token included in the request is invalid.")
        if region != self.region or service != "bedrock":
            return self._reject(403, "InvalidSignatureException", f"Credential should be scoped to a valid region/service, not {region}/{service}")
        if self.session_token is not None and request.headers.get("X-Amz-Security-Token") != self.session_token:
            return self._reject(403, "UnrecognizedClientException", "The security token included in the request is invalid.")
        if not {"host", "x-amz-date"} <= set(signed) or (
                "x-amz-security-token" in request.headers and "x-amz-security-token" not in signed):
            return self._reject(403, "InvalidSignatureException", "host, x-amz-date and the security token must be signed")
        declared = request.headers.get("X-Amz-Content-SHA256")
        if declared is not None and declared != hashlib.sha256(body).hexdigest():
            return self._reject(400, "XAmzContentSHA256Mismatch", "The provided 'x-amz-content-sha256' header does not match what was computed.")
        amz_date = request.headers.get("X-Amz-Date", "")
        if amz_date[:8] != date:
            return self._reject(403, "InvalidSignatureException", "Date in Credential scope does not match X-Amz-Date")
        headers = {k: v for k, v in request.headers.items() if k.lower() in signed and k.lower() != "host"}
        areq = AWSRequest(method=request.method, url=f"http://{request.headers.get('Host', '')}{request.raw_path}",
                          data=body, headers=headers)
        signer = SigV4Auth(Credentials(self.access_key, self.secret_key, self.session_token), "bedrock", self.region)
        areq.context["timestamp"] = amz_date
        expected = signer.signature(signer.string_to_sign(areq, signer.canonical_request(areq)), areq)
        if expected != given:
            return self._reject(403, "InvalidSignatureException", SIGNATURE_MISMATCH)

        # --- body, as Bedrock validates it
        try:
            data = msgspec.json.decode(body)
        except msgspec.DecodeError:
            return self._reject(400, "ValidationException", "Malformed input request, please reformat your input and try again.")
        if not isinstance(data, dict):
            return self._reject(400, "ValidationException", "Malformed input request: expected a JSON object")
        if not isinstance(data.get("anthropic_version"), str):  # the gateway sends bedrock-2023-05-31
            return self._reject(400, "ValidationException", "Malformed input request: #: required key [anthropic_version] not found")
        extra = sorted(set(data) - BEDROCK_FIELDS)
        if extra:
            return self._reject(400, "ValidationException", f"{extra[0]}: Extra inputs are not permitted")
        bad = [b for b in data.get("anthropic_beta", []) if b not in BEDROCK_BETAS]
        if bad:
            return self._reject(400, "ValidationException", f"invalid beta flag: {bad[0]}")
        thinking = data.get("thinking")
        if isinstance(thinking, dict):
            adaptive_ok = any(m in seen.model for m in self.adaptive_models)
            if thinking.get("type") == "adaptive" and not adaptive_ok:
                return self._reject(400, "ValidationException", "thinking.type: adaptive is not supported by this model")
            if thinking.get("type") == "enabled" and not (
                    isinstance(thinking.get("budget_tokens"), int) and 1024 <= thinking["budget_tokens"] < data.get("max_tokens", 0)):
                return self._reject(400, "ValidationException", "thinking.budget_tokens: must be ≥ 1024 and less than max_tokens")
        return None

    async def _stream(self, request: web.Request, sse: bytes) -> web.StreamResponse:
        from aigw_gateway.eventstream import encode_chunk, encode_exception

        resp = web.StreamResponse(status=200, headers={
            "Content-Type": "application/vnd.amazon.eventstream", "x-amzn-RequestId": "00000000-0000-0000-0000-000000000001"})
        await resp.prepare(request)
        try:
            for i, event in enumerate(split_events(sse)):
                if self.stream_exception is not None and i == self.stream_exception[2]:
                    await resp.write(encode_exception(self.stream_exception[0], self.stream_exception[1]))
                    break
                data = next(line[6:] for line in event.split(b"\n") if line.startswith(b"data: "))
                await resp.write(encode_chunk(data, pad="abcdefghij"[: len(data) % 11]))
                if self.event_delay:
                    await asyncio.sleep(self.event_delay)
            await resp.write_eof()
        except (ConnectionResetError, asyncio.CancelledError):
            self.disconnects += 1
            raise
        return resp
