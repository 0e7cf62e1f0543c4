"""The OpenAPI document tells the truth about error answers that no single route declares.

- 401, 403 (and 429 where rate-limited) from the API-key check, on every secured operation;
- 422 with ``{"detail": "<message>"}`` as well as FastAPI's list of validation errors: routes
  raise 422 with a plain message for input they check themselves;
- 400 for a body that cannot even be decoded (FastAPI answers that before any route runs);
- 413 on every operation with a body (the body guard's byte cap), 429 on every secured one (the
  failed-auth throttle, besides the rate limit where there is one).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from gateway.deps import is_rate_limited_route

_ERROR = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorDetail"}}}
_ERROR_SCHEMA = {
    "title": "ErrorDetail",
    "type": "object",
    "properties": {"detail": {"title": "Detail", "type": "string"}},
    "required": ["detail"],
}
_AUTH_RESPONSES: dict[str, dict[str, Any]] = {
    "401": {
        "description": "Missing, unknown or revoked API key",
        "headers": {"WWW-Authenticate": {"schema": {"type": "string"}}},
        "content": _ERROR,
    },
    "403": {"description": "The API key's scope does not allow this route", "content": _ERROR},
}
_BAD_BODY = {"description": "A body that cannot be decoded (not UTF-8, say)", "content": _ERROR}
_RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait", "schema": {"type": "integer"}}}
_RATE_LIMITED = {
    "description": "Over this API key's rate limit (NER_RATE_LIMIT_PER_MINUTE, or the key's own), "
    "or too many failed key checks from this address or for this key (NER_AUTH_FAIL_LIMIT)",
    "headers": _RETRY_AFTER,
    "content": _ERROR,
}
_AUTH_THROTTLED = {
    "description": "Too many failed key checks from this address or for this key (NER_AUTH_FAIL_LIMIT)",
    "headers": _RETRY_AFTER,
    "content": _ERROR,
}
_TOO_LARGE = {"description": "The body is over this route's byte cap (see the message)", "content": _ERROR}


def _either_422(response: dict[str, Any]) -> None:
    content = response.get("content", {}).get("application/json")
    if content and content.get("schema") == {"$ref": "#/components/schemas/HTTPValidationError"}:
        content["schema"] = {
            "anyOf": [
                {"$ref": "#/components/schemas/HTTPValidationError"},
                {"$ref": "#/components/schemas/ErrorDetail"},
            ]
        }


def document_errors(app: FastAPI) -> None:
    """Wrap ``app.openapi`` so every operation lists the error answers it can really give."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = build()
        schema.setdefault("components", {}).setdefault("schemas", {}).setdefault("ErrorDetail", _ERROR_SCHEMA)
        for path, operations in schema.get("paths", {}).items():
            for method, operation in operations.items():
                if not isinstance(operation, dict):
                    continue
                responses = operation.setdefault("responses", {})
                if "422" in responses:
                    _either_422(responses["422"])
                if "requestBody" in operation:
                    responses.setdefault("400", _BAD_BODY)
                    responses.setdefault("413", _TOO_LARGE)  # gateway.guard's cap, on every body
                if not operation.get("security"):
                    continue
                for code, response in _AUTH_RESPONSES.items():
                    responses.setdefault(code, response)
                if is_rate_limited_route(method.upper(), path):
                    responses.setdefault("429", _RATE_LIMITED)
                else:
                    responses.setdefault("429", _AUTH_THROTTLED)
                # A route's own 429 (a quota, say) comes with Retry-After and the error body too.
                responses["429"].setdefault("headers", _RETRY_AFTER)
                responses["429"].setdefault("content", _ERROR)
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
