"""Signing keys in the database: private keys sealed under the key-encryption key.

Revision ID: 0002
Revises: 0001
Create Date: 2025-02-01

Written out in full rather than imported from ``tables.py`` (see 0001).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    ring = op.create_table(
        "signing_key_ring",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("generation", sa.BigInteger, nullable=False),
        sa.Column("kek_check", sa.Text),
        sa.CheckConstraint("id = 1", name="signing_key_ring_one_row"),
    )
    # The row every writer of keys locks; generation 0 and no check value: no key yet.
    op.bulk_insert(ring, [{"id": 1, "generation": 0, "kek_check": None}])
    op.create_table(
        "signing_keys",
        sa.Column("kid", sa.Text(collation="C"), primary_key=True),
        sa.Column("alg", sa.Text(collation="C"), nullable=False),
        sa.Column("created_at", sa.Double, nullable=False),
        sa.Column("activates_at", sa.Double, nullable=False),
        sa.Column("retired_at", sa.Double),
        sa.Column("publish_until", sa.Double),
        sa.Column("public_jwk", sa.Text, nullable=False),
        sa.Column("sealed_key", sa.LargeBinary, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("signing_keys")
    op.drop_table("signing_key_ring")
