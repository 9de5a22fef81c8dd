"""OpenAPI 3.1 documents for the control-plane services, generated from a route table and msgspec Structs.

A service lists its operations as :class:`Route`s (method, path, access, body and response Structs,
query parameters); :func:`build` turns them into the document, and :func:`serve_document` registers
``GET <path>`` answering it. The same Structs decode the bodies and describe the responses, so the
document cannot drift from them; a test compares each service's router with its document.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import msgspec
from aiohttp import web


@dataclass(frozen=True, slots=True)
class Query:
    name: str
    schema: dict[str, Any]
    description: str = ""


@dataclass(frozen=True, slots=True)
class Route:
    method: str
    path: str
    handler: Any  # the registry's route table also drives its router; other services pass None
    access: str  # "public" | "admin" | "user" (any signed-in user; the handler decides self vs. others)
    summary: str
    tag: str
    body: type | None = None
    response: type | None = None  # None: 204 No Content
    status: int = 200
    query: tuple[Query, ...] = field(default=())
    content_type: str = "application/json"  # of the response; text/event-stream for a stream
    not_found: bool = False  # 404 also without a path parameter (a query names a user or group that may not exist)

    @property
    def operation_id(self) -> str:
        path = re.sub(r"^/api/(v2|experimental)/", "", self.path)
        words = re.sub(r"[{}]", "", path).replace("-", "_").split("/")
        return f"{self.method.lower()}_" + "_".join(w for w in words if w)


class ValidationOut(msgspec.Struct):
    field: str
    detail: str


class ErrorOut(msgspec.Struct):
    """The control-plane error shape (``aigw_common.api.ApiError``)."""

    message: str
    detail: str | None
    validations: list[ValidationOut]


_PATH_PARAM = re.compile(r"{(\w+)}")
PARAM_DOCS: dict[str, tuple[str, str]] = {  # description, example
    "idOrName": ("provider id or name", "openai"),
    "keyId": ("key id", "00000000-0000-0000-0000-000000000000"),
    "user": ("user id, username, or `me`", "me"),
    "provider": ("provider id or name", "openai"),
    "tokenId": ("token id", "00000000-0000-0000-0000-000000000000"),
    "group": ("group id or name", "eng"),
    "ref": ("user or group: id or name (`me` for yourself)", "me"),
    "id": ("id", "00000000000000000000000000000000"),
    "chat": ("chat id", "00000000-0000-0000-0000-000000000000"),
    "skill": ("skill id or name", "terse"),
}
_OK = {200: "OK", 201: "Created", 202: "Accepted"}


def _error(description: str, error: type) -> dict[str, Any]:
    return {"description": description,
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{error.__name__}"}}}}


def build(routes: list[Route], *, title: str, description: str, version: str = "2", error: type = ErrorOut,
          unavailable: bool = False) -> dict[str, Any]:
    """The document for ``routes``. ``unavailable``: non-public operations may answer 503 (+ Retry-After) when a
    dependency (the identity service, the database) is away."""
    types: list[Any] = [error]
    for r in routes:
        types += [t for t in (r.body, r.response) if t is not None]
    _, components = msgspec.json.schema_components(list(dict.fromkeys(types)),
                                                   ref_template="#/components/schemas/{name}")
    paths: dict[str, dict[str, Any]] = {}
    for r in routes:
        params: list[dict[str, Any]] = [
            {"name": p, "in": "path", "required": True, "schema": {"type": "string", "minLength": 1},
             "description": PARAM_DOCS.get(p, (p, ""))[0], "example": PARAM_DOCS.get(p, (p, "x"))[1]}
            for p in _PATH_PARAM.findall(r.path)
        ]
        params += [{"name": q.name, "in": "query", "required": False, "schema": q.schema,
                    "description": q.description} for q in r.query]
        if r.response is None:
            ok: dict[str, Any] = {"description": "No Content"}
        elif r.content_type == "application/json":
            ok = {"description": _OK.get(r.status, "OK"), "content": {"application/json": {
                "schema": {"$ref": f"#/components/schemas/{r.response.__name__}"}}}}
        else:
            ok = {"description": _OK.get(r.status, "OK"), "content": {r.content_type: {"schema": {"type": "string"}}}}
        responses: dict[str, Any] = {str(r.status if r.response is not None else 204): ok}
        if r.body is not None or r.query or params:
            responses["400"] = _error("Invalid request", error)
        if r.access != "public":
            responses["401"] = _error("Missing, unknown or revoked token", error)
            responses["403"] = _error("Outside the caller's role", error)
        if _PATH_PARAM.search(r.path) or r.not_found:
            responses["404"] = _error("Not found", error)
        if r.method in ("POST", "PATCH", "PUT", "DELETE"):
            responses["409"] = _error("Name conflict or state conflict", error)
        if r.body is not None:
            responses["413"] = _error("Request body too large", error)
        if unavailable and r.access != "public":
            responses["503"] = _error("A dependency is unavailable; retry after Retry-After", error)
        op: dict[str, Any] = {"operationId": r.operation_id, "summary": r.summary, "tags": [r.tag],
                              "responses": responses}
        if params:
            op["parameters"] = params
        if r.body is not None:
            op["requestBody"] = {"required": True, "content": {"application/json": {
                "schema": {"$ref": f"#/components/schemas/{r.body.__name__}"}}}}
        if r.access == "public":
            op["security"] = []
        paths.setdefault(r.path, {})[r.method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version, "description": description},
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                           "description": "an aigw API token"}},
        },
        "security": [{"bearer": []}],
    }


def document_route(path: str) -> Route:
    """The route of the document itself (public), to list with a service's other routes."""
    return Route("GET", path, None, "public", "This document", "meta")


def finish(routes: list[Route], **kw: Any) -> dict[str, Any]:
    """The document as served: :func:`build`, with the document route (see :func:`document_route`) described
    as a free-form object. ``aigw openapi`` writes these into ``docs/openapi/``."""
    [doc_route] = [r for r in routes if r.tag == "meta" and r.access == "public"]
    doc = build(routes, **kw)
    doc["paths"][doc_route.path]["get"]["responses"] = {"200": {
        "description": "OK", "content": {"application/json": {"schema": {"type": "object"}}}}}
    return doc


def serve_document(app: web.Application, routes: list[Route], **kw: Any) -> None:
    """Register ``GET`` of the document route in ``routes``, answering :func:`finish`'s document."""
    [doc_route] = [r for r in routes if r.tag == "meta" and r.access == "public"]
    body = msgspec.json.encode(finish(routes, **kw))

    async def handler(_request: web.Request) -> web.Response:
        return web.Response(body=body, content_type="application/json")

    app.router.add_get(doc_route.path, handler)


__all__ = ["PARAM_DOCS", "ErrorOut", "Query", "Route", "build", "document_route", "finish", "serve_document"]
