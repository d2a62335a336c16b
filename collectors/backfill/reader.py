"""What a source reader yields to the runner: pages of events, then the end of the pass.

A reader walks one scope (a Jira project, or one kind of GitHub resource of one
repository) from a :class:`~collectors.backfill.cursors.RunPlan`'s position and
yields a :class:`Page` per unit of durable progress. The runner publishes the
page's events, waits for the broker's acks, and only then stores
``Page.position`` — so the position must mean "everything before this is done".
The last step is :class:`Done` with the watermark the cursor moves to.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from collectors.backfill.cursors import RunPlan
from schemas.events import CanonicalEvent


@dataclass(frozen=True)
class Page:
    events: Sequence[CanonicalEvent]
    items: int  # issues, pull requests, commits, ... this page completes
    position: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Done:
    """The pass is complete; changes updated before ``watermark`` are all in."""

    watermark: datetime


Step = Page | Done


class ScopeReader(Protocol):
    source: str
    scope: str
    unit: str  # what ``items`` counts, for progress: "issues", "commits", ...

    async def estimate(self, plan: RunPlan) -> int | None:
        """How many items the pass will read, when the source can say (for the ETA)."""
        ...

    def read(self, plan: RunPlan) -> AsyncIterator[Step]: ...
