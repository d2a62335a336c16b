"""What the collectors' OpenAPI document says about routes that read the raw body.

FastAPI cannot infer a request body, headers or error responses for them, so
they are described here: a client (and schemathesis) then knows what to send
and every answer is documented. Errors are ``application/problem+json``.
"""

from __future__ import annotations

from typing import Any

from infra.problem_docs import problem_responses, problem_schema

_PROBLEM = problem_schema({"type": "string"})


def _problems(codes: dict[int, str]) -> dict[int | str, dict[str, Any]]:
    return problem_responses(codes, _PROBLEM)


def _json(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _header(name: str, description: str, *, required: bool = False) -> dict[str, Any]:
    return {
        "name": name,
        "in": "header",
        "required": required,
        "description": description,
        "schema": {"type": "string"},
    }


_DELIVERY = {
    "type": "object",
    "required": ["status", "delivery_id"],
    "properties": {
        "status": {"enum": ["accepted", "ignored", "duplicate"]},
        "delivery_id": {"type": "string"},
        "events": {"type": "integer", "minimum": 0},
        "reason": {"type": "string"},
    },
}

WEBHOOK_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: _json("Already received (same delivery id): nothing is published again", _DELIVERY),
    202: _json("Durable: published, or recorded and ignored (the reason says why)", _DELIVERY),
    **_problems(
        {
            400: "Not JSON, or a required header is missing",
            401: "Signature missing or not matching the body",
            413: "Body over the size limit",
            422: "JSON, but not a webhook this endpoint can read",
            503: "Could not be made durable; retry",
        }
    ),
}

INGEST_RESPONSES: dict[int | str, dict[str, Any]] = {
    202: _json(
        "Every event published",
        {
            "type": "object",
            "required": ["status", "results"],
            "properties": {
                "status": {"const": "accepted"},
                "results": {"type": "array", "items": {"type": "object"}},
            },
        },
    ),
    **_problems(
        {
            400: "Not JSON",
            401: "Bearer token missing or wrong",
            413: "Body over the size limit, or too many events",
            422: "Not an array of valid canonical events; nothing was published",
            503: "Could not be made durable; retry",
        }
    ),
}

_OBJECT_BODY = {"required": True, "content": {"application/json": {"schema": {"type": "object"}}}}

JIRA_REQUEST: dict[str, Any] = {
    "parameters": [
        _header("X-Hub-Signature", "sha256=<HMAC-SHA256 of the body> (required with a secret)"),
        _header("X-Atlassian-Webhook-Identifier", "Delivery id, the same on retries"),
    ],
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "webhookEvent": {"type": "string"},
                        "timestamp": {"type": "integer"},
                        "issue": {
                            "type": "object",
                            "properties": {
                                "id": {"type": "string"},
                                "key": {"type": "string"},
                                "fields": {"type": "object"},
                            },
                        },
                        "changelog": {"type": "object"},
                    },
                }
            }
        },
    },
}

GITHUB_REQUEST: dict[str, Any] = {
    "parameters": [
        _header("X-GitHub-Event", "The event name", required=True),
        _header("X-GitHub-Delivery", "Delivery id, the same on redeliveries"),
        _header("X-Hub-Signature-256", "sha256=<HMAC-SHA256 of the body> (required with a secret)"),
    ],
    "requestBody": _OBJECT_BODY,
}

INGEST_REQUEST: dict[str, Any] = {
    "parameters": [_header("Authorization", "Bearer <FLOW_INGEST_TOKEN>")],
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "array",
                    "items": {"type": "object"},
                    "description": "Canonical events (schemas/jsonschema/CanonicalEvent.json)",
                }
            }
        },
    },
}
