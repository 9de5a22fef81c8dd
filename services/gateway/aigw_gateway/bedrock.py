"""Anthropic Messages on AWS Bedrock: request transform, SigV4 signing, response translation.

The client speaks the Anthropic Messages API to ``/{name}/v1/messages``; Bedrock
wants ``POST {base}/model/{model id}/invoke`` (or ``/invoke-with-response-stream``)
with a slightly different body, signed with SigV4:

- model: the provider's configured ``model`` (``small_fast_model`` when the
  requested name contains "haiku"), moved from the body into the URL; ``stream``
  picks the URL and is dropped; ``anthropic_version: bedrock-2023-05-31`` added.
- fields Bedrock rejects ("Extra inputs are not permitted"): ``metadata``,
  ``service_tier``, ``container``, ``inference_geo``; beta-gated fields
  (``output_config`` needs ``effort-2025-11-24``, ``context_management`` needs
  ``context-management-2025-06-27``) unless their beta survives filtering.
- ``anthropic-beta``: only flags Bedrock accepts for this model, moved into the
  body as ``anthropic_beta`` (Bedrock reads them there, not from the header).
- thinking per model: models without adaptive thinking get ``adaptive`` →
  ``enabled`` with ``budget_tokens = max_tokens * ratio(effort)``, dropped below
  1024; adaptive-only models get ``enabled`` → ``adaptive`` (budget dropped,
  ``output_config.effort`` kept, ``output_config.format`` stripped).

Responses: the event stream is re-emitted as Anthropic SSE
(:class:`aigw_gateway.eventstream.BedrockSSE`), and its events go straight to the
Messages usage extractor (:meth:`SSEFilter.meter`); a blocking body is already
Anthropic JSON; error bodies (``{"message"}`` + ``x-amzn-ErrorType``) become
Anthropic error JSON.
"""

from __future__ import annotations

import base64
import dataclasses
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import quote, unquote

import msgspec
from yarl import URL

from aigw_common.llm import bedrock as llm_bedrock
from aigw_common.llm import error_body
from aigw_common.sse import EventSink

from . import sigv4
from .errors import anthropic_error
from .eventstream import CONTENT_TYPE as EVENTSTREAM_CONTENT_TYPE
from .eventstream import BedrockSSE, anthropic_error_type

BEDROCK_VERSION = "bedrock-2023-05-31"
SERVICE = "bedrock"

# Top-level Messages fields absent from Bedrock's request schema.
UNSUPPORTED_FIELDS = ("metadata", "service_tier", "container", "inference_geo")
# Body field → the beta flag that makes Bedrock accept it.
BETA_GATED_FIELDS = {"output_config": "effort-2025-11-24", "context_management": "context-management-2025-06-27"}
# Beta flags Bedrock accepts (others are a 400 "invalid beta flag"); value: model-id substrings that
# support the flag, or () for every model.
SUPPORTED_BETAS: dict[str, tuple[str, ...]] = {
    "computer-use-2025-01-24": (),
    "token-efficient-tools-2025-02-19": (),
    "interleaved-thinking-2025-05-14": (),
    "output-128k-2025-02-19": (),
    "dev-full-thinking-2025-05-14": (),
    "context-1m-2025-08-07": (),
    "context-management-2025-06-27": ("claude-sonnet-4-5", "claude-haiku-4-5"),
    "effort-2025-11-24": ("claude-opus-4-5",),
    "tool-search-tool-2025-10-19": ("claude-opus-4-5",),
    "tool-examples-2025-10-29": ("claude-opus-4-5",),
}
EFFORT_RATIO = {"low": 0.2, "medium": 0.5, "high": 0.8, "max": 0.95}
MIN_THINKING_BUDGET = 1024

ThinkingMode = Literal["budget", "adaptive", "adaptive-only"]
# "claude-sonnet-4-5-20250929", "anthropic.claude-opus-4-6-v1", "claude-sonnet-4-20250514" (4.0: the date is no minor)
_VERSION = re.compile(r"claude-(?:opus|sonnet|haiku)-(\d+)(?:-(\d{1,2}))?(?!\d)")


