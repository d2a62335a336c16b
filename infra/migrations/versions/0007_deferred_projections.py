"""Deferred projections: the entities whose derived rows wait for a refresh.

Revision ID: 0007_deferred_projections
Revises: 0006_security

``projection_dirty`` holds one row per (projection, entity) whose stored events
changed since the projection last recomputed it. The processor writes the row
in the batch's own transaction (so a stored event is never without either its
derived rows or its mark) and a later refresh deletes the marks it takes, in
the transaction that replaces the rows (``processor/deferred.py``,
``docs/adr/0003-processor-incremental-and-deferred.md``).

``events_epoch`` is one counter that ``flowmetrics replay`` and ``rebuild`` bump
when they rewrite stored events or derived rows in place: the processor keeps
recent histories and rows in memory (``processor/history_cache.py``) and drops
them when the epoch moves.
"""

from alembic import op

revision = "0007_deferred_projections"
down_revision = "0006_security"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        create table projection_dirty (
            projection text not null,
            entity     text not null,
            marked_at  timestamptz not null default now(),
            primary key (projection, entity)
        )
        """
    )
    op.execute("create table events_epoch (epoch bigint not null)")
    op.execute("insert into events_epoch values (0)")


def downgrade() -> None:
    op.execute("drop table events_epoch")
    op.execute("drop table projection_dirty")
