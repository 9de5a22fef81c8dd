"""``/api/v2/openapi.json``, generated from the route table and the body Structs."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import msgspec

from .models import ErrorOut


@dataclass(frozen=True, slots=True)
class Query:
    name: str
    schema: dict[str, Any]
    description: str = ""


@dataclass(frozen=True, slots=True)
class Route:
    method: str
    path: str
    handler: Any
    access: str  # "public" | "admin" | "user" (any signed-in user; the handler decides self vs. others)
    summary: str
    tag: str
    body: type | None = None
    response: type | None = None  # None: 204 No Content
    status: int = 200
    query: tuple[Query, ...] = field(default=())

    @property
    def operation_id(self) -> str:
        words = re.sub(r"[{}]", "", self.path.removeprefix("/api/v2/")).replace("-", "_").split("/")
        return f"{self.method.lower()}_" + "_".join(w for w in words if w)


_PATH_PARAM = re.compile(r"{(\w+)}")
_PARAM_DOCS = {  # description, example
    "idOrName": ("provider id or name", "openai"),
    "keyId": ("key id", "00000000-0000-0000-0000-000000000000"),
    "user": ("user id, username, or `me`", "me"),
    "provider": ("provider id or name", "openai"),
    "tokenId": ("token id", "00000000-0000-0000-0000-000000000000"),
    "group": ("group id or name", "eng"),
}


def _error(description: str) -> dict[str, Any]:
    return {"description": description,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorOut"}}}}


def build(routes: list[Route], *, title: str = "aigw registry", version: str = "2") -> dict[str, Any]:
    types: list[Any] = [ErrorOut]
    for r in routes:
        types += [t for t in (r.body, r.response) if t is not None]
    _, components = msgspec.json.schema_components(list(dict.fromkeys(types)),
                                                   ref_template="#/components/schemas/{name}")
    paths: dict[str, dict[str, Any]] = {}
    for r in routes:
        params: list[dict[str, Any]] = [
            {"name": p, "in": "path", "required": True, "schema": {"type": "string", "minLength": 1},
             "description": _PARAM_DOCS.get(p, (p, ""))[0], "example": _PARAM_DOCS.get(p, (p, "x"))[1]}
            for p in _PATH_PARAM.findall(r.path)
        ]
        params += [{"name": q.name, "in": "query", "required": False, "schema": q.schema,
                    "description": q.description} for q in r.query]
        ok: dict[str, Any] = {"description": "No Content"} if r.response is None else {
            "description": "OK" if r.status == 200 else "Created",
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{r.response.__name__}"}}},
        }
        responses: dict[str, Any] = {str(r.status if r.response is not None else 204): ok}
        if r.body is not None or r.query or params:
            responses["400"] = _error("Invalid request")
        if r.access != "public":
            responses["401"] = _error("Missing, unknown or revoked token")
            responses["403"] = _error("Outside the caller's role")
        if _PATH_PARAM.search(r.path):
            responses["404"] = _error("Not found")
        if r.method in ("POST", "PATCH", "PUT", "DELETE"):
            responses["409"] = _error("Name conflict or state conflict")
        if r.body is not None:
            responses["413"] = _error("Request body too large")
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
        "info": {"title": title, "version": version,
                 "description": "Providers, keys and identity of aigw. Errors are {message, detail, validations}."},
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                           "description": "an aigw API token"}},
        },
        "security": [{"bearer": []}],
    }
