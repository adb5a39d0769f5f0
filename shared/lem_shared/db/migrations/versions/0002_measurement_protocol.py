"""Measurement protocol: warm-up convergence, window passes, idle phases, baselines, analysis and verdict

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")
NEW_FLOATS = ("energy_adjusted_j", "baseline_power_w", "deep_idle_power_w", "idle_before_w", "idle_after_w",
              "peak_power_w", "max_temperature_c", "j_per_request", "tokens_per_j")


def upgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("phases", JSON, nullable=True))
    with op.batch_alter_table("run_metrics") as batch:
        # Existing runs warmed up for a fixed count and measured the workload once.
        batch.add_column(sa.Column("warmup_iterations", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("warmup_converged", sa.Boolean(), nullable=False, server_default=sa.false()))
        batch.add_column(sa.Column("warmup_final_cv", sa.Double(), nullable=True))
        batch.add_column(sa.Column("passes", sa.Integer(), nullable=False, server_default="1"))
        batch.add_column(sa.Column("baseline_method", sa.String(length=32), nullable=True))
        batch.add_column(sa.Column("verdict", sa.String(length=16), nullable=True))
        batch.add_column(sa.Column("analysis", JSON, nullable=True))
        for name in NEW_FLOATS:
            batch.add_column(sa.Column(name, sa.Float(), nullable=True))
    op.execute("UPDATE run_metrics SET warmup_iterations = warmup_batches")
    with op.batch_alter_table("run_metrics") as batch:
        batch.drop_column("warmup_batches")
        batch.alter_column("warmup_iterations", server_default=None)
        batch.alter_column("warmup_converged", server_default=None)
        batch.alter_column("passes", server_default=None)


def downgrade() -> None:
    with op.batch_alter_table("run_metrics") as batch:
        batch.add_column(sa.Column("warmup_batches", sa.Integer(), nullable=False, server_default="0"))
    op.execute("UPDATE run_metrics SET warmup_batches = warmup_iterations")
    with op.batch_alter_table("run_metrics") as batch:
        batch.alter_column("warmup_batches", server_default=None)
        for name in ("warmup_iterations", "warmup_converged", "warmup_final_cv", "passes", "baseline_method",
                     "verdict", "analysis", *NEW_FLOATS):
            batch.drop_column(name)
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("phases")