_THINKING_MODES: dict[str, ThinkingMode] = {"budget": "budget", "adaptive": "adaptive", "adaptive-only": "adaptive-only"}


def thinking_mode(model: str, override: str | None = None) -> ThinkingMode:
    """What thinking a Bedrock model accepts: budget only (≤ 4.5), both (4.6), adaptive only (≥ 4.7).

    Read from the version in the model id; a provider can pin it with settings ``thinking_mode``.
    """
    pinned = _THINKING_MODES.get(override or "")
    if pinned is not None:
        return pinned
    m = _VERSION.search(model)
    if not m:
        return "budget"
    version = (int(m.group(1)), int(m.group(2) or 0))
    if version >= (4, 7):
        return "adaptive-only"
    if version >= (4, 6):
        return "adaptive"
    return "budget"


def key_pair(credential: str) -> sigv4.Credentials | None:
    """AWS credentials from a pool key or BYOK credential that is an access-key pair
    (``llm.bedrock.access_key_pair``); None for a Bedrock API key."""
    pair = llm_bedrock.access_key_pair(credential)
    if pair is None:
        return None
    return sigv4.Credentials(pair.access_key_id, pair.secret, pair.session_token, source="pool")


def with_credentials(cfg: BedrockConfig, creds: sigv4.Credentials) -> BedrockConfig:
    """The provider's config signing with one pool key's credentials instead of its settings'."""
    return dataclasses.replace(cfg, credentials=sigv4.CredentialChain(creds, {}))


class BedrockConfigError(ValueError):
    """The provider's Bedrock settings are unusable (reported when the provider is loaded)."""


@dataclass(frozen=True, slots=True)
class BedrockConfig:
    base_url: str
    region: str
    model: str  # "" = use the requested model as the Bedrock model id
    small_fast_model: str
    thinking_override: str | None
    credentials: sigv4.CredentialChain

    @classmethod
    def from_provider(cls, base_url: str, settings: Mapping[str, Any], aws_env: Mapping[str, str]) -> BedrockConfig:
        """``settings``: region, access_key, access_key_secret, session_token, model, small_fast_model, thinking_mode."""

        def s(key: str) -> str:
            v = settings.get(key)
            return v.strip() if isinstance(v, str) else ""

        region = s("region") or llm_bedrock.region_of(base_url)
        if not region:
            raise BedrockConfigError("bedrock provider needs settings.region (or a bedrock-runtime.<region> base URL)")
        key, secret = s("access_key"), s("access_key_secret")
        if bool(key) != bool(secret):
            raise BedrockConfigError("bedrock access_key and access_key_secret must be set together")
        static = sigv4.Credentials(key, secret, s("session_token") or None) if key else None
        mode = s("thinking_mode") or None
        if mode is not None and mode not in ("budget", "adaptive", "adaptive-only"):
            raise BedrockConfigError(f"bedrock thinking_mode {mode!r}: expected budget, adaptive or adaptive-only")
        return cls(
            base_url=(base_url or llm_bedrock.runtime_url(region)).rstrip("/"),
            region=region,
            model=s("model"),
            small_fast_model=s("small_fast_model"),
            thinking_override=mode,
            credentials=sigv4.CredentialChain(static, aws_env),
        )

    def pick_model(self, requested: str) -> str:
        if "haiku" in requested and self.small_fast_model:
            return self.small_fast_model
        return self.model or requested


# ---------------------------------------------------------------- body transform


def filter_betas(header_values: Iterable[str], model: str) -> list[str]:
    """Split comma lists, keep flags Bedrock accepts for ``model``, in order, without duplicates."""
    keep: list[str] = []
    for value in header_values:
        for raw in value.split(","):
            flag = raw.strip()
            if flag not in SUPPORTED_BETAS or flag in keep:
                continue
            models = SUPPORTED_BETAS[flag]
            if models and not any(m in model for m in models):
                continue
            keep.append(flag)
    return keep


