"""The filters every metric accepts, and the SQL they become."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Query

DEFAULT_WINDOW = timedelta(days=30)


@dataclass(frozen=True)
class Filters:
    start: datetime
    end: datetime
    team: str | None = None
    project: str | None = None
    item_type: str | None = None

    def where(self, alias: str = "") -> tuple[str, dict[str, Any]]:
        """Conditions on team/project/type (not on time), for a table aliased ``alias``."""
        p = f"{alias}." if alias else ""
        clauses: list[str] = []
        params: dict[str, Any] = {}
        for column, value in (
            ("team", self.team),
            ("project", self.project),
            ("item_type", self.item_type),
        ):
            if value is not None:
                clauses.append(f"{p}{column} = %({column})s")
                params[column] = value
        return (" and ".join(clauses) or "true"), params


def _aware(value: datetime | None) -> datetime | None:
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


def get_filters(
    start: Annotated[datetime | None, Query(description="Inclusive; default end - 30 days")] = None,
    end: Annotated[datetime | None, Query(description="Exclusive; default now")] = None,
    team: Annotated[str | None, Query(max_length=200)] = None,
    project: Annotated[str | None, Query(max_length=200)] = None,
    type: Annotated[str | None, Query(max_length=200, description="Work item type")] = None,
) -> Filters:
    end_ = _aware(end) or datetime.now(UTC)
    start_ = _aware(start) or end_ - DEFAULT_WINDOW
    if start_ >= end_:
        raise HTTPException(422, "start must be before end")
    return Filters(start=start_, end=end_, team=team, project=project, item_type=type)


FiltersDep = Annotated[Filters, Depends(get_filters)]
