"""Per-request TTFT and the engine's KV-cache usage: batch_timings and run_metrics gain them (vLLM reports them)

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")
KV_COLUMNS = (("kv_cache_usage_peak", sa.Float()), ("kv_cache_usage_mean", sa.Float()), ("preemptions", sa.Integer()))


def upgrade() -> None:
    with op.batch_alter_table("batch_timings") as batch:
        batch.add_column(sa.Column("request_ttfts_s", JSON, nullable=True))
        for name, kind in KV_COLUMNS:
            batch.add_column(sa.Column(name, kind, nullable=True))
    with op.batch_alter_table("run_metrics") as batch:
        for name, kind in KV_COLUMNS:
            batch.add_column(sa.Column(name, kind, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("run_metrics") as batch:
        for name, _ in KV_COLUMNS:
            batch.drop_column(name)
    with op.batch_alter_table("batch_timings") as batch:
        for name, _ in KV_COLUMNS:
            batch.drop_column(name)
        batch.drop_column("request_ttfts_s")