def _adaptive_to_budget(body: dict[str, Any]) -> None:
    max_tokens = body.get("max_tokens")
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens <= 0:
        return  # invalid request either way: let Bedrock say so
    oc = body.get("output_config")
    effort = oc.get("effort") if isinstance(oc, dict) else None
    budget = int(max_tokens * EFFORT_RATIO.get(effort if isinstance(effort, str) else "high", 0.8))
    if budget < MIN_THINKING_BUDGET:
        # Forcing the minimum would starve the answer; no thinking is the better trade.
        del body["thinking"]
    else:
        body["thinking"] = {"type": "enabled", "budget_tokens": budget}


def _budget_to_adaptive(body: dict[str, Any]) -> None:
    thinking = {k: v for k, v in body["thinking"].items() if k != "budget_tokens"}
    thinking["type"] = "adaptive"
    body["thinking"] = thinking


@dataclass(frozen=True, slots=True)
class Transformed:
    body: dict[str, Any]
    model: str
    stream: bool
    betas: list[str]


def transform_body(body: dict[str, Any], beta_headers: Iterable[str], cfg: BedrockConfig) -> Transformed:
    """Rewrite an Anthropic Messages body (a decoded dict, modified in place) for Bedrock."""
    requested = body.pop("model", "")
    model = cfg.pick_model(requested if isinstance(requested, str) else "")
    stream = body.pop("stream", False) is True
    mode = thinking_mode(model, cfg.thinking_override)

    thinking = body.get("thinking")
    ttype = thinking.get("type") if isinstance(thinking, dict) else None
    if ttype == "adaptive" and mode == "budget":
        _adaptive_to_budget(body)
    elif ttype == "enabled" and mode == "adaptive-only":
        _budget_to_adaptive(body)

    betas = filter_betas(beta_headers, model)
    for f in UNSUPPORTED_FIELDS:
        body.pop(f, None)
    for f, flag in BETA_GATED_FIELDS.items():
        if f == "output_config" and mode != "budget":
            continue  # effort is GA with adaptive thinking; handled below
        if flag not in betas:
            body.pop(f, None)
    oc = body.get("output_config")
    if mode != "budget" and isinstance(oc, dict) and "format" in oc:
        oc = {k: v for k, v in oc.items() if k != "format"}
        if oc:
            body["output_config"] = oc
        else:
            del body["output_config"]

    body["anthropic_version"] = BEDROCK_VERSION
    if betas:
        existing = body.get("anthropic_beta")
        merged = [b for b in existing if isinstance(b, str)] if isinstance(existing, list) else []
        body["anthropic_beta"] = merged + [b for b in betas if b not in merged]
    return Transformed(body, model, stream, betas)


# ---------------------------------------------------------------- requests

Kind = Literal["messages", "count_tokens", "models", "model"]


@dataclass(frozen=True, slots=True)
class BedrockRequest:
    kind: Kind
    method: str
    url: URL  # already encoded: send as is (the signature covers its raw path)
    headers: dict[str, str]  # the headers to set upstream, SigV4 (or a Bedrock API key) included
    body: bytes
    model: str
    stream: bool
    credential_source: str  # "static" | "env" | "shared-file:<profile>" | "bearer"
    access_key: str


def model_path(model: str) -> str:
    # ':' stays literal (as AWS SDKs send it); '/' in ARNs and everything else is percent-encoded.
    return "/model/" + quote(model, safe=":")


def control_base_url(cfg: BedrockConfig) -> str:
    """The Bedrock control plane (model listing) next to the runtime endpoint; a custom base URL serves both."""
    return llm_bedrock.control_url(cfg.base_url)


