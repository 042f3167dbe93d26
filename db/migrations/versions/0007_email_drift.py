"""email drift kept on the member (the console reads an index, not a join of every link)

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02 05:30:00

"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from db.models import normalize_email, utcnow

revision: str = '0007'
down_revision: str | Sequence[str] | None = '0006'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column('members', sa.Column('email_drift_since', sa.DateTime(timezone=True),
                                       nullable=True))
    bind = op.get_bind()
    linked = bind.execute(sa.text(
        "SELECT m.id, m.email_normalized, c.email FROM members m"
        " JOIN venues v ON v.id = m.venue_id"
        " JOIN stripe_customers c ON c.account_id = v.account_id"
        " AND c.livemode = v.livemode AND c.customer_id = m.stripe_customer_id"
        " WHERE c.email IS NOT NULL AND NOT c.deleted")).all()
    drifted = [{'row': row_id} for row_id, mine, theirs in linked
               if normalize_email(theirs) not in (mine, None)]
    if drifted:
        members = sa.table('members', sa.column('id'), sa.column('email_drift_since'))
        bind.execute(members.update().where(members.c.id == sa.bindparam('row'))
                     .values(email_drift_since=utcnow()), drifted)
    op.create_index('ix_members_email_drift', 'members', ['email_drift_since'],
                    postgresql_where=sa.text('email_drift_since IS NOT NULL'),
                    sqlite_where=sa.text('email_drift_since IS NOT NULL'))


def downgrade() -> None:
    op.drop_index('ix_members_email_drift', table_name='members')
    with op.batch_alter_table('members') as batch:
        batch.drop_column('email_drift_since')
