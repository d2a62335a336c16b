"""RFC 7807 problem responses as OpenAPI documents describe them.

Shared by the API and the collectors, whose errors are both
``application/problem+json``; imports nothing of ours.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def problem_schema(detail: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["type", "title", "status", "detail"],
        "properties": {
            "type": {"type": "string"},
            "title": {"type": "string"},
            "status": {"type": "integer"},
            "detail": dict(detail),
        },
    }


def problem_responses(
    codes: Mapping[int, str], schema: Mapping[str, Any]
) -> dict[int | str, dict[str, Any]]:
    """``{status: description}`` → FastAPI ``responses=`` entries with the problem body."""
    return {
        status: {
            "description": description,
            "content": {"application/problem+json": {"schema": dict(schema)}},
        }
        for status, description in codes.items()
    }
