"""Results provenance: the schema and tool version of every run, imported campaigns and their unmapped fields

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("campaigns") as batch:
        batch.add_column(sa.Column("source", sa.String(16), nullable=False, server_default="lem"))
        batch.add_column(sa.Column("imported_from", sa.Text(), nullable=True))
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("schema_version", sa.String(16), nullable=True))
        batch.add_column(sa.Column("tool_version", sa.String(32), nullable=True))
        batch.add_column(sa.Column("imported", sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
                                   nullable=True))
    # Runs recorded before this revision: the schema they were written under is at most 0003 (their exact
    # revision is not known), the tool version is not known.
    op.execute("UPDATE runs SET schema_version = 'alembic <=0003'")


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("imported")
        batch.drop_column("tool_version")
        batch.drop_column("schema_version")
    with op.batch_alter_table("campaigns") as batch:
        batch.drop_column("imported_from")
        batch.drop_column("source")
