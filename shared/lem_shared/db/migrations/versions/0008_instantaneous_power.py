"""Instantaneous power beside the averaged reading: gpu_samples gains the GPU's, its memory's and the module's

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

COLUMNS = ("power_instant_w", "power_memory_w", "power_module_w")


def upgrade() -> None:
    with op.batch_alter_table("gpu_samples") as batch:
        for name in COLUMNS:
            batch.add_column(sa.Column(name, sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("gpu_samples") as batch:
        for name in reversed(COLUMNS):
            batch.drop_column(name)
