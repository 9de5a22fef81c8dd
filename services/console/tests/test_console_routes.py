"""The proxy allowlist against the services' OpenAPI documents (docs/openapi/*.json, which a test keeps equal
to each service's route table): the console cannot import another service's routes, so this is what keeps
its hand-written table from drifting — a path renamed or a method dropped in a service fails here."""

from __future__ import annotations

import json
from pathlib import Path

from aigw_console.routes import ROUTES

DOCS = Path(__file__).resolve().parents[3] / "docs" / "openapi"
METHODS = ("get", "post", "put", "patch", "delete")
# Documented operations the console deliberately does not forward: the documents themselves, and key
# rotation (an operator's CLI/API job, not a console page).
NOT_PROXIED = {
    ("registry", "/api/v2/openapi.json", "GET"),
    ("budget", "/api/v2/openapi.json", "GET"),
    ("keypool", "/api/v2/openapi.json", "GET"),
    ("chatd", "/api/experimental/openapi.json", "GET"),
    ("registry", "/api/v2/secrets/rotate", "POST"),
}


def _shape(path: str) -> str:
    """The path with its parameter names erased (the console names them for itself)."""
    return "/" + "/".join("{}" if s.startswith("{") else s for s in path.strip("/").split("/"))


def _documented(services: set[str]) -> set[tuple[str, str, str]]:
    out = set()
    for service in services:
        doc = json.loads((DOCS / f"{service}.json").read_text())
        out |= {(service, _shape(p), m.upper()) for p, item in doc["paths"].items() for m in item if m in METHODS}
    return out


def test_every_allowlisted_route_is_a_documented_operation_of_its_service() -> None:
    allowed = {(r.service, _shape("/".join(r.template)), m) for r in ROUTES for m in r.methods}
    documented = _documented({r.service for r in ROUTES})
    assert allowed - documented == set()
    # and every documented admin operation is forwarded, or deliberately not: a new one needs a decision
    assert documented - allowed == {(s, _shape(p), m) for s, p, m in NOT_PROXIED}
