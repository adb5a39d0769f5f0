"""Latency figures may be unknown: results imported from the earlier tool without per-request latencies

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-29
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

COLUMNS = ("latency_mean_s", "latency_p50_s", "latency_p95_s")


def upgrade() -> None:
    with op.batch_alter_table("run_metrics") as batch:
        for name in COLUMNS:
            batch.alter_column(name, existing_type=sa.Float(), nullable=True)


def downgrade() -> None:
    # A row without a latency cannot go back to a schema that requires one: it gets NaN, as imports did before.
    for name in COLUMNS:
        op.execute(f"UPDATE run_metrics SET {name} = 'NaN' WHERE {name} IS NULL")
    with op.batch_alter_table("run_metrics") as batch:
        for name in COLUMNS:
            batch.alter_column(name, existing_type=sa.Float(), nullable=False)
