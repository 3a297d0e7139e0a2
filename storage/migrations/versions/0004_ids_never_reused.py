"""Generation ids are never reused: SQLite's AUTOINCREMENT on `generations`.

Without it SQLite gives a new row the largest rowid + 1, so deleting the newest generation handed its id to the next
one, and an id an API client or another tab held named a different image. SQLite cannot add AUTOINCREMENT to a table,
so the table is rebuilt (rows, ids and indexes kept; `storage.database.migrate` runs SQLite migrations with foreign
keys off, so dropping the old table does not cascade to its images). Ids deleted before this migration may still be
given out once more. PostgreSQL's sequences never reuse an id: nothing to do there.

Revision ID: 0004_ids_never_reused
Revises: 0003_image_inputs
"""

from alembic import op

revision = "0004_ids_never_reused"
down_revision = "0003_image_inputs"
branch_labels = None
depends_on = None


def _rebuild(autoincrement: bool) -> None:
    bind = op.get_bind()
    if bind.dialect.name != "sqlite":
        return
    # Dropping the old table drops its triggers, which keep the prompt search (0001's FTS5 index) in step: they are
    # read here and made again as they were, and the index rebuilt from the table.
    query = "SELECT sql FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'generations'"
    triggers = [sql for (sql,) in bind.exec_driver_sql(query)]
    with op.batch_alter_table("generations", recreate="always", table_kwargs={"sqlite_autoincrement": autoincrement}):
        pass
    for sql in triggers:
        bind.exec_driver_sql(sql)  # as written: through text() a ":name" in a trigger would read as a parameter
    if bind.exec_driver_sql("SELECT 1 FROM sqlite_master WHERE name = 'generations_fts'").first() is not None:
        bind.exec_driver_sql("INSERT INTO generations_fts(generations_fts) VALUES ('rebuild')")


def upgrade() -> None:
    _rebuild(True)


def downgrade() -> None:
    _rebuild(False)
