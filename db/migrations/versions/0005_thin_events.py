"""thin events (Stripe Event Destinations), kept until their snapshot event is fetched

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02 04:50:00

"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0005'
down_revision: str | Sequence[str] | None = '0004'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        'thin_events',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('event_id', sa.String(length=255), nullable=False),
        sa.Column('type', sa.String(length=128), nullable=False),
        sa.Column('context', sa.String(length=64), nullable=True),
        sa.Column('livemode', sa.Boolean(), nullable=False),
        sa.Column('payload', sa.Text(), nullable=False),
        sa.Column('status', sa.String(length=16), nullable=False),
        sa.Column('snapshot_event', sa.String(length=255), nullable=True),
        sa.Column('outcome', sa.String(length=32), nullable=True),
        sa.Column('attempts', sa.Integer(), nullable=False),
        sa.Column('last_error', sa.Text(), nullable=True),
        sa.Column('received_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('fetched_at', sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('event_id'),
    )
    op.create_index('ix_thin_events_status_received', 'thin_events',
                    ['status', 'received_at'])


def downgrade() -> None:
    op.drop_index('ix_thin_events_status_received', table_name='thin_events')
    op.drop_table('thin_events')
