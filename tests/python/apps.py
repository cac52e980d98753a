#!/usr/bin/env python3
"""psycopg 3 and SQLAlchemy as an application uses them, for tests/it/apps/drivers.rs.

    python3 tests/python/apps.py DSN PREFIX

Writes the tables PREFIX_acct and PREFIX_item (created by the caller) with server-side
prepared statements, binary and untyped parameters (a binary parameter of type oid 0
included), psycopg's pipeline mode (BEGIN pipelined with the first statement, then
ROLLBACK or COMMIT) and an SQLAlchemy ORM unit of work (commit, rollback, constraint
errors). Prints one line per observation and finally the tables' contents: the caller runs
it without replication and through capgate and compares the output. Exits 1 when an
observation is wrong on its own (e.g. a rolled-back row is visible).
"""
from __future__ import annotations

import hashlib
import sys
from decimal import Decimal

import psycopg
from psycopg import errors
from psycopg.adapt import Dumper
from psycopg.pq import Format
from psycopg.types.json import Jsonb
from sqlalchemy import Integer, LargeBinary, Numeric, String, create_engine, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column


def emit(*parts: object) -> None:
    print(" ".join(str(p) for p in parts), flush=True)


def expect(cond: bool, what: str) -> None:
    if not cond:
        print(f"FAIL {what}", flush=True)
        sys.exit(1)


class Untyped:
    """A value sent as a binary parameter of type oid 0: the server infers the type."""

    def __init__(self, raw: bytes) -> None:
        self.raw = raw


class UntypedBinaryDumper(Dumper):
    format = Format.BINARY
    oid = 0

    def dump(self, obj: Untyped) -> bytes:
        return obj.raw


