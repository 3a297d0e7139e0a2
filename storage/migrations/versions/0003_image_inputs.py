"""Image inputs: what a generation started from (mode, strength, init image and mask content addresses).

Revision ID: 0003_image_inputs
Revises: 0002_loras
"""

import sqlalchemy as sa
from alembic import op

revision = "0003_image_inputs"
down_revision = "0002_loras"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("generations") as batch:
        batch.add_column(sa.Column("mode", sa.String(16), nullable=False, server_default="txt2img"))
        batch.add_column(sa.Column("strength", sa.Float))
        batch.add_column(sa.Column("source_sha256", sa.String(64)))
        batch.add_column(sa.Column("mask_sha256", sa.String(64)))


def downgrade() -> None:
    with op.batch_alter_table("generations") as batch:
        for column in ("mask_sha256", "source_sha256", "strength", "mode"):
            batch.drop_column(column)
