"""The whole machine: host_energy_samples (RAPL package and DRAM counters per host), runs.gpu_uuids (every GPU
of a multi-GPU run), run_metrics' GPU/CPU/DRAM/total energy, the host-energy note and carbon

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

METRICS = (
    ("energy_gpu_j", sa.Float()),
    ("energy_cpu_j", sa.Float()),
    ("energy_dram_j", sa.Float()),
    ("energy_total_j", sa.Float()),
    ("energy_host_note", sa.Text()),
    ("carbon_g", sa.Float()),
    ("carbon_source", sa.Text()),
)


def upgrade() -> None:
    op.create_table(
        "host_energy_samples",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("domain", sa.String(64), nullable=False),
        sa.Column("energy_j", sa.Float(), nullable=False),
        sa.Column("reset", sa.Boolean(), nullable=False),
    )
    op.create_index("ix_host_energy_samples_host_time", "host_energy_samples", ["host", "time"], unique=False)
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("gpu_uuids", sa.JSON().with_variant(JSONB(), "postgresql"), nullable=True))
    with op.batch_alter_table("run_metrics") as batch:
        for name, kind in METRICS:
            batch.add_column(sa.Column(name, kind, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("run_metrics") as batch:
        for name, _ in reversed(METRICS):
            batch.drop_column(name)
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("gpu_uuids")
    op.drop_index("ix_host_energy_samples_host_time", table_name="host_energy_samples")
    op.drop_table("host_energy_samples")
