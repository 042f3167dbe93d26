"""inbox events record the customer they wait for

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01 20:30:00

"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0002'
down_revision: str | Sequence[str] | None = '0001'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('stripe_events', schema=None) as batch_op:
        batch_op.add_column(sa.Column('waiting_for', sa.String(length=64), nullable=True))
        batch_op.create_index('ix_stripe_events_waiting_for', ['waiting_for'], unique=False,
                              postgresql_where=sa.text('waiting_for IS NOT NULL'),
                              sqlite_where=sa.text('waiting_for IS NOT NULL'))


def downgrade() -> None:
    with op.batch_alter_table('stripe_events', schema=None) as batch_op:
        batch_op.drop_index('ix_stripe_events_waiting_for')
        batch_op.drop_column('waiting_for')
