"""LoRAs of each generation (issue 16): name, AutoV3 hash, weight and checkpoint, one row per LoRA.

Revision ID: 0002_loras
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002_loras"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "generation_loras",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("generation_id", sa.Integer, sa.ForeignKey("generations.id", ondelete="CASCADE"), nullable=False),
        sa.Column("position", sa.Integer, nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.Column("weight", sa.Float, nullable=False),
        sa.Column("checkpoint", sa.String(16), nullable=False),
    )
    op.create_index("ix_generation_loras_generation_id", "generation_loras", ["generation_id"])
    # History filtered by LoRA: the rows of one name, newest generation first.
    op.create_index("ix_generation_loras_name_generation_id", "generation_loras", ["name", "generation_id"])


def downgrade() -> None:
    op.drop_table("generation_loras")
