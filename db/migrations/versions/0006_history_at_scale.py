"""years of history: 64-bit row ids, the ids each event names (the timeline's index), tallies
of finished events (the gauges and the dashboard)

On PostgreSQL every `id` and the columns referring to one become BIGINT, with their sequences
(a table rewrite: minutes for millions of rows, under a lock; run it in a quiet hour). SQLite's
INTEGER PRIMARY KEY is 64-bit already. The new columns are filled from the stored payloads in
batches, the tallies from one pass over the inbox.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02 05:00:00

"""
import json
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.orm import Session

from db.history import ids_named, rebuild_tallies

revision: str = '0006'
down_revision: str | Sequence[str] | None = '0005'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# (table, column) of every row id and every reference to one; references first.
ROW_IDS = [
    ('members', 'venue_id'), ('subscriptions', 'venue_id'), ('subscriptions', 'member_id'),
    ('mismatches', 'venue_id'), ('mismatches', 'member_id'), ('notifications', 'mismatch_id'),
    ('stripe_actions', 'mismatch_id'),
    ('venues', 'id'), ('members', 'id'), ('stripe_customers', 'id'), ('stripe_events', 'id'),
    ('rejected_deliveries', 'id'), ('subscriptions', 'id'), ('mismatches', 'id'),
    ('notifications', 'id'), ('payments', 'id'), ('stripe_actions', 'id'),
    ('thin_events', 'id'),
]
BATCH = 5000


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == 'postgresql':
        for table, column in ROW_IDS:
            op.execute(f'ALTER TABLE {table} ALTER COLUMN {column} TYPE BIGINT')
            if column == 'id':
                op.execute(f"ALTER SEQUENCE IF EXISTS {table}_id_seq AS BIGINT")
    op.add_column('stripe_events', sa.Column('subscription_id', sa.String(64), nullable=True))
    op.add_column('stripe_events', sa.Column('customer_id', sa.String(64), nullable=True))
    _fill_named_ids(bind)
    op.create_index('ix_stripe_events_subscription', 'stripe_events', ['subscription_id'],
                    postgresql_where=sa.text('subscription_id IS NOT NULL'),
                    sqlite_where=sa.text('subscription_id IS NOT NULL'))
    op.create_index('ix_stripe_events_customer', 'stripe_events', ['customer_id'],
                    postgresql_where=sa.text('customer_id IS NOT NULL'),
                    sqlite_where=sa.text('customer_id IS NOT NULL'))
    op.create_table(
        'event_tallies',
        sa.Column('status', sa.String(length=16), nullable=False),
        sa.Column('outcome', sa.String(length=64), nullable=False),
        sa.Column('account_id', sa.String(length=64), nullable=False),
        sa.Column('livemode', sa.Boolean(), nullable=False),
        sa.Column('n', sa.BigInteger(), nullable=False),
        sa.Column('last_received_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('last_detail', sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint('status', 'outcome', 'account_id', 'livemode'),
    )
    rebuild_tallies(Session(bind=bind))


def _fill_named_ids(bind: sa.engine.Connection) -> None:
    events = sa.table('stripe_events', sa.column('id'), sa.column('payload'),
                      sa.column('subscription_id'), sa.column('customer_id'))
    last = 0
    while True:
        rows = bind.execute(sa.select(events.c.id, events.c.payload)
                            .where(events.c.id > last).order_by(events.c.id)
                            .limit(BATCH)).all()
        if not rows:
            return
        named = []
        for row_id, payload in rows:
            try:
                subscription_id, customer_id = ids_named(json.loads(payload))
            except (ValueError, RecursionError, AttributeError):
                continue
            if subscription_id or customer_id:
                named.append({'row': row_id, 's': subscription_id, 'c': customer_id})
        if named:
            bind.execute(events.update().where(events.c.id == sa.bindparam('row'))
                         .values(subscription_id=sa.bindparam('s'),
                                 customer_id=sa.bindparam('c')), named)
        last = rows[-1][0]


def downgrade() -> None:
    op.drop_table('event_tallies')
    op.drop_index('ix_stripe_events_customer', table_name='stripe_events')
    op.drop_index('ix_stripe_events_subscription', table_name='stripe_events')
    with op.batch_alter_table('stripe_events') as batch:
        batch.drop_column('customer_id')
        batch.drop_column('subscription_id')
    # Row ids stay 64-bit: narrowing them could fail on ids already past 2**31.
