"""The work-item fold: definitions of start, done, WIP, reopen, removal and deletion."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from processor.stages import load_stage_config
from processor.work_items import WorkItemEvent, fold_work_item
from schemas.events import WorkItemDeleted, WorkItemTransitioned, WorkItemUpserted

CONFIG = load_stage_config()
T0 = datetime(2026, 3, 2, 9, tzinfo=UTC)
ITEM = "jira:100"


def h(hours: float) -> datetime:
    return T0 + timedelta(hours=hours)


class ItemEvents:
    """A small factory for one item's events, in the order a test writes them."""

    def __init__(self, item_id: str = ITEM, team: str = "PAY") -> None:
        self.item_id = item_id
        self.team = team
        self.n = 0

    def _next(self) -> str:
        self.n += 1
        return f"{self.item_id}-e{self.n}"

    def created(self, at: float, status: str = "To Do", **fields: object) -> list[WorkItemEvent]:
        return [
            WorkItemUpserted(
                event_id=self._next(),
                source="jira",
                occurred_at=h(at),
                received_at=h(at),
                key=self.item_id,
                item_id=self.item_id,
                display_key="PAY-1",
                team=self.team,
                project=self.team,
                item_type=str(fields.get("item_type", "Story")),
                status=status,
                created_at=h(at),
            ),
            WorkItemTransitioned(
                event_id=self._next(),
                source="jira",
                occurred_at=h(at),
                received_at=h(at),
                key=self.item_id,
                item_id=self.item_id,
                from_status=None,
                to_status=status,
            ),
        ]

    def moved(self, at: float, from_status: str, to_status: str, **kw: object) -> WorkItemEvent:
        return WorkItemTransitioned(
            event_id=self._next(),
            source="jira",
            occurred_at=h(at),
            received_at=h(at),
            key=self.item_id,
            item_id=self.item_id,
            from_status=from_status,
            to_status=to_status,
            to_stage=kw.get("to_stage"),  # type: ignore[arg-type]
        )

    def deleted(self, at: float) -> WorkItemEvent:
        return WorkItemDeleted(
            event_id=self._next(),
            source="jira",
            occurred_at=h(at),
            received_at=h(at),
            key=self.item_id,
            item_id=self.item_id,
        )


def fold(events: list[WorkItemEvent]):  # type: ignore[no-untyped-def]
    return fold_work_item(ITEM, events, CONFIG)


def test_cycle_time_runs_from_first_start_to_done() -> None:
    """Cycle time = first entry into Development (or later) → final entry into Production."""
    e = ItemEvents()
    p = fold(
        [
            *e.created(0),
            e.moved(10, "To Do", "In Progress"),
            e.moved(30, "In Progress", "In Review"),
            e.moved(34, "In Review", "Done"),
        ]
    )
    assert p.completion is not None
    assert p.completion.cycle_time_s == 24 * 3600
    assert p.completion.lead_time_s == 34 * 3600
    assert p.item is not None and p.item.flow_state == "done"


def test_reopen_and_redo_counts_the_final_completion() -> None:
    """An item done, reopened and done again completes at the last done."""
    e = ItemEvents()
    p = fold(
        [
            *e.created(0),
            e.moved(1, "To Do", "In Progress"),
            e.moved(5, "In Progress", "Done"),
            e.moved(6, "Done", "In Progress"),
            e.moved(9, "In Progress", "Done"),
        ]
    )
    assert p.completion is not None
    assert p.completion.completed_at == h(9)
    assert p.completion.started_at == h(1)


def test_reopened_and_not_redone_is_wip_again() -> None:
    """Reopened into To Do after Done: no completion, and WIP (it was started)."""
    e = ItemEvents()
    p = fold(
        [
            *e.created(0),
            e.moved(1, "To Do", "In Progress"),
            e.moved(5, "In Progress", "Done"),
            e.moved(6, "Done", "To Do"),
        ]
    )
    assert p.completion is None
    assert p.item is not None and p.item.flow_state == "wip"
    assert p.intervals[-1].flow_state == "wip" and p.intervals[-1].stage == "Backlog"


