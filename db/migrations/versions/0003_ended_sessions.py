"""console sessions ended by signing out

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02 01:20:00

"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0003'
down_revision: str | Sequence[str] | None = '0002'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        'ended_sessions',
        sa.Column('session_id', sa.String(length=64), nullable=False),
        sa.Column('ended_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('session_id'),
    )
    op.create_index('ix_ended_sessions_ended_at', 'ended_sessions', ['ended_at'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_ended_sessions_ended_at', table_name='ended_sessions')
    op.drop_table('ended_sessions')
