"""Core: the event store, work items and their derived flow tables.

Revision ID: 0001_core
Revises:
"""

from alembic import op

from infra.migrations.timescale import (
    continuous_aggregate,
    drop_continuous_aggregate,
    hypertable,
)

revision = "0001_core"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Every canonical event ever folded, by id: the idempotency guard and the
    # history each projection recomputes an entity from.
    op.execute(
        """
        create table events (
            event_id    text primary key,
            type        text not null,
            source      text not null,
            projection  text not null,
            entity      text not null,
            occurred_at timestamptz not null,
            received_at timestamptz not null,
            ingested_at timestamptz not null default now(),
            payload     jsonb not null
        )
        """
    )
    op.execute("create index events_entity_idx on events (projection, entity)")

    op.execute(
        """
        create table work_items (
            item_id      text primary key,
            display_key  text not null,
            source       text not null,
            title        text not null default '',
            item_type    text not null default 'unknown',
            project      text not null default '',
            team         text not null default '',
            status       text,
            stage        text,
            flow_state   text not null,
            created_at   timestamptz,
            started_at   timestamptz,
            completed_at timestamptz,
            assignee     text,
            labels       text[] not null default '{}',
            url          text,
            updated_at   timestamptz not null
        )
        """
    )
    op.execute("create index work_items_display_key_idx on work_items (display_key)")
    op.execute("create index work_items_open_idx on work_items (team, flow_state)")

    op.execute(
        """
        create table transitions (
            item_id     text not null,
            event_id    text not null,
            occurred_at timestamptz not null,
            from_status text,
            to_status   text not null,
            from_stage  text,
            to_stage    text not null,
            team        text not null,
            project     text not null,
            item_type   text not null,
            primary key (item_id, occurred_at, event_id)
        )
        """
    )
    hypertable("transitions", "occurred_at", chunk="30 days")

    # One row per contiguous stay of an item in a stage. flow_state is the
    # item's state during the stay (backlog | wip | done | removed), so WIP at
    # any instant is a range lookup.
    op.execute(
        """
        create table stage_intervals (
            item_id     text not null,
            seq         int not null,
            stage       text not null,
            stage_index int not null,
            flow_state  text not null,
            entered_at  timestamptz not null,
            exited_at   timestamptz,
            team        text not null,
            project     text not null,
            item_type   text not null,
            primary key (item_id, seq)
        )
        """
    )
    op.execute("create index stage_intervals_time_idx on stage_intervals (entered_at, exited_at)")
    # WIP at an instant = open WIP stays entered by then + closed ones left after it.
    op.execute(
        "create index stage_intervals_wip_open_entered_idx on stage_intervals (team, entered_at) "
        "where flow_state = 'wip' and exited_at is null"
    )
    op.execute(
        "create index stage_intervals_wip_exited_idx on stage_intervals (exited_at, team) "
        "where flow_state = 'wip'"
    )

    op.execute(
        """
        create table completions (
            item_id      text not null,
            completed_at timestamptz not null,
            started_at   timestamptz not null,
            created_at   timestamptz,
            team         text not null,
            project      text not null,
            item_type    text not null,
            cycle_time_s double precision not null,
            lead_time_s  double precision,
            primary key (item_id, completed_at)
        )
        """
    )
    op.execute("create index completions_team_idx on completions (team, completed_at)")
    hypertable("completions", "completed_at", chunk="90 days")

    continuous_aggregate(
        "daily_throughput",
        "completed_at",
        """
        select {day} as day, team, project, item_type,
               count(*) as items,
               sum(cycle_time_s) as cycle_time_s_sum,
               max(cycle_time_s) as cycle_time_s_max
        from completions
        group by 1, 2, 3, 4
        """,
    )
    continuous_aggregate(
        "daily_stage_arrivals",
        "occurred_at",
        """
        select {day} as day, team, project, item_type, to_stage as stage,
               count(*) as arrivals
        from transitions
        group by 1, 2, 3, 4, 5
        """,
    )
    continuous_aggregate(
        "daily_stage_departures",
        "occurred_at",
        """
        select {day} as day, team, project, item_type, from_stage as stage,
               count(*) as departures
        from transitions
        where from_stage is not null
        group by 1, 2, 3, 4, 5
        """,
    )


def downgrade() -> None:
    for name in ("daily_stage_departures", "daily_stage_arrivals", "daily_throughput"):
        drop_continuous_aggregate(name)
    for table in (
        "completions",
        "stage_intervals",
        "transitions",
        "work_items",
        "events",
    ):
        op.execute(f"drop table if exists {table}")
