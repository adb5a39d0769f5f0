"""Serving runs: request_timings (each request's times, tokens and attributed energy) and run_metrics' serving
figures (TPOT, goodput, the steady-state window and its energy, per-request energy percentiles)

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

COLUMNS = (
    ("tpot_mean_s", sa.Float()),
    ("tpot_p50_s", sa.Float()),
    ("tpot_p90_s", sa.Float()),
    ("tpot_p99_s", sa.Float()),
    ("goodput_rps", sa.Float()),
    ("slo_attainment", sa.Float()),
    ("steady_start_s", sa.Float()),
    ("steady_end_s", sa.Float()),
    ("steady_level", sa.Integer()),
    ("steady_method", sa.Text()),
    ("steady_energy_j", sa.Float()),
    ("steady_j_per_token", sa.Float()),
    ("steady_tokens_per_j", sa.Float()),
    ("steady_j_per_request", sa.Float()),
    ("request_energy_mean_j", sa.Float()),
    ("request_energy_p50_j", sa.Float()),
    ("request_energy_p90_j", sa.Float()),
    ("request_energy_p99_j", sa.Float()),
)


def upgrade() -> None:
    op.create_table(
        "request_timings",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("run_id", sa.Integer(), sa.ForeignKey("runs.id", ondelete="CASCADE"), nullable=False),
        sa.Column("request_index", sa.Integer(), nullable=False),
        sa.Column("arrival", sa.Float(), nullable=False),
        sa.Column("first_token", sa.Float(), nullable=True),
        sa.Column("finish", sa.Float(), nullable=False),
        sa.Column("prompt_tokens", sa.Integer(), nullable=False),
        sa.Column("output_tokens", sa.Integer(), nullable=False),
        sa.Column("token_times", sa.JSON().with_variant(JSONB(), "postgresql"), nullable=False),
        sa.Column("energy_j", sa.Float(), nullable=True),
    )
    op.create_index(op.f("ix_request_timings_run_id"), "request_timings", ["run_id"], unique=False)
    with op.batch_alter_table("run_metrics") as batch:
        for name, kind in COLUMNS:
            batch.add_column(sa.Column(name, kind, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("run_metrics") as batch:
        for name, _ in reversed(COLUMNS):
            batch.drop_column(name)
    op.drop_index(op.f("ix_request_timings_run_id"), table_name="request_timings")
    op.drop_table("request_timings")