def _decode_object(body: bytes) -> dict[str, Any]:
    try:
        data = msgspec.json.decode(body)
    except msgspec.DecodeError as e:
        raise ValueError(f"request body is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise ValueError("request body must be a JSON object")
    return data


def _finish(cfg: BedrockConfig, kind: Kind, method: str, url: str, body: bytes, model: str, stream: bool,
            bearer: str | None, now: float | None) -> BedrockRequest:
    u = URL(url, encoded=True)
    host = u.raw_host or ""
    if u.port is not None and not u.is_default_port():
        host = f"{host}:{u.port}"
    headers = {"host": host, "accept": EVENTSTREAM_CONTENT_TYPE if stream else "application/json"}
    if body or method == "POST":
        headers["content-type"] = "application/json"
    if bearer:  # a Bedrock API key: AWS accepts it as a bearer token instead of SigV4
        headers["authorization"] = f"Bearer {bearer}"
        return BedrockRequest(kind, method, u, headers, body, model, stream, "bearer", "")
    creds = cfg.credentials.get()
    extra = {"content-type": headers["content-type"]} if "content-type" in headers else None
    headers.update(sigv4.sign_headers(
        creds, region=cfg.region, service=SERVICE, method=method, host=host, raw_path=u.raw_path,
        raw_query=u.raw_query_string, body=body, extra=extra, now=now,
    ))
    return BedrockRequest(kind, method, u, headers, body, model, stream, creds.source, creds.access_key)


def build_request(cfg: BedrockConfig, body: bytes, beta_headers: Iterable[str], *, bearer: str | None = None,
                  now: float | None = None) -> BedrockRequest:
    """``POST /v1/messages`` → InvokeModel / InvokeModelWithResponseStream. ValueError for a body that is
    not a JSON object; :class:`aigw_gateway.sigv4.CredentialsError` when no AWS credentials are found."""
    t = transform_body(_decode_object(body), beta_headers, cfg)
    if not t.model:
        raise ValueError("model: field required (and the bedrock provider has no model configured)")
    suffix = "/invoke-with-response-stream" if t.stream else "/invoke"
    return _finish(cfg, "messages", "POST", cfg.base_url + model_path(t.model) + suffix,
                   msgspec.json.encode(t.body), t.model, t.stream, bearer, now)


def build_count_tokens(cfg: BedrockConfig, body: bytes, beta_headers: Iterable[str], *, bearer: str | None = None,
                       now: float | None = None) -> BedrockRequest:
    """``POST /v1/messages/count_tokens`` → CountTokens, whose input is the InvokeModel body (base64)."""
    data = _decode_object(body)
    data.setdefault("max_tokens", 1)  # required by the InvokeModel schema, irrelevant to the count
    t = transform_body(data, beta_headers, cfg)
    if not t.model:
        raise ValueError("model: field required (and the bedrock provider has no model configured)")
    inner = base64.b64encode(msgspec.json.encode(t.body)).decode()
    out = msgspec.json.encode({"input": {"invokeModel": {"body": inner}}})
    return _finish(cfg, "count_tokens", "POST", cfg.base_url + model_path(t.model) + "/count-tokens", out,
                   t.model, False, bearer, now)


def build_models(cfg: BedrockConfig, model_id: str | None, *, bearer: str | None = None,
                 now: float | None = None) -> BedrockRequest:
    """``GET /v1/models[/{id}]`` → ListFoundationModels (Anthropic's) / GetFoundationModel."""
    base = control_base_url(cfg) + "/foundation-models"
    if model_id is None:
        return _finish(cfg, "models", "GET", base + "?byProvider=Anthropic", b"", "", False, bearer, now)
    return _finish(cfg, "model", "GET", base + "/" + quote(model_id, safe=":"), b"", model_id, False, bearer, now)


def plan(cfg: BedrockConfig, method: str, path: str, body: bytes, beta_headers: Iterable[str], *,
         bearer: str | None = None) -> BedrockRequest | None:
    """The Bedrock request for a client route, or None when Bedrock has no equivalent."""
    if method == "POST" and path == "/v1/messages":
        return build_request(cfg, body, beta_headers, bearer=bearer)
    if method == "POST" and path == "/v1/messages/count_tokens":
        return build_count_tokens(cfg, body, beta_headers, bearer=bearer)
    if method == "GET" and path == "/v1/models":
        return build_models(cfg, None, bearer=bearer)
    if method == "GET" and path.startswith("/v1/models/") and "/" not in path[11:] and path[11:]:
        return build_models(cfg, unquote(path[11:]), bearer=bearer)
    return None


# ---------------------------------------------------------------- responses


class SSEFilter:
    """Bedrock's event stream → Anthropic SSE, chunk by chunk."""

    content_type = "text/event-stream"
    streaming = True

    def __init__(self) -> None:
        self._t = BedrockSSE()

    @property
    def error(self) -> str | None:
        return self._t.error

    def feed(self, chunk: bytes) -> bytes:
        return self._t.feed(chunk)

    def finish(self) -> bytes:
        return self._t.finish()

    def meter(self, sink: EventSink) -> bool:
        """The events it writes also go to ``sink``, as they are decoded: no need to read the SSE back."""
        self._t.sink = sink
        return True


class BufferFilter:
    """Collect the whole (small) body, then translate it once."""

    content_type = "application/json"
    streaming = False

    def __init__(self, translate: Callable[[bytes], bytes]) -> None:
        self._buf = bytearray()
        self._translate = translate

    def feed(self, chunk: bytes) -> bytes:
        self._buf += chunk
        return b""

    def finish(self) -> bytes:
        return self._translate(bytes(self._buf))

    def meter(self, sink: EventSink) -> bool:
        return False  # one JSON body: read what it returns


def response_filter(kind: Kind, stream: bool, status: int, headers: Mapping[str, str]) -> SSEFilter | BufferFilter | None:
    if status >= 400:
        return BufferFilter(lambda b: anthropic_error_body(status, headers, b))
    if kind == "messages":
        return SSEFilter() if stream else None  # a blocking InvokeModel body is already an Anthropic message
    if kind == "count_tokens":
        return BufferFilter(count_tokens_response)
    return BufferFilter(models_response if kind == "models" else model_response)


class _Count(msgspec.Struct):
    inputTokens: int = 0


def count_tokens_response(body: bytes) -> bytes:
    return msgspec.json.encode({"input_tokens": msgspec.json.decode(body, type=_Count).inputTokens})


class _Summary(msgspec.Struct):
    modelId: str
    modelName: str = ""


class _Summaries(msgspec.Struct):
    modelSummaries: list[_Summary] = []


class _Details(msgspec.Struct):
    modelDetails: _Summary


def _anthropic_model(m: _Summary) -> dict[str, str]:
    # Bedrock does not say when a model was released; the epoch keeps the field well-formed.
    return {"type": "model", "id": m.modelId, "display_name": m.modelName or m.modelId,
            "created_at": "1970-01-01T00:00:00Z"}


def models_response(body: bytes) -> bytes:
    data = [_anthropic_model(m) for m in msgspec.json.decode(body, type=_Summaries).modelSummaries]
    return msgspec.json.encode({"data": data, "has_more": False, "first_id": data[0]["id"] if data else None,
                                "last_id": data[-1]["id"] if data else None})


def model_response(body: bytes) -> bytes:
    return msgspec.json.encode(_anthropic_model(msgspec.json.decode(body, type=_Details).modelDetails))


# ---------------------------------------------------------------- errors


# the exception Bedrock means by a status, when its x-amzn-ErrorType header is missing
_STATUS_EXCEPTIONS = {400: "ValidationException", 403: "AccessDeniedException", 404: "ResourceNotFoundException",
                      408: "ModelTimeoutException", 429: "ThrottlingException", 503: "ServiceUnavailableException"}


def anthropic_error_body(status: int, headers: Mapping[str, str], body: bytes) -> bytes:
    """A Bedrock error response body → ``{"type":"error","error":{"type","message"}}``."""
    e = error_body.parse(body, headers)
    code = e.type if e.shape in ("aws", "text") and e.type else _STATUS_EXCEPTIONS.get(status, "InternalServerException")
    message = e.message or code
    return anthropic_error(anthropic_error_type(code), message)
