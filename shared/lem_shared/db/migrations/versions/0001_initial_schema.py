"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-28
"""

from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('campaigns',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=100), nullable=False),
    sa.Column('spec', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('spec_hash', sa.String(length=64), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_table('environments',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('hash', sa.String(length=64), nullable=False),
    sa.Column('data', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('hash')
    )
    op.create_table('gpu_samples',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('host', sa.String(length=255), nullable=False),
    sa.Column('gpu_uuid', sa.String(length=64), nullable=False),
    sa.Column('gpu_index', sa.Integer(), nullable=False),
    sa.Column('time', sa.DateTime(timezone=True), nullable=False),
    sa.Column('source', sa.String(length=16), nullable=False),
    sa.Column('power_w', sa.Double(), nullable=True),
    sa.Column('energy_mj', sa.BigInteger(), nullable=True),
    sa.Column('temperature_c', sa.Double(), nullable=True),
    sa.Column('sm_clock_mhz', sa.Integer(), nullable=True),
    sa.Column('mem_clock_mhz', sa.Integer(), nullable=True),
    sa.Column('clock_event_reasons', sa.BigInteger(), nullable=True),
    sa.Column('memory_used_bytes', sa.BigInteger(), nullable=True),
    sa.Column('utilization_gpu', sa.Integer(), nullable=True),
    sa.Column('utilization_memory', sa.Integer(), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('ix_gpu_samples_uuid_time', 'gpu_samples', ['gpu_uuid', 'time'], unique=False)
    op.create_table('host_samples',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('host', sa.String(length=255), nullable=False),
    sa.Column('time', sa.DateTime(timezone=True), nullable=False),
    sa.Column('cpu_percent', sa.Double(), nullable=False),
    sa.Column('memory_used_bytes', sa.BigInteger(), nullable=False),
    sa.Column('memory_total_bytes', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('ix_host_samples_host_time', 'host_samples', ['host', 'time'], unique=False)
    op.create_table('experiments',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('campaign_id', sa.Integer(), nullable=False),
    sa.Column('index', sa.Integer(), nullable=False),
    sa.Column('backend', sa.String(length=16), nullable=False),
    sa.Column('config', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('config_hash', sa.String(length=64), nullable=False),
    sa.ForeignKeyConstraint(['campaign_id'], ['campaigns.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('campaign_id', 'config_hash')
    )
    op.create_index(op.f('ix_experiments_campaign_id'), 'experiments', ['campaign_id'], unique=False)
    op.create_table('runs',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('run_key', sa.String(length=64), nullable=False),
    sa.Column('campaign_id', sa.Integer(), nullable=False),
    sa.Column('experiment_id', sa.Integer(), nullable=False),
    sa.Column('cycle', sa.Integer(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('worker', sa.String(length=255), nullable=True),
    sa.Column('host', sa.String(length=255), nullable=True),
    sa.Column('device', sa.String(length=32), nullable=True),
    sa.Column('gpu_uuid', sa.String(length=64), nullable=True),
    sa.Column('environment_id', sa.Integer(), nullable=True),
    sa.Column('dispatched_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('window_start', sa.DateTime(timezone=True), nullable=True),
    sa.Column('window_end', sa.DateTime(timezone=True), nullable=True),
    sa.Column('error', sa.Text(), nullable=True),
    sa.ForeignKeyConstraint(['campaign_id'], ['campaigns.id'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['environment_id'], ['environments.id'], ),
    sa.ForeignKeyConstraint(['experiment_id'], ['experiments.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('run_key')
    )
    op.create_index(op.f('ix_runs_campaign_id'), 'runs', ['campaign_id'], unique=False)
    op.create_index(op.f('ix_runs_experiment_id'), 'runs', ['experiment_id'], unique=False)
    op.create_table('batch_timings',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('run_id', sa.Integer(), nullable=False),
    sa.Column('batch_index', sa.Integer(), nullable=False),
    sa.Column('batch_size', sa.Integer(), nullable=False),
    sa.Column('input_tokens', sa.Integer(), nullable=False),
    sa.Column('output_tokens', sa.Integer(), nullable=False),
    sa.Column('latency_s', sa.Double(), nullable=False),
    sa.Column('ttft_s', sa.Double(), nullable=True),
    sa.ForeignKeyConstraint(['run_id'], ['runs.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index(op.f('ix_batch_timings_run_id'), 'batch_timings', ['run_id'], unique=False)
    op.create_table('run_metrics',
    sa.Column('run_id', sa.Integer(), nullable=False),
    sa.Column('requests', sa.Integer(), nullable=False),
    sa.Column('input_tokens', sa.Integer(), nullable=False),
    sa.Column('output_tokens', sa.Integer(), nullable=False),
    sa.Column('duration_s', sa.Double(), nullable=False),
    sa.Column('tokens_per_s', sa.Double(), nullable=False),
    sa.Column('requests_per_s', sa.Double(), nullable=False),
    sa.Column('latency_mean_s', sa.Double(), nullable=False),
    sa.Column('latency_p50_s', sa.Double(), nullable=False),
    sa.Column('latency_p95_s', sa.Double(), nullable=False),
    sa.Column('ttft_mean_s', sa.Double(), nullable=True),
    sa.Column('peak_memory_bytes', sa.BigInteger(), nullable=True),
    sa.Column('peak_memory_kind', sa.String(length=32), nullable=False),
    sa.Column('model_load_s', sa.Double(), nullable=False),
    sa.Column('model_reused', sa.Boolean(), nullable=False),
    sa.Column('warmup_batches', sa.Integer(), nullable=False),
    sa.Column('energy_j', sa.Float(), nullable=True),
    sa.Column('energy_power_integral_j', sa.Float(), nullable=True),
    sa.Column('energy_source', sa.String(length=32), nullable=True),
    sa.Column('energy_note', sa.Text(), nullable=True),
    sa.Column('mean_power_w', sa.Float(), nullable=True),
    sa.Column('j_per_token', sa.Float(), nullable=True),
    sa.ForeignKeyConstraint(['run_id'], ['runs.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('run_id')
    )


def downgrade() -> None:
    op.drop_table('run_metrics')
    op.drop_index(op.f('ix_batch_timings_run_id'), table_name='batch_timings')
    op.drop_table('batch_timings')
    op.drop_index(op.f('ix_runs_experiment_id'), table_name='runs')
    op.drop_index(op.f('ix_runs_campaign_id'), table_name='runs')
    op.drop_table('runs')
    op.drop_index(op.f('ix_experiments_campaign_id'), table_name='experiments')
    op.drop_table('experiments')
    op.drop_index('ix_host_samples_host_time', table_name='host_samples')
    op.drop_table('host_samples')
    op.drop_index('ix_gpu_samples_uuid_time', table_name='gpu_samples')
    op.drop_table('gpu_samples')
    op.drop_table('environments')
    op.drop_table('campaigns')
