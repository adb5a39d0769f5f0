"""Clock offsets: each run's worker-host clock against the database's (at claim and end), and each telemetry
host's, so the finaliser can join a run's window to samples stamped by another clock

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("runs", sa.Column("clock_offset_s", sa.Float(), nullable=True))
    op.add_column("runs", sa.Column("clock_offset_end_s", sa.Float(), nullable=True))
    op.create_table(
        "clock_offsets",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("measured_at", sa.Float(), nullable=False),
        sa.Column("offset_s", sa.Float(), nullable=False),
        sa.Column("rtt_s", sa.Float(), nullable=False),
    )
    op.create_index("ix_clock_offsets_host_measured_at", "clock_offsets", ["host", "measured_at"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_clock_offsets_host_measured_at", table_name="clock_offsets")
    op.drop_table("clock_offsets")
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("clock_offset_end_s")
        batch.drop_column("clock_offset_s")
