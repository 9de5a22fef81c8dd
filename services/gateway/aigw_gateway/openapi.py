"""The gateway's OpenAPI document, generated from the adapters' route knowledge (``adapters.Adapters``).

The gateway serves the providers' own APIs under ``/{provider}``, so bodies are the providers' (described
as free-form objects with a link to their reference); what this document pins down is which method and path
each provider type accepts, bridged (parsed, metered, recorded) or passed through, and the error shapes the
gateway itself answers with. ``aigw openapi`` writes it to ``docs/openapi/gateway.json``; ``docs/api.md``
is the human page.
"""

from __future__ import annotations

from typing import Any

from .adapters import Adapter, Adapters
from .routing import PREFIXES

# Bridged endpoints the adapters may recognise (each adapter says which of these it serves).
_BRIDGED_CANDIDATES = ("/v1/chat/completions", "/v1/responses", "/v1/messages", "/chat/completions", "/responses")
_REFERENCE = {
    "chat_completions": "https://platform.openai.com/docs/api-reference/chat",
    "responses": "https://platform.openai.com/docs/api-reference/responses",
    "messages": "https://docs.anthropic.com/en/api/messages",
}
_ERRORS = {
    "OpenAIError": {"type": "object", "required": ["error"], "properties": {"error": {
        "type": "object", "required": ["message", "type"],
        "properties": {"message": {"type": "string"}, "type": {"type": "string"},
                       "code": {"type": ["string", "null"]}, "param": {"type": ["string", "null"]}}}}},
    "AnthropicError": {"type": "object", "required": ["type", "error"], "properties": {
        "type": {"const": "error"},
        "error": {"type": "object", "required": ["type", "message"],
                  "properties": {"type": {"type": "string"}, "message": {"type": "string"}}}}},
}
_GATEWAY_ERRORS = {
    "400": "Unparsable body, model name over 256 bytes, or a hostile path (dot segments, encoded separators)",
    "401": "Missing, unknown or revoked aigw token",
    "403": "Outside the token's scope or role, or BYOK not enabled for this provider",
    "404": "Unknown provider, or a route this provider type does not serve",
    "413": "Request body over AIGW_MAX_BODY_BYTES",
    "429": "A budget or rate limit is exhausted, or every key of the pool is cooling (Retry-After)",
    "502": "Upstream unreachable, or every key revoked",
    "503": "Circuit open for this provider, endpoint and model (Retry-After)",
    "504": "Upstream did not answer in time",
}


def _template(parts: tuple[str, ...]) -> str:
    """Path segments with ``{id}`` placeholders → an OpenAPI path whose parameters have distinct names."""
    n = sum(p == "{id}" for p in parts)
    out, i = [], 0
    for p in parts:
        if p == "{id}":
            i += 1
            out.append("{id}" if n == 1 else f"{{id{i}}}")
        else:
            out.append(p)
    return "/" + "/".join(out)


def _operations() -> dict[tuple[str, str], dict[str, Any]]:
    """(method, path under /{provider}) → {"types": [...], "endpoint": bridged endpoint or None}."""
    ops: dict[tuple[str, str], dict[str, Any]] = {}
    by_adapter: dict[int, tuple[Adapter, list[str]]] = {}
    for ptype, adapter in Adapters().items():
        by_adapter.setdefault(id(adapter), (adapter, []))[1].append(ptype)
    for adapter, types in by_adapter.values():
        for path in _BRIDGED_CANDIDATES:
            endpoint = adapter.endpoint("POST", path)
            if endpoint is not None:
                op = ops.setdefault(("POST", path), {"types": [], "endpoint": endpoint})
                op["types"] += types
        for route in adapter.passthrough_routes:
            for method in sorted(route.methods):
                op = ops.setdefault((method, _template(route.parts)), {"types": [], "endpoint": None})
                op["types"] += types
    return ops


def _error_components() -> dict[str, Any]:
    schema = {"oneOf": [{"$ref": "#/components/schemas/OpenAIError"}, {"$ref": "#/components/schemas/AnthropicError"}]}
    return {f"E{code}": {"description": f"{why} (in the provider's own error format)",
                         "content": {"application/json": {"schema": schema}}} for code, why in _GATEWAY_ERRORS.items()}


