"""OpenAPI 3.1 documents for the control-plane services, generated from their route tables.

A service lists its operations as ``aigw_common.api.Route`` entries (method, path, access, body and response
Structs, query parameters); :func:`build` turns them into the document (schemas by
``msgspec.json.schema_components`` from the very Structs the handlers decode and return), and
:func:`serve_document` registers ``GET <path>`` answering it. A test compares each service's router with
its document and each route's schema with its Struct.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec
from aiohttp import web

from .api import ErrorOut, Route

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


def _error(description: str) -> dict[str, Any]:
    return {"description": description,
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{ErrorOut.__name__}"}}}}


def build(routes: list[Route], *, title: str, description: str, version: str = "2",
          unavailable: bool = False) -> dict[str, Any]:
    """The document for ``routes``. ``unavailable``: non-public operations may answer 503 (+ Retry-After) when a
    dependency (the identity service, the database) is away. Each operation carries its route's access as
    ``x-aigw-access`` (public, user, admin): the permission matrix, read from the same table the router checks."""
    types: list[Any] = [ErrorOut]
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
            responses["400"] = _error("Invalid request")
        if r.access != "public":
            responses["401"] = _error("Missing, unknown or revoked token")
            responses["403"] = _error("Outside the caller's role")
        if _PATH_PARAM.search(r.path) or r.not_found:
            responses["404"] = _error("Not found")
        if r.method in ("POST", "PATCH", "PUT", "DELETE"):
            responses["409"] = _error("Name conflict or state conflict")
        if r.body is not None:
            responses["413"] = _error("Request body too large")
        if unavailable and r.access != "public":
            responses["503"] = _error("A dependency is unavailable; retry after Retry-After")
        op: dict[str, Any] = {"operationId": r.operation_id, "summary": r.summary, "tags": [r.tag],
                              "x-aigw-access": r.access, "responses": responses}
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


__all__ = ["PARAM_DOCS", "build", "document_route", "finish", "serve_document"]