def low_level(dsn: str, p: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as c:
        c.adapters.register_dumper(Untyped, UntypedBinaryDumper)
        # Server-side prepared statements (prepare=True), autocommit.
        for i in range(1, 6):
            c.execute(f"INSERT INTO {p}_acct (id, owner, balance) VALUES (%s, %s, %s)", (i, f"owner{i}", Decimal("100.00")), prepare=True)
        # Binary parameters and binary results, with RETURNING.
        with c.cursor(binary=True) as cur:
            for name in ("bin-a", "bin-b"):
                cur.execute(
                    f"INSERT INTO {p}_item (name, payload, tags, doc, qty) VALUES (%b, %b, %b, %b, %b) RETURNING id, name, qty",
                    (name, bytes(range(256)), ["x", "y, z"], Jsonb({"name": name, "n": [1, None]}), 7),
                    prepare=True,
                )
                emit("binary returning", cur.fetchone())
        # Untyped parameters: str is sent as oid 0 in text; a binary parameter of oid 0.
        n = c.execute(f"UPDATE {p}_acct SET balance = balance + %s WHERE owner = %s", ("1.50", "owner1")).rowcount
        emit("untyped text update", n)
        n = c.execute(f"UPDATE {p}_item SET qty = %b WHERE name = %s", (Untyped((42).to_bytes(4, "big")), "bin-a")).rowcount
        emit("untyped binary update", n)
        # executemany (pipelined by psycopg), autocommit.
        c.cursor().executemany(f"INSERT INTO {p}_item (name, qty) VALUES (%s, %s)", [(f"many-{i}", i) for i in range(10)])

    # Pipeline mode outside autocommit: psycopg sends BEGIN in the same pipeline as the
    # first statement. A rolled-back pipeline leaves nothing; a committed one everything.
    with psycopg.connect(dsn) as c:
        with c.pipeline():
            c.execute(f"INSERT INTO {p}_item (name, qty) VALUES (%s, %s)", ("pipelined-rolled-back", 1))
            c.execute(f"UPDATE {p}_acct SET balance = 0 WHERE id = %s", (2,))
        c.rollback()
        row = c.execute(f"SELECT count(*) FROM {p}_item WHERE name = 'pipelined-rolled-back'").fetchone()
        expect(row == (0,), f"a rolled-back pipelined write is visible: {row}")
        c.rollback()
        with c.pipeline():
            c.execute(f"INSERT INTO {p}_item (name, qty) VALUES (%s, %s)", ("pipelined-committed", 2))
            c.execute(f"UPDATE {p}_acct SET balance = balance - %s WHERE id = %s", (Decimal("0.50"), 2))
        c.commit()
        # A constraint error inside a transaction: the whole transaction is rolled back.
        try:
            c.execute(f"UPDATE {p}_acct SET balance = balance + 1 WHERE id = 3")
            c.execute(f"UPDATE {p}_acct SET balance = -1 WHERE id = 4")
            c.commit()
            expect(False, "a CHECK violation was accepted")
        except errors.CheckViolation as e:
            emit("check violation", e.sqlstate)
            c.rollback()
        # Savepoints (psycopg's nested transactions).
        with c.transaction():
            c.execute(f"UPDATE {p}_acct SET balance = balance + 10 WHERE id = 5")
            try:
                with c.transaction():
                    c.execute(f"INSERT INTO {p}_acct (id, owner, balance) VALUES (6, 'owner1', 1)")
            except errors.UniqueViolation as e:
                emit("unique violation in a savepoint", e.sqlstate)
            c.execute(f"UPDATE {p}_acct SET balance = balance + 1 WHERE id = 5")


def orm(dsn: str, p: str) -> None:
    class Base(DeclarativeBase):
        pass

    class Acct(Base):
        __tablename__ = f"{p}_acct"
        id: Mapped[int] = mapped_column(Integer, primary_key=True)
        owner: Mapped[str] = mapped_column(String)
        balance: Mapped[Decimal] = mapped_column(Numeric(12, 2))

    class Item(Base):
        __tablename__ = f"{p}_item"
        id: Mapped[int] = mapped_column(Integer, primary_key=True)
        name: Mapped[str] = mapped_column(String)
        payload: Mapped[bytes | None] = mapped_column(LargeBinary)
        qty: Mapped[int] = mapped_column(Integer)

    engine = create_engine(dsn.replace("postgres://", "postgresql+psycopg://", 1))
    with Session(engine) as s:
        # A unit of work that commits: new objects (serial keys come back) and changes.
        s.add_all([Acct(id=10, owner="orm10", balance=Decimal("50")), Acct(id=11, owner="orm11", balance=Decimal("60"))])
        items = [Item(name=f"orm-{i}", payload=bytes([i]) * 3, qty=i) for i in range(3)]
        s.add_all(items)
        s.commit()
        emit("orm ids", sorted(i.id for i in items))
        a, b = s.get(Acct, 10), s.get(Acct, 11)
        a.balance -= Decimal("5.25")
        b.balance += Decimal("5.25")
        s.commit()
        # A unit of work flushed, then rolled back.
        s.add(Acct(id=12, owner="orm12", balance=Decimal("1")))
        s.get(Acct, 10).balance = Decimal("0")
        s.flush()
        s.rollback()
        expect(s.get(Acct, 12) is None, "a rolled-back ORM insert is visible")
        # Constraint errors at flush: the unit of work is refused whole.
        s.get(Acct, 11).balance += Decimal("100")
        s.add(Acct(id=13, owner="orm10", balance=Decimal("1")))
        try:
            s.commit()
            expect(False, "a unique violation was accepted")
        except IntegrityError as e:
            emit("orm unique violation", e.orig.sqlstate)
            s.rollback()
        s.get(Acct, 11).balance = Decimal("-1")
        try:
            s.commit()
            expect(False, "a CHECK violation was accepted")
        except IntegrityError as e:
            emit("orm check violation", e.orig.sqlstate)
            s.rollback()
        # Deletes and a query through the ORM.
        s.delete(s.get(Acct, 11))
        s.commit()
        emit("orm accounts", [(x.id, x.owner, str(x.balance)) for x in s.scalars(select(Acct).order_by(Acct.id))])
    engine.dispose()


def dump(dsn: str, p: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as c:
        for row in c.execute(f"SELECT id, owner, balance FROM {p}_acct ORDER BY id"):
            emit("acct", *row)
        for row in c.execute(f"SELECT id, name, md5(payload), tags, doc, qty, ref IS NOT NULL FROM {p}_item ORDER BY id"):
            emit("item", *row)
        digest = hashlib.sha256(repr(c.execute(f"SELECT * FROM {p}_acct ORDER BY id").fetchall()).encode()).hexdigest()
        emit("acct digest", digest[:16])


def main() -> None:
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    dsn, prefix = sys.argv[1], sys.argv[2]
    low_level(dsn, prefix)
    orm(dsn, prefix)
    dump(dsn, prefix)
    emit("done")


if __name__ == "__main__":
    main()
