"""The OpenAPI document in the repo is valid, served, and in step with the route table."""

from __future__ import annotations

import json
from typing import Any

import pytest
from aiohttp.web_urldispatcher import ResourceRoute

from usagi_p2p.company.api.app import make_app
from usagi_p2p.company.api.routes import OPENAPI_PATH, ROUTES
from usagi_p2p.company.api.tokens import SCOPES, TokenStore

from .conftest import Api

openapi_spec_validator = pytest.importorskip("openapi_spec_validator")
jsonschema = pytest.importorskip("jsonschema")

DOC: dict[str, Any] = json.loads(OPENAPI_PATH.read_text(encoding="utf-8"))
METHODS = {"get", "put", "post", "delete", "patch", "head", "options"}


def operations() -> dict[tuple[str, str], dict[str, Any]]:
    return {(method.upper(), path): op for path, item in DOC["paths"].items()
            for method, op in item.items() if method in METHODS}


def test_the_document_is_valid_openapi_3_1() -> None:
    assert DOC["openapi"].startswith("3.1.")
    openapi_spec_validator.validate(DOC)


async def test_every_route_of_the_real_app_is_documented_and_every_path_is_a_route(
        api: Api) -> None:
    app = make_app(api.node, TokenStore(api.node.home.path))
    served = {(r.method, r.resource.canonical) for r in app.router.routes()
              if isinstance(r, ResourceRoute) and r.resource is not None}
    assert served == set(operations())
    assert served == {(r.method, r.path) for r in ROUTES}


def test_each_operation_states_what_the_table_enforces() -> None:
    ops = operations()
    assert len({op["operationId"] for op in ops.values()}) == len(ops)
    for route in ROUTES:
        op = ops[(route.method, route.path)]
        assert op["operationId"] == route.operation
        assert op["x-usagi-scope"] == route.scope, route
        responses = op["responses"]
        assert "500" in responses and "403" in responses and "413" in responses, route
        if route.scope is None:
            assert op["security"] == [], route  # no token needed
        else:
            assert route.scope in SCOPES
            assert "security" not in op  # the document's default: the bearer token
            assert "401" in responses, route
        if route.body:
            assert op["x-usagi-max-body"] == route.body, route
            assert "requestBody" in op and "422" in responses, route
        else:
            assert "requestBody" not in op and "x-usagi-max-body" not in op, route
        for status, response in responses.items():
            if status.startswith(("4", "5")):
                ref = response.get("$ref", "")
                target = DOC["components"]["responses"][ref.rsplit("/", 1)[-1]] if ref \
                    else response
                assert "application/problem+json" in target["content"], (route, status)


def test_the_problem_schema_and_the_bearer_scheme_are_declared() -> None:
    components = DOC["components"]
    problem = components["schemas"]["Problem"]
    assert set(problem["required"]) == {"type", "title", "status", "detail", "code"}
    assert "errors" in problem["properties"]
    assert components["securitySchemes"]["bearer"] == {
        **components["securitySchemes"]["bearer"], "type": "http", "scheme": "bearer"}
    assert DOC["security"] == [{"bearer": []}]


def conforms(instance: Any, schema: str) -> None:
    root = {"$ref": f"#/components/schemas/{schema}", "components": DOC["components"]}
    jsonschema.Draft202012Validator(root).validate(instance)


async def test_the_served_document_is_the_file_and_answers_conform(api: Api) -> None:
    status, _, body = await api.call("GET", "/api/v1/openapi.json")  # no token needed
    assert (status, body) == (200, DOC)
    conforms((await api.call("GET", "/api/v1/status", token=api.tokens["read"]))[2], "Status")
    conforms((await api.call("GET", "/api/v1/key", token=api.tokens["read"]))[2], "Key")
    conforms((await api.call("POST", "/api/v1/outbox/retry", token=api.tokens["send"]))[2],
             "RetryResult")
    for answer in (await api.call("GET", "/api/v1/status"),
                   await api.call("POST", "/api/v1/outbox/retry", token=api.tokens["read"]),
                   await api.call("POST", "/api/v1/outbox/retry", token=api.tokens["send"],
                                  json={"x": 1}),
                   await api.call("GET", "/api/v1/none")):
        conforms(answer[2], "Problem")


def test_every_field_error_code_the_handlers_give_is_in_the_schema() -> None:
    """A code a handler puts in a validation_failed entry is one FieldError lists."""
    import re

    api = OPENAPI_PATH.parent
    given = {code for path in api.glob("*.py")
             for code in re.findall(r'"code": "([a-z_]+)"', path.read_text(encoding="utf-8"))}
    given -= {"forbidden_scope"}  # a problem's code (problems.py), not a field's
    listed = set(json.loads(OPENAPI_PATH.read_text(encoding="utf-8"))
                 ["components"]["schemas"]["FieldError"]["properties"]["code"]["enum"])
    assert given <= listed, sorted(given - listed)
