"""What the schemathesis run (tests/api/test_schemathesis.py) found, each pinned by a test of its own."""

from __future__ import annotations

from .conftest import PROBLEM, Api


async def test_a_method_the_path_does_not_answer_is_405_with_allow(api: Api) -> None:
    # RFC 9110 section 15.5.6: a 405 names the methods the resource answers.
    for method in ("TRACE", "PUT"):
        status, headers, body = await api.call(method, "/api/v1/status",
                                               token=api.tokens["admin"])
        assert (status, headers["Content-Type"].split(";")[0]) == (405, PROBLEM)
        assert body["code"] == "method_not_allowed"
        assert set(headers["Allow"].split(", ")) == {"GET"}
    status, headers, _ = await api.call("PATCH", "/api/v1/partners/osaka/quota")
    assert status == 405 and set(headers["Allow"].split(", ")) == {"PUT", "DELETE"}


async def test_a_send_without_a_body_is_422_not_500(api: Api) -> None:
    for headers in ({}, {"Idempotency-Key": "k-1"}):
        status, _, body = await api.call("POST", "/api/v1/documents", token=api.tokens["send"],
                                         headers=headers)
        assert status == 422, body
        assert body["code"] == "validation_failed"
        assert {"field": "kind", "code": "required", "message": "is required"} in body["errors"]


async def test_an_integral_number_is_an_integer_as_json_schema_says(api: Api) -> None:
    # openapi.json says "integer"; JSON Schema counts 30.0 as one, so the node does too.
    status, _, body = await api.call("POST", "/api/v1/invitations", token=api.tokens["admin"],
                                     json={"valid_for": 30.0})
    assert status == 201, body
    status, _, body = await api.call("POST", "/api/v1/invitations", token=api.tokens["admin"],
                                     json={"valid_for": 30.5})
    assert (status, body["errors"][0]["code"]) == (422, "wrong_type")