def test_item_jumping_straight_to_done_has_zero_cycle_time() -> None:
    """Entering Production without passing Development starts and ends the clock together."""
    e = ItemEvents()
    p = fold([*e.created(0), e.moved(7, "To Do", "Done")])
    assert p.completion is not None and p.completion.cycle_time_s == 0


def test_skipped_stages_start_at_the_first_later_stage() -> None:
    """To Do → In Review skips Development; the clock starts at In Review."""
    e = ItemEvents()
    p = fold([*e.created(0), e.moved(3, "To Do", "In Review"), e.moved(4, "In Review", "Done")])
    assert p.completion is not None and p.completion.started_at == h(3)


def test_backlog_items_are_not_wip() -> None:
    """An item never started is in the backlog, not in progress."""
    e = ItemEvents()
    p = fold([*e.created(0), e.moved(2, "To Do", "Selected for Development")])
    assert p.item is not None and p.item.flow_state == "backlog"
    assert p.item.stage == "Analysis"


def test_deleted_item_leaves_no_rows() -> None:
    """A deletion removes the item from every derived table, whatever came before."""
    e = ItemEvents()
    p = fold([*e.created(0), e.moved(1, "To Do", "In Progress"), e.deleted(2)])
    assert p.item is None and not p.transitions and not p.intervals and p.completion is None


def test_removed_is_neither_wip_nor_done() -> None:
    """A discarded item (e.g. a PR closed unmerged) leaves the flow."""
    e = ItemEvents()
    p = fold(
        [
            *e.created(0),
            e.moved(1, "To Do", "In Progress"),
            e.moved(2, "In Progress", "closed", to_stage="Removed"),
        ]
    )
    assert p.item is not None and p.item.flow_state == "removed"
    assert p.completion is None


def test_stays_in_one_stage_are_merged() -> None:
    """In Review → QA are both Testing: one stay, time summed."""
    e = ItemEvents()
    p = fold(
        [
            *e.created(0),
            e.moved(1, "To Do", "In Review"),
            e.moved(2, "In Review", "QA"),
            e.moved(4, "QA", "Done"),
        ]
    )
    testing = [i for i in p.intervals if i.stage == "Testing"]
    assert len(testing) == 1 and testing[0].exited_at == h(4)


def test_a_gap_before_the_first_transition_uses_from_status() -> None:
    """Without the creation event, the stay before the first move is in its from-status."""
    e = ItemEvents()
    created = e.created(0)[0]  # the upsert only, no initial transition
    p = fold([created, e.moved(5, "In Progress", "Resolved")])
    assert p.intervals[0].stage == "Development" and p.intervals[0].entered_at == h(0)
    assert p.completion is not None and p.completion.cycle_time_s == 5 * 3600


def test_transitions_before_the_upsert_still_fold() -> None:
    """A transition arriving before any upsert still yields a row (attributes come later)."""
    e = ItemEvents()
    p = fold([e.moved(1, "To Do", "In Progress")])
    assert p.item is not None and p.item.flow_state == "wip"


def _history() -> list[WorkItemEvent]:
    e = ItemEvents()
    return [
        *e.created(0),
        e.moved(1, "To Do", "In Progress"),
        e.moved(3, "In Progress", "Done"),
        e.moved(4, "Done", "To Do"),
        e.moved(6, "To Do", "In Review"),
        e.moved(8, "In Review", "Done"),
    ]


@settings(max_examples=200, deadline=None)
@given(st.permutations(_history()), st.lists(st.integers(0, 6), max_size=6))
def test_any_order_and_duplication_gives_the_same_projection(
    order: list[WorkItemEvent], dupes: list[int]
) -> None:
    """The fold depends on the set of events only: arrival order and redelivery change nothing."""
    history = _history()
    shuffled = list(order) + [order[i] for i in dupes if i < len(order)]
    assert fold(shuffled) == fold(history)
