"""The OpenAPI document as the contract: every status the service can answer is in it, with one error shape.

FastAPI documents what a route declares, plus a 422 whose body (a list of objects) is not what this
service sends. The statuses that come from the app as a whole rather than from a route are added here, to
every operation they can reach, all with `ErrorOut` (``{"detail": "..."}``):

- 400: a body that cannot be parsed at all (operations with a body);
- 401 and 429: an operation behind an API key. The key is checked from the headers before the body is
  read (service/api/authgate.py), so a request without a valid key gets its 401 (or 429) whatever its
  body. A request with no key is 401 until its address spent its own budget of keyless requests, then
  429; a wrong key is 401 until the address (or that key) spent the budget of failed keys, then 429 for
  any key not validated in the last seconds. The two budgets are apart, so keyless requests never lock
  out a valid key; submissions over the owner's rate are 429 too;
- 405: another method on the same path (the answer's ``Allow`` header lists the methods that are there);
- 413: a JSON body over ``max_json_body_bytes`` (operations with a body; uploads declare their own);
- 422: a parameter or body that does not validate.

service/api/app.py installs the handlers that make the answers match; tests/service/api/test_contract.py runs
schemathesis against the live service to check that they do.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from service.api.schemas import ErrorOut

ERROR_REF = {"$ref": "#/components/schemas/ErrorOut"}
REASONS = {
    "400": "the body cannot be parsed",
    "401": "missing, invalid or revoked API key (checked before the body is read)",
    "405": "method not allowed on this path (Allow lists the methods that are)",
    "413": "request body over the size limit",
    "422": "a parameter or the body is invalid (detail names each field and what is wrong)",
    "429": "too many keyless requests or failed keys from this address (counted apart), or too many "
    "submissions; retry after Retry-After seconds",
}
RETRY_AFTER = {"Retry-After": {"description": "seconds to wait", "schema": {"type": "integer"}}}
ALLOW = {"Allow": {"description": "the methods this path answers", "schema": {"type": "string"}}}


def _error(code: str) -> dict[str, Any]:
    response: dict[str, Any] = {"description": REASONS[code], "content": {"application/json": {"schema": ERROR_REF}}}
    if code == "429":
        response["headers"] = RETRY_AFTER
    if code == "405":
        response["headers"] = ALLOW
    return response


def _statuses(path: str, operation: dict[str, Any]) -> list[str]:
    codes = ["405"]
    if operation.get("parameters") or "requestBody" in operation:
        codes.append("422")
    if "requestBody" in operation:
        codes += ["400", "413"]
    if path.startswith("/v1/"):
        codes += ["401", "429"]
    return codes


def contract(app: FastAPI) -> dict[str, Any]:
    """The app's OpenAPI document with every app-wide status added, built once and kept."""
    if app.openapi_schema is not None:
        return app.openapi_schema
    document = get_openapi(
        title=app.title, version=app.version, summary=app.summary, description=app.description, routes=app.routes
    )
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    schemas.pop("HTTPValidationError", None)
    schemas.pop("ValidationError", None)
    schemas["ErrorOut"] = ErrorOut.model_json_schema()
    # The key is checked by a dependency, which FastAPI does not document; saying so lets clients (and
    # schemathesis's ignored_auth check) know which operations need it.
    document["components"]["securitySchemes"] = {"apiKey": {"type": "http", "scheme": "bearer"}}
    for path, item in document.get("paths", {}).items():
        for operation in item.values():
            if path.startswith("/v1/"):
                operation["security"] = [{"apiKey": []}]
            responses = operation.setdefault("responses", {})
            for code in _statuses(path, operation):
                if code == "422" or code not in responses:
                    responses[code] = _error(code)
                elif code in ("405", "429"):
                    responses[code].setdefault("headers", _error(code)["headers"])
    app.openapi_schema = document
    return document
