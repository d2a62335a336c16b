"""RFC 7807 problem responses as the OpenAPI document describes them.

Every error the API answers is ``application/problem+json`` (see ``api.app``),
so the document says so, for the codes each operation can give.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from infra.problem_docs import problem_responses as shared_problem_responses
from infra.problem_docs import problem_schema

# The API's 422 detail is the list of invalid parameters, so it is not typed.
PROBLEM_SCHEMA = problem_schema({"description": "A sentence, or the list of invalid parameters"})


def problem_responses(codes: Mapping[int, str]) -> dict[int | str, dict[str, Any]]:
    """``{status: description}`` → FastAPI ``responses=`` entries with the problem body."""
    return shared_problem_responses(codes, PROBLEM_SCHEMA)


# What any /api/v1 operation may answer besides 200 (422 replaces FastAPI's
# application/json HTTPValidationError, which this API never sends).
COMMON_RESPONSES = problem_responses({422: "Invalid parameters"})
