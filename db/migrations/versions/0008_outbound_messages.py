"""outbound messages: the log, its destinations and deliveries; a mismatch's revision

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-04 17:10:00

"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0008'
down_revision: str | Sequence[str] | None = '0007'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ROW_ID = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')
WHEN = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table('mismatches') as batch:
        batch.add_column(sa.Column('revision', sa.Integer(), nullable=False,
                                   server_default='0'))
        batch.add_column(sa.Column('published_sha', sa.String(64), nullable=True))
        batch.add_column(sa.Column('published_status', sa.String(16), nullable=True))
    op.create_table(
        'messages',
        sa.Column('id', ROW_ID, primary_key=True),
        sa.Column('message_id', sa.String(64), nullable=False),
        sa.Column('type', sa.String(64), nullable=False),
        sa.Column('mismatch_id', ROW_ID, sa.ForeignKey(
            'mismatches.id', ondelete='SET NULL', name='fk_messages_mismatch_id_mismatches'),
            nullable=True),
        sa.Column('account_id', sa.String(64), nullable=True),
        sa.Column('revision', sa.Integer(), nullable=False),
        sa.Column('body', sa.Text(), nullable=False),
        sa.Column('created_at', WHEN, nullable=False),
        sa.PrimaryKeyConstraint('id', name='pk_messages'),
        sa.UniqueConstraint('message_id', name='uq_messages_message_id'),
    )
    op.create_index('ix_messages_mismatch', 'messages', ['mismatch_id'])
    op.create_index('ix_messages_created_at', 'messages', ['created_at'])
    op.create_table(
        'destinations',
        sa.Column('id', ROW_ID, primary_key=True),
        sa.Column('name', sa.String(64), nullable=False),
        sa.Column('url', sa.String(2048), nullable=False),
        sa.Column('secrets', sa.JSON(), nullable=False),
        sa.Column('event_types', sa.JSON(), nullable=False),
        sa.Column('account_id', sa.String(64), nullable=True),
        sa.Column('from_config', sa.Boolean(), nullable=False),
        sa.Column('enabled', sa.Boolean(), nullable=False),
        sa.Column('disabled_reason', sa.Text(), nullable=True),
        sa.Column('draining_until', WHEN, nullable=True),
        sa.Column('alerted_on', sa.String(10), nullable=True),
        sa.Column('created_at', WHEN, nullable=False),
        sa.Column('updated_at', WHEN, nullable=False),
        sa.PrimaryKeyConstraint('id', name='pk_destinations'),
        sa.UniqueConstraint('name', name='uq_destinations_name'),
    )
    op.create_table(
        'deliveries',
        sa.Column('id', ROW_ID, primary_key=True),
        sa.Column('destination_id', ROW_ID, sa.ForeignKey(
            'destinations.id', ondelete='CASCADE',
            name='fk_deliveries_destination_id_destinations'), nullable=False),
        sa.Column('message_id', ROW_ID, sa.ForeignKey(
            'messages.id', ondelete='CASCADE', name='fk_deliveries_message_id_messages'),
            nullable=False),
        sa.Column('status', sa.String(16), nullable=False),
        sa.Column('attempts', sa.Integer(), nullable=False),
        sa.Column('next_attempt_at', WHEN, nullable=False),
        sa.Column('last_status_code', sa.Integer(), nullable=True),
        sa.Column('last_latency_ms', sa.Integer(), nullable=True),
        sa.Column('last_error', sa.Text(), nullable=True),
        sa.Column('created_at', WHEN, nullable=False),
        sa.Column('finished_at', WHEN, nullable=True),
        sa.PrimaryKeyConstraint('id', name='pk_deliveries'),
        sa.UniqueConstraint('destination_id', 'message_id',
                            name='uq_deliveries_destination_id_message_id'),
    )
    op.create_index('ix_deliveries_due', 'deliveries',
                    ['destination_id', 'status', 'next_attempt_at'])
    op.create_index('ix_deliveries_message', 'deliveries', ['message_id'])


def downgrade() -> None:
    op.drop_table('deliveries')
    op.drop_table('destinations')
    op.drop_table('messages')
    with op.batch_alter_table('mismatches') as batch:
        batch.drop_column('published_status')
        batch.drop_column('published_sha')
        batch.drop_column('revision')
