"""The route tables are the one description of every control-plane operation: each route declares its access
and its response Struct, the OpenAPI document is generated from exactly those, and ``aigw_common.api.mount``
enforces both (the access before the handler runs; the declared Struct on the way out).

No system is started: the tables and documents are checked as data, and ``mount`` on a bare aiohttp app.
"""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from aigw_budget import openapi as budget_doc
from aigw_budget.api import ROUTES as BUDGET_ROUTES
from aigw_chatd import openapi as chatd_doc
from aigw_chatd.routes import ROUTES as CHATD_ROUTES
from aigw_common.api import ErrorOut, Forbidden, Route, error_middleware, mount
from aigw_keypool import openapi as keypool_doc
from aigw_keypool.api import ROUTES as KEYPOOL_ROUTES
from aigw_registry import openapi as registry_doc
from aigw_registry.api import ROUTES as REGISTRY_ROUTES

TABLES: dict[str, tuple[list[Route], Any]] = {
    "registry": (REGISTRY_ROUTES, registry_doc), "budget": (BUDGET_ROUTES, budget_doc),
    "keypool": (KEYPOOL_ROUTES, keypool_doc), "chatd": (CHATD_ROUTES, chatd_doc),
}


@pytest.mark.parametrize("svc", sorted(TABLES))
def test_every_route_declares_access_handler_and_response_struct(svc: str) -> None:
    routes, _ = TABLES[svc]
    public = [r for r in routes if r.access == "public"]
    assert [(r.method, r.tag) for r in public] == [("GET", "meta")], "only the document itself needs no token"
    for r in routes:
        if r.access == "public":
            continue
        where = f"{svc} {r.method} {r.path}"
        assert r.access in ("user", "admin"), where
        assert callable(r.handler), where
        if r.content_type != "application/json":
            assert r.content_type == "text/event-stream" and r.method == "GET", where
        elif r.response is None:  # 204: nothing to describe
            assert r.method in ("DELETE", "PUT") and r.status == 200, where
        else:
            assert issubclass(r.response, msgspec.Struct), where
        if r.body is not None:
            assert issubclass(r.body, msgspec.Struct) and r.method in ("POST", "PUT", "PATCH"), where
    assert len({(r.method, r.path) for r in routes}) == len(routes), f"{svc}: a route listed twice"


@pytest.mark.parametrize("svc", sorted(TABLES))
def test_document_schemas_are_the_structs_and_access_the_table(svc: str) -> None:
    routes, doc_module = TABLES[svc]
    doc = doc_module.document()
    structs = [t for r in routes for t in (r.body, r.response) if isinstance(t, type) and issubclass(t, msgspec.Struct)]
    _, expected = msgspec.json.schema_components([ErrorOut, *dict.fromkeys(structs)],
                                                 ref_template="#/components/schemas/{name}")
    assert doc["components"]["schemas"] == expected
    for r in routes:
        op = doc["paths"][r.path][r.method.lower()]
        assert op["x-aigw-access"] == r.access
        if r.access == "public":
            assert op["security"] == []
            continue
        assert {"401", "403"} <= set(op["responses"])
        if r.response is None:
            assert "content" not in op["responses"]["204"]
        elif r.content_type == "application/json":
            content = op["responses"][str(r.status)]["content"]["application/json"]
            assert content["schema"] == {"$ref": f"#/components/schemas/{r.response.__name__}"}
        if r.body is not None:
            assert op["requestBody"]["content"]["application/json"]["schema"] == {
                "$ref": f"#/components/schemas/{r.body.__name__}"}
    documented = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    assert documented == {(r.method, r.path) for r in routes}


class _Caller(msgspec.Struct):
    roles: list[str]


class _Thing(msgspec.Struct):
    name: str
    note: str | None


class _Other(msgspec.Struct):
    x: int


async def test_mount_checks_access_before_the_handler_and_the_declared_struct_after() -> None:
    ran: list[str] = []

    async def thing(_request: web.Request, _caller: _Caller) -> _Thing:
        ran.append("thing")
        return _Thing("a", None)

    async def wrong(_request: web.Request, _caller: _Caller) -> _Other:
        ran.append("wrong")
        return _Other(1)

    async def gone(_request: web.Request, _caller: _Caller) -> None:
        ran.append("gone")

    async def caller(request: web.Request) -> _Caller:
        role = request.headers.get("X-Role")
        if role is None:
            raise Forbidden("no role")
        return _Caller([role])

    routes = [
        Route("GET", "/thing", thing, "admin", "", "t", response=_Thing),
        Route("POST", "/thing", thing, "user", "", "t", response=_Thing, status=201),
        Route("GET", "/wrong", wrong, "user", "", "t", response=_Thing),
        Route("DELETE", "/thing", gone, "admin", "", "t"),
    ]
    app = web.Application(middlewares=[error_middleware])
    mount(app, routes, caller)
    async with TestClient(TestServer(app)) as c:
        r = await c.get("/thing", headers={"X-Role": "member"})
        assert r.status == 403 and ran == []
        assert msgspec.json.decode(await r.read(), type=ErrorOut).message == "GET /thing requires the admin or owner role"
        r = await c.get("/thing", headers={"X-Role": "admin"})
        assert r.status == 200 and await r.json() == {"name": "a", "note": None}
        r = await c.post("/thing", headers={"X-Role": "member"})
        assert r.status == 201 and await r.json() == {"name": "a", "note": None}
        r = await c.delete("/thing", headers={"X-Role": "owner"})
        assert r.status == 204 and await r.read() == b""
        r = await c.get("/wrong", headers={"X-Role": "owner"})  # answered another Struct than declared: a bug
        assert r.status == 500 and await r.json() == {"message": "internal server error", "detail": None,
                                                      "validations": []}
        r = await c.get("/thing")
        assert r.status == 403
    assert ran == ["thing", "thing", "gone", "wrong"]
