"""payments of outside subscriptions, and the audit log of actions on Stripe

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02 01:50:00

"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0004'
down_revision: str | Sequence[str] | None = '0003'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        'payments',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('account_id', sa.String(length=64), nullable=False),
        sa.Column('livemode', sa.Boolean(), nullable=False),
        sa.Column('subscription_id', sa.String(length=64), nullable=False),
        sa.Column('invoice_id', sa.String(length=64), nullable=False),
        sa.Column('charge_id', sa.String(length=64), nullable=True),
        sa.Column('payment_intent_id', sa.String(length=64), nullable=True),
        sa.Column('amount', sa.BigInteger(), nullable=False),
        sa.Column('currency', sa.String(length=8), nullable=False),
        sa.Column('paid_at', sa.BigInteger(), nullable=False),
        sa.Column('amount_refunded', sa.BigInteger(), nullable=False),
        sa.Column('disputed', sa.Boolean(), nullable=False),
        sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('account_id', 'invoice_id'),
    )
    op.create_index('ix_payments_account_subscription', 'payments',
                    ['account_id', 'subscription_id'])
    op.create_index('ix_payments_account_charge', 'payments', ['account_id', 'charge_id'])
    op.create_index('ix_payments_account_payment_intent', 'payments',
                    ['account_id', 'payment_intent_id'])
    op.create_table(
        'stripe_actions',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('mismatch_id', sa.Integer(), nullable=True),
        sa.Column('account_id', sa.String(length=64), nullable=False),
        sa.Column('kind', sa.String(length=32), nullable=False),
        sa.Column('target', sa.String(length=64), nullable=False),
        sa.Column('amount', sa.BigInteger(), nullable=True),
        sa.Column('currency', sa.String(length=8), nullable=True),
        sa.Column('idempotency_key', sa.String(length=128), nullable=False),
        sa.Column('status', sa.String(length=16), nullable=False),
        sa.Column('actor', sa.String(length=200), nullable=False),
        sa.Column('requested_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('stripe_request_id', sa.String(length=64), nullable=True),
        sa.Column('result', sa.Text(), nullable=True),
        sa.Column('error', sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(['mismatch_id'], ['mismatches.id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('idempotency_key'),
    )
    op.create_index('ix_stripe_actions_mismatch', 'stripe_actions', ['mismatch_id'])


def downgrade() -> None:
    op.drop_index('ix_stripe_actions_mismatch', table_name='stripe_actions')
    op.drop_table('stripe_actions')
    op.drop_index('ix_payments_account_payment_intent', table_name='payments')
    op.drop_index('ix_payments_account_charge', table_name='payments')
    op.drop_index('ix_payments_account_subscription', table_name='payments')
    op.drop_table('payments')
