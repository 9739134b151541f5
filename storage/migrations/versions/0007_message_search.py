"""Full-text search of messages: an FTS5 index kept by triggers on SQLite, a GIN index
on `to_tsvector('simple', text)` on PostgreSQL (storage/message_search.py).

Revision ID: 0007_message_search
Revises: 0006_tool_rounds
Create Date: 2026-11-30
"""

from __future__ import annotations

from alembic import op

revision = "0007_message_search"
down_revision = "0006_tool_rounds"
branch_labels = None
depends_on = None

# External content: the index keeps the words, `messages` keeps the text. FTS5 needs
# the old text to remove a row's words, hence the triggers' 'delete' commands.
_SQLITE_UP = (
    "CREATE VIRTUAL TABLE messages_fts USING fts5("
    "text, content='messages', content_rowid='id', tokenize='unicode61 remove_diacritics 2')",
    "CREATE TRIGGER messages_fts_insert AFTER INSERT ON messages BEGIN "
    "INSERT INTO messages_fts(rowid, text) VALUES (new.id, new.text); END",
    "CREATE TRIGGER messages_fts_delete AFTER DELETE ON messages BEGIN "
    "INSERT INTO messages_fts(messages_fts, rowid, text) VALUES ('delete', old.id, old.text); END",
    "CREATE TRIGGER messages_fts_update AFTER UPDATE OF text ON messages BEGIN "
    "INSERT INTO messages_fts(messages_fts, rowid, text) VALUES ('delete', old.id, old.text); "
    "INSERT INTO messages_fts(rowid, text) VALUES (new.id, new.text); END",
    # The messages stored before this revision.
    "INSERT INTO messages_fts(messages_fts) VALUES ('rebuild')",
)
_SQLITE_DOWN = (
    "DROP TRIGGER IF EXISTS messages_fts_update",
    "DROP TRIGGER IF EXISTS messages_fts_delete",
    "DROP TRIGGER IF EXISTS messages_fts_insert",
    "DROP TABLE IF EXISTS messages_fts",
)


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        for statement in _SQLITE_UP:
            op.execute(statement)
        return
    op.execute(
        "CREATE INDEX ix_messages_text_search ON messages "
        "USING gin (to_tsvector('simple'::regconfig, text))"
    )


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        for statement in _SQLITE_DOWN:
            op.execute(statement)
        return
    op.execute("DROP INDEX IF EXISTS ix_messages_text_search")
