"""Initial history schema: generations, images, and full-text search of prompts on SQLite.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "generations",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("checkpoint", sa.String(16), nullable=False),
        sa.Column("prompt", sa.Text, nullable=False),
        sa.Column("negative_prompt", sa.Text, nullable=False),
        sa.Column("seed", sa.BigInteger),
        sa.Column("steps", sa.Integer, nullable=False),
        sa.Column("guidance", sa.Float, nullable=False),
        sa.Column("width", sa.Integer, nullable=False),
        sa.Column("height", sa.Integer, nullable=False),
        sa.Column("num_images", sa.Integer, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("error", sa.Text),
        sa.Column("encode_ms", sa.Integer),
        sa.Column("denoise_ms", sa.Integer),
        sa.Column("decode_ms", sa.Integer),
        sa.Column("total_ms", sa.Integer),
        sa.Column("device", sa.String(64), nullable=False),
        sa.Column("placement", sa.String(16), nullable=False),
        sa.Column("app_version", sa.String(32), nullable=False),
        sa.Column("favorite", sa.Boolean, nullable=False),
        sa.Column("comparison_id", sa.String(32)),
        sa.Column("files_missing", sa.Boolean, nullable=False),
    )
    op.create_index("ix_generations_checkpoint_id", "generations", ["checkpoint", "id"])
    op.create_index("ix_generations_favorite_id", "generations", ["favorite", "id"])
    op.create_index("ix_generations_comparison_id", "generations", ["comparison_id"])
    op.create_table(
        "images",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("generation_id", sa.Integer, sa.ForeignKey("generations.id", ondelete="CASCADE"), nullable=False),
        sa.Column("position", sa.Integer, nullable=False),
        sa.Column("seed", sa.BigInteger),
        sa.Column("path", sa.String(255), nullable=False),
        sa.Column("thumb_path", sa.String(255), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("bytes", sa.Integer, nullable=False),
        sa.Column("width", sa.Integer, nullable=False),
        sa.Column("height", sa.Integer, nullable=False),
    )
    op.create_index("ix_images_generation_id", "images", ["generation_id"])

    if op.get_bind().dialect.name == "sqlite":
        # Prompt search through FTS5 (external content, kept in step by triggers): a LIKE scan over 100k prompts
        # is too slow for a search box.
        op.execute("CREATE VIRTUAL TABLE generations_fts USING fts5(prompt, content='generations', content_rowid='id')")
        op.execute(
            "CREATE TRIGGER generations_fts_ai AFTER INSERT ON generations BEGIN "
            "INSERT INTO generations_fts(rowid, prompt) VALUES (new.id, new.prompt); END"
        )
        op.execute(
            "CREATE TRIGGER generations_fts_ad AFTER DELETE ON generations BEGIN "
            "INSERT INTO generations_fts(generations_fts, rowid, prompt) VALUES ('delete', old.id, old.prompt); END"
        )
        op.execute(
            "CREATE TRIGGER generations_fts_au AFTER UPDATE OF prompt ON generations BEGIN "
            "INSERT INTO generations_fts(generations_fts, rowid, prompt) VALUES ('delete', old.id, old.prompt); "
            "INSERT INTO generations_fts(rowid, prompt) VALUES (new.id, new.prompt); END"
        )
    else:
        op.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
        op.execute("CREATE INDEX ix_generations_prompt_trgm ON generations USING gin (prompt gin_trgm_ops)")


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        op.execute("DROP TABLE IF EXISTS generations_fts")
    op.drop_table("images")
    op.drop_table("generations")
