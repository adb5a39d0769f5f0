"""Campaign scheduling: run order, the order's seed, skipped/cancelled statuses, model-load energy

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("campaigns") as batch:
        batch.add_column(sa.Column("seed", sa.BigInteger(), nullable=True))
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("position", sa.Integer(), nullable=False, server_default="0"))
    # Earlier campaigns were dispatched in id order.
    op.execute("UPDATE runs SET position = id")
    with op.batch_alter_table("runs") as batch:
        batch.alter_column("position", server_default=None)
    with op.batch_alter_table("run_metrics") as batch:
        batch.add_column(sa.Column("model_load_energy_j", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("run_metrics") as batch:
        batch.drop_column("model_load_energy_j")
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("position")
    with op.batch_alter_table("campaigns") as batch:
        batch.drop_column("seed")