_ERROR_REFS = {code: {"$ref": f"#/components/responses/E{code}"} for code in _GATEWAY_ERRORS}


def document() -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    provider = {"name": "provider", "in": "path", "required": True, "description": "the provider's name",
                "schema": {"type": "string", "pattern": "^[a-z0-9]+(-[a-z0-9]+)*$"}, "example": "openai"}
    for (method, path), op in sorted(_operations().items(), key=lambda kv: (kv[0][1], kv[0][0])):
        types = sorted(set(op["types"]))
        endpoint = op["endpoint"]
        params = [provider] + [{"name": name, "in": "path", "required": True, "schema": {"type": "string"},
                                "description": "an id segment ([A-Za-z0-9_.:-]+, never . or ..)"}
                               for name in ("id", "id1", "id2") if "{" + name + "}" in path]
        if endpoint is not None:
            summary = f"Bridged: {endpoint} (authenticated, routed to a pool key, metered, recorded)"
            ok = {"description": "The provider's answer, relayed byte for byte (a stream event by event)",
                  "content": {"application/json": {"schema": {"type": "object"}},
                              "text/event-stream": {"schema": {"type": "string"}}}}
            description = (f"Request and response bodies are the provider's ({_REFERENCE[endpoint]}). "
                           f"Provider types: {', '.join(types)}.")
        else:
            summary = "Pass-through (authenticated, routed to a pool key, relayed unchanged)"
            ok = {"description": "The provider's answer, relayed unchanged",
                  "content": {"application/json": {"schema": {"type": "object"}}}}
            description = f"Provider types: {', '.join(types)}."
        operation: dict[str, Any] = {
            "operationId": f"{method.lower()}_" + "_".join(
                s.strip("{}") for s in path.split("/") if s) + ("_bridged" if endpoint else ""),
            "summary": summary, "description": description, "tags": ["bridged" if endpoint else "pass-through"],
            "parameters": params, "responses": {"200": ok, **_ERROR_REFS}}
        if method in ("POST", "PUT", "PATCH"):
            operation["requestBody"] = {"required": method == "POST" and endpoint is not None,
                                        "content": {"application/json": {"schema": {"type": "object"}}}}
        paths.setdefault("/{provider}" + path, {})[method.lower()] = operation
    paths["/v1/models"] = {"get": {  # proxy.Gateway.handle → catalog.ModelCatalog (no provider prefix)
        "operationId": "get_models_all_providers", "tags": ["models"],
        "summary": "The models the caller may use across providers (OpenAI list shape, ids provider/model)",
        "responses": {"200": {"description": "OK", "content": {"application/json": {"schema": {
            "type": "object", "required": ["object", "data"],
            "properties": {"object": {"const": "list"}, "data": {"type": "array", "items": {
                "type": "object", "required": ["id", "object"],
                "properties": {"id": {"type": "string"}, "object": {"const": "model"},
                               "owned_by": {"type": "string"}}}}}}}}},
            **{c: _ERROR_REFS[c] for c in ("401", "403")}}}}
    for probe, what in (("/healthz", "Alive"), ("/readyz", "Ready to serve (NATS connected or last state known)"),
                        ("/metrics", "Prometheus metrics")):
        paths[probe] = {"get": {"operationId": "get_" + probe.strip("/"), "summary": what, "tags": ["meta"],
                                "security": [], "responses": {"200": {"description": "OK"}}}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "aigw gateway", "version": "2", "description": (
            "The providers' APIs, served under /{provider} (the provider's name). Every route is also accepted "
            f"under the prefixes {', '.join(PREFIXES)}. The aigw token arrives as Authorization: Bearer or "
            "X-Api-Key (a pool key replaces it), or as X-AIGW-Token with the caller's own provider credential "
            "(BYOK). See docs/api.md.")},
        "paths": paths,
        "components": {
            "schemas": _ERRORS,
            "responses": _error_components(),
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "description": "an aigw token"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-Api-Key", "description": "an aigw token"},
                "byok": {"type": "apiKey", "in": "header", "name": "X-AIGW-Token",
                         "description": "an aigw token, with the caller's provider credential in Authorization "
                                        "or X-Api-Key"},
            },
        },
        "security": [{"bearer": []}, {"apiKey": []}, {"byok": []}],
    }


__all__ = ["document"]
