"""The work-item fold: one item's full event history in, its derived rows out.

Pure: no I/O. The processor calls :func:`fold_work_item` with every event it
has ever stored for an item (any order, duplicates included) whenever a new
event for that item arrives, so late and out-of-order events are handled by
construction: the result depends only on the *set* of events.

Definitions (PRODUCT.md, with the choices made where it is silent):

- Stages come from the team's :class:`~processor.stages.TeamFlow`; a
  transition's stage is its explicit ``to_stage`` when the source sets one,
  else the status mapping.
- Events are ordered by ``occurred_at``; ties (Jira can stamp several changes
  with one millisecond) break on the initial transition first, then event id,
  which is arbitrary but the same on every run.
- The item enters its first stage at creation (``created_at``) in the stage of
  the first known ``from_status`` — a gap in the stream must not invent time.
- Started: the first entry into the start stage or any later stage (done
  included: an item that jumps straight to done has cycle time 0).
- Done: the item's *current* stage is at or past the done stage; completed at
  the *final* entry into the done region. Reopened and not redone: WIP again,
  and no completion row.
- Once started, an item is WIP until done, even in an earlier stage (a reopen
  into "To Do" is still work in progress). ``Removed`` (discarded, or a pull
  request closed unmerged) is neither WIP nor done.
- Deleted at the source: no rows at all.
- Attributes (title, team, type, ...) come from the upsert with the latest
  ``occurred_at``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import NamedTuple

from processor.stages import REMOVED_STAGE, StageConfig, TeamFlow
from schemas.events import WorkItemDeleted, WorkItemTransitioned, WorkItemUpserted

WorkItemEvent = WorkItemUpserted | WorkItemTransitioned | WorkItemDeleted

BACKLOG, WIP, DONE, REMOVED = "backlog", "wip", "done", "removed"


class WorkItemRow(NamedTuple):
    item_id: str
    display_key: str
    source: str
    title: str
    item_type: str
    project: str
    team: str
    status: str | None
    stage: str | None
    flow_state: str
    created_at: datetime | None
    started_at: datetime | None
    completed_at: datetime | None
    assignee: str | None
    labels: tuple[str, ...]
    url: str | None
    updated_at: datetime


class TransitionRow(NamedTuple):
    item_id: str
    event_id: str
    occurred_at: datetime
    from_status: str | None
    to_status: str
    from_stage: str | None
    to_stage: str
    team: str
    project: str
    item_type: str


class StageIntervalRow(NamedTuple):
    item_id: str
    seq: int
    stage: str
    stage_index: int
    flow_state: str
    entered_at: datetime
    exited_at: datetime | None
    team: str
    project: str
    item_type: str


class CompletionRow(NamedTuple):
    item_id: str
    completed_at: datetime
    started_at: datetime
    created_at: datetime | None
    team: str
    project: str
    item_type: str
    cycle_time_s: float
    lead_time_s: float | None


@dataclass(frozen=True)
class WorkItemProjection:
    """Everything derived for one item; all empty when the item is deleted."""

    item_id: str
    item: WorkItemRow | None
    transitions: tuple[TransitionRow, ...]
    intervals: tuple[StageIntervalRow, ...]
    completion: CompletionRow | None


class _Step(NamedTuple):
    at: datetime
    stage: str
    status: str | None


def _dedupe(events: Iterable[WorkItemEvent]) -> list[WorkItemEvent]:
    seen: dict[str, WorkItemEvent] = {}
    for event in events:
        seen.setdefault(event.event_id, event)
    return list(seen.values())


def _transition_order(t: WorkItemTransitioned) -> tuple[datetime, int, int, str]:
    return (t.occurred_at, 0 if t.from_status is None else 1, t.sequence, t.event_id)


def fold_work_item(
    item_id: str, events: Iterable[WorkItemEvent], config: StageConfig
) -> WorkItemProjection:
    history = _dedupe(events)
    if any(isinstance(e, WorkItemDeleted) for e in history):
        return WorkItemProjection(item_id, None, (), (), None)

    upserts = sorted(
        (e for e in history if isinstance(e, WorkItemUpserted)),
        key=lambda e: (e.occurred_at, e.event_id),
    )
    moves = sorted(
        (e for e in history if isinstance(e, WorkItemTransitioned)), key=_transition_order
    )
    if not upserts and not moves:
        return WorkItemProjection(item_id, None, (), (), None)

    latest = upserts[-1] if upserts else None
    source = latest.source if latest else moves[0].source
    team = latest.team if latest else ""
    project = latest.project if latest else ""
    item_type = latest.item_type if latest else "unknown"
    created_at = min(u.created_at for u in upserts) if upserts else None
    flow = config.for_team(team or None)

    def stage_of(status: str | None, category: str | None, explicit: str | None) -> str:
        return explicit if explicit else flow.stage_for(status, category)

    steps: list[_Step] = []
    if moves:
        first = moves[0]
        if first.from_status is not None:
            origin = created_at if created_at and created_at < first.occurred_at else None
            if origin is not None:
                steps.append(
                    _Step(origin, stage_of(first.from_status, None, None), first.from_status)
                )
    elif latest is not None and latest.status is not None:
        steps.append(
            _Step(
                latest.created_at,
                stage_of(latest.status, latest.status_category, None),
                latest.status,
            )
        )
    transitions: list[TransitionRow] = []
    previous_stage = steps[-1].stage if steps else None
    for move in moves:
        stage = stage_of(move.to_status, move.to_status_category, move.to_stage)
        transitions.append(
            TransitionRow(
                item_id=item_id,
                event_id=move.event_id,
                occurred_at=move.occurred_at,
                from_status=move.from_status,
                to_status=move.to_status,
                from_stage=previous_stage,
                to_stage=stage,
                team=team,
                project=project,
                item_type=item_type,
            )
        )
        steps.append(_Step(move.occurred_at, stage, move.to_status))
        previous_stage = stage

    intervals, started_at, completed_at, flow_state = _intervals(
        item_id, steps, flow, team, project, item_type
    )
    current = steps[-1] if steps else None
    status = current.status if current else (latest.status if latest else None)

    completion = None
    if flow_state == DONE and started_at is not None and completed_at is not None:
        completion = CompletionRow(
            item_id=item_id,
            completed_at=completed_at,
            started_at=started_at,
            created_at=created_at,
            team=team,
            project=project,
            item_type=item_type,
            cycle_time_s=(completed_at - started_at).total_seconds(),
            lead_time_s=(completed_at - created_at).total_seconds() if created_at else None,
        )

    updated_candidates = [e.occurred_at for e in history]
    row = WorkItemRow(
        item_id=item_id,
        display_key=latest.display_key if latest else item_id,
        source=source,
        title=latest.title if latest else "",
        item_type=item_type,
        project=project,
        team=team,
        status=status,
        stage=current.stage if current else None,
        flow_state=flow_state,
        created_at=created_at,
        started_at=started_at,
        completed_at=completed_at if flow_state == DONE else None,
        assignee=latest.assignee if latest else None,
        labels=latest.labels if latest else (),
        url=latest.url if latest else None,
        updated_at=max(updated_candidates),
    )
    return WorkItemProjection(item_id, row, tuple(transitions), tuple(intervals), completion)


def _intervals(
    item_id: str,
    steps: list[_Step],
    flow: TeamFlow,
    team: str,
    project: str,
    item_type: str,
) -> tuple[list[StageIntervalRow], datetime | None, datetime | None, str]:
    """Collapse steps into stays per stage and classify each stay's flow state."""
    rows: list[StageIntervalRow] = []
    started_at: datetime | None = None
    completed_at: datetime | None = None
    state = BACKLOG
    # exits[i]: when the item first left steps[i]'s stage after step i (one backward pass)
    exits: list[datetime | None] = [None] * len(steps)
    for i in range(len(steps) - 2, -1, -1):
        following = steps[i + 1]
        exits[i] = following.at if following.stage != steps[i].stage else exits[i + 1]
    for i, step in enumerate(steps):
        if rows and rows[-1].stage == step.stage:
            continue  # In Review → QA: both Testing, one stay
        removed = step.stage == REMOVED_STAGE
        if not removed and started_at is None and flow.is_started(step.stage):
            started_at = step.at
        if removed:
            state = REMOVED
        elif flow.is_done(step.stage):
            state = DONE
            if not rows or rows[-1].flow_state != DONE:
                completed_at = step.at  # final entry into the done region wins
        else:
            state = WIP if started_at is not None else BACKLOG
        rows.append(
            StageIntervalRow(
                item_id=item_id,
                seq=len(rows),
                stage=step.stage,
                stage_index=flow.index(step.stage),
                flow_state=state,
                entered_at=step.at,
                exited_at=exits[i],
                team=team,
                project=project,
                item_type=item_type,
            )
        )
    return rows, started_at, completed_at, state
