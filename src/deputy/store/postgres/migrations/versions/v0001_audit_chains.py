"""The audit log, ledger and revocations: records in per-writer chains, and their registry.

Revision ID: 0001
Revises:
Create Date: 2025-01-01

Written out in full rather than imported from ``tables.py``: a migration is history and must
not change when the current schema does (``tests/postgres`` checks the two agree at head).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _text() -> sa.Text:
    return sa.Text(collation="C")


def upgrade() -> None:
    op.create_table(
        "records",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("chain", sa.BigInteger, nullable=False),
        sa.Column("chain_seq", sa.BigInteger, nullable=False),
        sa.Column("decision_id", _text(), nullable=False),
        sa.Column("time", sa.Double, nullable=False),
        sa.Column("outcome", _text(), nullable=False),
        sa.Column("execution_id", _text()),
        sa.Column("agent_instance", _text()),
        sa.Column("workload_id", _text()),
        sa.Column("user_id", _text()),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("prev_hash", sa.Text, nullable=False),
        sa.Column("hash", sa.Text, nullable=False),
        sa.UniqueConstraint("chain", "chain_seq", name="records_chain_seq"),
        sa.UniqueConstraint("decision_id", name="records_decision_id"),
    )
    for column in ("execution_id", "agent_instance", "workload_id", "user_id", "outcome"):
        op.create_index(f"records_{column}", "records", [column, "id"])
    op.create_index("records_time", "records", ["time"])

    op.create_table(
        "credentials",
        sa.Column("jti", _text(), primary_key=True),
        sa.Column("record_id", sa.BigInteger, nullable=False),
        sa.Column("user_issuer", _text()),
        sa.Column("user_id", _text()),
        sa.Column("category", _text()),
        sa.Column("tool", _text()),
        sa.Column("expires_at", sa.BigInteger),
        sa.Column("issued_at", sa.Double),
        sa.Column("workflow", _text()),
        sa.Column("scope", _text()),
    )
    op.create_index("credentials_record_id", "credentials", ["record_id"])
    op.create_index(
        "credentials_user_category",
        "credentials",
        ["user_issuer", "user_id", "category", "issued_at"],
    )
    op.create_index("credentials_grants", "credentials", ["issued_at", "workflow", "tool", "scope"])
    op.create_index("credentials_live", "credentials", ["expires_at", "issued_at"])

    op.create_table(
        "revocations",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("record_id", sa.BigInteger, nullable=False),
        sa.Column("selector", _text(), nullable=False),
        sa.Column("value", _text(), nullable=False),
        sa.Column("issued_before", sa.BigInteger, nullable=False),
        sa.Column("expires_at", sa.BigInteger, nullable=False),
    )
    op.create_index("revocations_record_id", "revocations", ["record_id"])
    op.create_index("revocations_expires_at", "revocations", ["expires_at"])

    op.create_table(
        "uses",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("record_id", sa.BigInteger, nullable=False),
        sa.Column("jti", _text(), nullable=False),
        sa.Column("operation", _text(), nullable=False),
        sa.Column("outcome", sa.BigInteger, nullable=False),
        sa.Column("time", sa.Double, nullable=False),
        sa.Column("reported_by", _text()),
    )
    op.create_index("uses_jti", "uses", ["jti", "time"])
    op.create_index("uses_record_id", "uses", ["record_id"])

    op.create_table(
        "record_tools",
        sa.Column("tool", _text(), nullable=False),
        sa.Column("record_id", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("tool", "record_id", name="record_tools_pkey"),
    )
    op.create_index("record_tools_record_id", "record_tools", ["record_id"])

    op.create_table(
        "chain_heads",
        sa.Column("chain", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("seq", sa.BigInteger, nullable=False),
        sa.Column("hash", sa.Text, nullable=False),
        sa.Column("mac", sa.Text, nullable=False),
    )
    op.create_table(
        "chain_registry",
        sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("event", _text(), nullable=False),
        sa.Column("chain", sa.BigInteger, nullable=False),
        sa.Column("time", sa.Double, nullable=False),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("prev_hash", sa.Text, nullable=False),
        sa.Column("hash", sa.Text, nullable=False),
    )
    registry_head = op.create_table(
        "chain_registry_head",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("seq", sa.BigInteger),
        sa.Column("hash", sa.Text),
        sa.Column("mac", sa.Text),
        sa.CheckConstraint("id = 1", name="chain_registry_head_one_row"),
    )
    # The row writers lock to register; empty until the first writer (which has the key).
    op.bulk_insert(registry_head, [{"id": 1, "seq": None, "hash": None, "mac": None}])
    op.create_table(
        "chain_anchors",
        sa.Column("registry_seq", sa.BigInteger, nullable=False),
        sa.Column("chain", sa.BigInteger, nullable=False),
        sa.Column("seq", sa.BigInteger, nullable=False),
        sa.Column("hash", sa.Text, nullable=False),
        sa.PrimaryKeyConstraint("registry_seq", "chain", name="chain_anchors_pkey"),
    )
    op.create_index("chain_anchors_chain", "chain_anchors", ["chain", "registry_seq"])


def downgrade() -> None:
    for table in (
        "chain_anchors",
        "chain_registry_head",
        "chain_registry",
        "chain_heads",
        "record_tools",
        "uses",
        "revocations",
        "credentials",
        "records",
    ):
        op.drop_table(table)
