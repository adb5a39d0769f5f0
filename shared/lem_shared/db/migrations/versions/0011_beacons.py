"""Beacons: heartbeats and cancel flags in the database when the broker is not Redis (the embedded stack)

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "beacons",
        sa.Column("key", sa.String(512), primary_key=True),
        sa.Column("value", sa.Text(), nullable=False),
        sa.Column("expires_at", sa.Float(), nullable=False),
    )
    op.create_index("ix_beacons_expires_at", "beacons", ["expires_at"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_beacons_expires_at", table_name="beacons")
    op.drop_table("beacons")
