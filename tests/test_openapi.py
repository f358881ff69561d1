"""The OpenAPI document tells the truth about every route's errors."""

from __future__ import annotations

from typing import Any

from tests.conftest import World

PROBLEM = "application/problem+json"


def operations(world: World) -> list[tuple[str, str, dict[str, Any]]]:
    doc = world.app.openapi()
    return [
        (method.upper(), path, op)
        for path, ops in doc["paths"].items()
        for method, op in ops.items()
    ]


class TestDeclaredErrors:
    def test_protected_routes_declare_401_and_the_bearer_scheme(self, world: World) -> None:
        protected = [(m, p, op) for m, p, op in operations(world) if op.get("security")]
        assert len(protected) >= 6
        for method, path, op in protected:
            assert "401" in op["responses"], (method, path)
            assert op["security"] == [{"HTTPBearer": []}], (method, path)

    def test_routes_with_input_declare_422_as_a_problem_document(self, world: World) -> None:
        for method, path, op in operations(world):
            if path == "/v1/auth/token":
                continue  # RFC 6749 errors, declared as 400/401
            if op.get("parameters") or op.get("requestBody"):
                declared = op["responses"].get("422")
                assert declared is not None, (method, path)
                assert PROBLEM in declared["content"], (method, path)

    def test_routes_with_a_body_declare_413(self, world: World) -> None:
        for method, path, op in operations(world):
            if op.get("requestBody"):
                assert "413" in op["responses"], (method, path)

    def test_report_by_id_declares_404(self, world: World) -> None:
        doc = world.app.openapi()
        assert "404" in doc["paths"]["/v1/reports/{report_id}"]["get"]["responses"]

    def test_token_endpoint_declares_its_oauth_errors(self, world: World) -> None:
        op = world.app.openapi()["paths"]["/v1/auth/token"]["post"]
        assert {"400", "401"} <= op["responses"].keys()
