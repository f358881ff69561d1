"""the audit log becomes a Merkle tree: dense leaf indexes, leaf hashes, nodes, checkpoints;
entries, nodes and checkpoints refuse UPDATE and DELETE

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-29

Entries stored before this revision keep their order: they are numbered 0, 1, 2, ... by their
old id (which a database sequence gave, with gaps), and get the leaf hash of that form. The tree
nodes are then built by the running service's maintainer, as for any new entry.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC

import sqlalchemy as sa
from alembic import op

from app.audit import canonical

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_TIME = sa.DateTime(timezone=True)
_APPEND_ONLY = ("audit_entries", "audit_nodes", "audit_checkpoints")
_MESSAGE = "the audit log is append-only"

_entries = sa.table(
    "audit_entries",
    sa.column("id", _BIG_ID),
    sa.column("time", _TIME),
    sa.column("actor", sa.String),
    sa.column("client", sa.String),
    sa.column("action", sa.String),
    sa.column("target", sa.String),
    sa.column("decision", sa.String),
    sa.column("reasons", sa.JSON),
    sa.column("policy_hash", sa.String),
    sa.column("purpose", sa.String),
    sa.column("request_id", sa.String),
    sa.column("leaf_hash", sa.LargeBinary),
)


def _renumber(bind: sa.Connection) -> None:
    # Two steps so that no new number collides with an old one on the way: first every id
    # becomes negative, then -(old id) - 1 in ascending old order becomes 0, 1, 2, ...
    op.execute("UPDATE audit_entries SET id = -id - 1")
    ids = [row[0] for row in bind.execute(sa.text("SELECT id FROM audit_entries ORDER BY id DESC"))]
    update = sa.text("UPDATE audit_entries SET id = :new WHERE id = :old")
    for start in range(0, len(ids), 1000):
        chunk = ids[start : start + 1000]
        bind.execute(update, [{"new": start + n, "old": old} for n, old in enumerate(chunk)])


def _hash_leaves(bind: sa.Connection) -> None:
    after = -1
    while True:
        rows = bind.execute(
            sa.select(_entries).where(_entries.c.id > after).order_by(_entries.c.id).limit(1000)
        ).all()
        if not rows:
            return
        hashed = []
        for row in rows:
            entry = dict(row._mapping)
            stamp = entry["time"]
            entry["time"] = stamp if stamp.tzinfo is not None else stamp.replace(tzinfo=UTC)
            hashed.append({"key": entry["id"], "leaf_hash": canonical.leaf_hash(entry)})
        bind.execute(
            _entries.update()
            .where(_entries.c.id == sa.bindparam("key"))
            .values(leaf_hash=sa.bindparam("leaf_hash")),
            hashed,
        )
        after = rows[-1].id


def _append_only(dialect: str) -> None:
    if dialect == "postgresql":
        op.execute(
            "CREATE FUNCTION tearline_append_only() RETURNS trigger LANGUAGE plpgsql AS $$ "
            f"BEGIN RAISE EXCEPTION '{_MESSAGE}: % on % refused', TG_OP, TG_TABLE_NAME "
            "USING ERRCODE = 'insufficient_privilege'; END $$"
        )
        for table in _APPEND_ONLY:
            op.execute(
                f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table} "
                "FOR EACH ROW EXECUTE FUNCTION tearline_append_only()"
            )
            op.execute(
                f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table} "
                "FOR EACH STATEMENT EXECUTE FUNCTION tearline_append_only()"
            )
    elif dialect == "sqlite":
        for table in _APPEND_ONLY:
            for operation in ("UPDATE", "DELETE"):
                op.execute(
                    f"CREATE TRIGGER {table}_no_{operation.lower()} BEFORE {operation} ON {table} "
                    f"BEGIN SELECT RAISE(ABORT, '{_MESSAGE}'); END"
                )


def _drop_append_only(dialect: str) -> None:
    for table in _APPEND_ONLY:
        if dialect == "postgresql":
            op.execute(f"DROP TRIGGER IF EXISTS {table}_append_only ON {table}")
            op.execute(f"DROP TRIGGER IF EXISTS {table}_no_truncate ON {table}")
        elif dialect == "sqlite":
            op.execute(f"DROP TRIGGER IF EXISTS {table}_no_update")
            op.execute(f"DROP TRIGGER IF EXISTS {table}_no_delete")
    if dialect == "postgresql":
        op.execute("DROP FUNCTION IF EXISTS tearline_append_only()")


def upgrade() -> None:
    bind = op.get_bind()
    dialect = bind.dialect.name
    if dialect == "postgresql":
        # Indexes are given under the log's lock from now on, never by a sequence.
        op.execute("ALTER TABLE audit_entries ALTER COLUMN id DROP DEFAULT")
        op.execute("DROP SEQUENCE IF EXISTS audit_entries_id_seq")
    with op.batch_alter_table("audit_entries") as batch:
        batch.add_column(sa.Column("leaf_hash", sa.LargeBinary(length=32), nullable=True))
    _renumber(bind)
    _hash_leaves(bind)
    with op.batch_alter_table("audit_entries") as batch:
        batch.alter_column("leaf_hash", existing_type=sa.LargeBinary(length=32), nullable=False)
        batch.create_index("ix_audit_entries_time", ["time"])
        batch.create_check_constraint(op.f("ck_audit_entries_leaf_index"), "id >= 0")
    op.create_table(
        "audit_nodes",
        sa.Column("level", sa.SmallInteger(), autoincrement=False, nullable=False),
        sa.Column("idx", _BIG_ID, autoincrement=False, nullable=False),
        sa.Column("hash", sa.LargeBinary(length=32), nullable=False),
        sa.PrimaryKeyConstraint("level", "idx", name=op.f("pk_audit_nodes")),
    )
    tree = op.create_table(
        "audit_tree",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("size", _BIG_ID, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_tree")),
    )
    op.bulk_insert(tree, [{"id": 1, "size": 0}])
    op.create_table(
        "audit_checkpoints",
        sa.Column("tree_size", _BIG_ID, autoincrement=False, nullable=False),
        sa.Column("root_hash", sa.LargeBinary(length=32), nullable=False),
        sa.Column("timestamp", _TIME, nullable=False),
        sa.Column("signature", sa.String(length=1024), nullable=False),
        sa.PrimaryKeyConstraint("tree_size", name=op.f("pk_audit_checkpoints")),
    )
    op.create_index("ix_audit_checkpoints_timestamp", "audit_checkpoints", ["timestamp"])
    _append_only(dialect)


def downgrade() -> None:
    bind = op.get_bind()
    dialect = bind.dialect.name
    _drop_append_only(dialect)
    op.drop_index("ix_audit_checkpoints_timestamp", table_name="audit_checkpoints")
    op.drop_table("audit_checkpoints")
    op.drop_table("audit_tree")
    op.drop_table("audit_nodes")
    with op.batch_alter_table("audit_entries") as batch:
        batch.drop_constraint(op.f("ck_audit_entries_leaf_index"), type_="check")
        batch.drop_index("ix_audit_entries_time")
        batch.drop_column("leaf_hash")
    if dialect == "postgresql":
        op.execute("CREATE SEQUENCE audit_entries_id_seq OWNED BY audit_entries.id")
        op.execute(
            "SELECT setval('audit_entries_id_seq', "
            "(SELECT coalesce(max(id), 0) + 1 FROM audit_entries), false)"
        )
        op.execute(
            "ALTER TABLE audit_entries ALTER COLUMN id SET DEFAULT nextval('audit_entries_id_seq')"
        )
