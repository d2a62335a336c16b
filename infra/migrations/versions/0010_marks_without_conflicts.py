"""Deferred-refresh marks that a running refresh never makes a batch wait for.

Revision ID: 0010_marks_without_conflicts
Revises: 0009_duration_histogram

Until now ``projection_dirty`` had one row per (projection, entity): a batch
marked with ``insert … on conflict do nothing`` and a refresh took the marks by
deleting them in its own transaction. While that refresh ran (seconds, for a
service with a long history), a batch marking the same entity found the deleted,
not yet committed row in the primary key and waited for the refresh to commit:
a refresh and the batches could not overlap, in one processor or across several.

Now every mark is its own row (``seq``): marking inserts and never conflicts; a
refresh deletes exactly the rows it saw (``for update skip locked``). A mark
added while a refresh runs stays for the next refresh, which is what makes it
correct: the running refresh may not have seen that batch's events. An entity
marked by several batches between two refreshes has several rows; ``pending``
counts entities, not rows.
"""

from alembic import op

revision = "0010_marks_without_conflicts"
down_revision = "0009_duration_histogram"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("alter table projection_dirty drop constraint projection_dirty_pkey")
    op.execute("alter table projection_dirty add column seq bigint generated always as identity")
    op.execute("alter table projection_dirty add primary key (seq)")
    op.execute("create index projection_dirty_entity_idx on projection_dirty (projection, entity)")


def downgrade() -> None:
    op.execute("drop index projection_dirty_entity_idx")
    op.execute("alter table projection_dirty drop constraint projection_dirty_pkey")
    op.execute("alter table projection_dirty drop column seq")
    # Back to one row per entity: keep the oldest mark of each.
    op.execute(
        """delete from projection_dirty a using projection_dirty b
           where a.projection = b.projection and a.entity = b.entity
             and (a.marked_at, a.ctid) > (b.marked_at, b.ctid)"""
    )
    op.execute("alter table projection_dirty add primary key (projection, entity)")
