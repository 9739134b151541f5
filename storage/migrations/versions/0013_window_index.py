"""A conversation's messages indexed with `reply_to_id` beside their ids (PostgreSQL).

Every turn reads its history window as the ids of a conversation's newest messages in
the window's order, which places each answer after its question (`reply_to_id`). With
the index holding only `(conversation_id, id)`, each of the window's 200 rows was
fetched from the table for its `reply_to_id`: 0.13 ms of the database's time per turn
in a long thread, where a short one's ten rows cost nothing. With `reply_to_id`
included, the window is read from the index alone wherever the table's pages are
all-visible, so a long thread's turn costs about what a short one's does. Pages become
all-visible as the table is vacuumed, which autovacuum does to an insert-only table
after inserts of a fifth of its size: a large `messages` would keep weeks of recent
rows out of the index-only read, so it is vacuumed after a hundredth. SQLite keeps its
windows in memory and is left as it is.

Building the index holds writes to `messages` back for as long as it takes (seconds
for a few million rows): upgrade a large database at a quiet moment
(`botservice db upgrade`).

Revision ID: 0013_window_index
Revises: 0012_tool_round_flag
Create Date: 2026-12-01
"""

from __future__ import annotations

from alembic import op

revision = "0013_window_index"
down_revision = "0012_tool_round_flag"
branch_labels = None
depends_on = None

_INDEX = "ix_messages_conversation_id_id"


def _replace_index(include: list[str]) -> None:
    # Built under another name first, so the conversation's rows stay indexed until
    # the new index can take the old one's name.
    op.create_index(
        f"{_INDEX}_new",
        "messages",
        ["conversation_id", "id"],
        postgresql_include=include,
    )
    op.drop_index(_INDEX, table_name="messages")
    op.execute(f"ALTER INDEX {_INDEX}_new RENAME TO {_INDEX}")


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        _replace_index(["reply_to_id"])
        op.execute("ALTER TABLE messages SET (autovacuum_vacuum_insert_scale_factor = 0.01)")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE messages RESET (autovacuum_vacuum_insert_scale_factor)")
        _replace_index([])
