#!/usr/bin/env python3
"""psycopg 3 compatibility check: a client must not be able to tell the proxy
from a direct connection.

    python3 tests/python/compat.py --proxy DSN --direct DSN [--only a,b] [--skip c]

Every check runs the same self-contained scenario once against each DSN (the
direct one first, as the reference) and compares what the client observed:
values, types, command tags, error fields, notices, notifications, server
parameters. A scenario also asserts on its own that the observed behaviour is
correct (e.g. a value round-trips unchanged), so two equally wrong answers do
not pass.

Both DSNs normally point at the SAME server, so every table / channel name is
suffixed with the side's role (compat_types_proxy / compat_types_direct).
Names are normalised back (``_proxy``/``_direct`` -> ``_ROLE``) before error
messages are compared. Tables are dropped at the start and at the end of every
check.

Output: one line per check, ``ok <name>`` or ``FAIL <name>: <what differed,
both values>``. Exit status 0 if every check passed, 1 otherwise, 2 on usage
errors. Each run of a scenario has a watchdog (--timeout, default 60 s); a
hang prints ``FAIL <name>: ... timed out`` and exits 1 at once.

Requires only psycopg 3.2+ (``pip install "psycopg[binary]"``).
"""
from __future__ import annotations

import argparse
import hashlib
import logging
import os
import sys
import threading
import time
import traceback
from contextlib import suppress
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any, Callable, Iterable
from uuid import UUID
from zoneinfo import ZoneInfo

import psycopg
from psycopg import errors, sql
from psycopg.pq import TransactionStatus
from psycopg.types.json import Jsonb

Observation = dict[str, Any]


class CheckError(Exception):
    """The scenario saw wrong behaviour on one side (independent of the other)."""


def expect(cond: bool, what: str) -> None:
    if not cond:
        raise CheckError(what)


@dataclass(frozen=True)
class Target:
    role: str  # "proxy" or "direct"
    dsn: str

    def connect(self, **kwargs: Any) -> psycopg.Connection[Any]:
        kwargs.setdefault("connect_timeout", 10)
        return psycopg.connect(self.dsn, **kwargs)

    def name(self, base: str) -> str:
        """A table/channel name private to this side: compat_<base>_<role>."""
        return f"compat_{base}_{self.role}"

    def norm(self, text: str | None) -> str | None:
        """Make server text that embeds our own object names comparable."""
        return None if text is None else text.replace(f"_{self.role}", "_ROLE")


def one(conn: psycopg.Connection[Any], query: str, params: tuple[Any, ...] | None = None) -> Any:
    """First column of the single row `query` returns."""
    row = conn.execute(query, params).fetchone()
    if row is None:
        raise CheckError(f"no row from {query!r}")
    return row[0]


def drop_tables(t: Target, *tables: str) -> None:
    with t.connect(autocommit=True) as conn:
        for table in tables:
            conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(table)))


def error_fields(t: Target, e: psycopg.Error) -> Observation:
    """Everything a client can read from an error, with our names normalised."""
    d = e.diag
    return {
        "class": type(e).__name__,
        "sqlstate": e.sqlstate,
        "str": t.norm(str(e)),
        "severity": d.severity,
        "severity_nonlocalized": d.severity_nonlocalized,
        "message_primary": t.norm(d.message_primary),
        "message_detail": t.norm(d.message_detail),
        "message_hint": t.norm(d.message_hint),
        "statement_position": d.statement_position,
        "context": t.norm(d.context),
        "schema_name": d.schema_name,
        "table_name": t.norm(d.table_name),
        "column_name": d.column_name,
        "constraint_name": t.norm(d.constraint_name),
        "source_function": d.source_function,
    }


def same_value(a: Any, b: Any) -> bool:
    """Equality that treats NaN as equal to NaN and distinguishes -0.0."""
    if isinstance(a, Jsonb):
        a = a.obj
    if isinstance(b, Jsonb):
        b = b.obj
    if isinstance(a, float) and isinstance(b, float):
        if a != a or b != b:
            return a != a and b != b
        return a == b and str(a) == str(b)
    if isinstance(a, Decimal) and isinstance(b, Decimal):
        if a.is_nan() or b.is_nan():
            return a.is_nan() and b.is_nan()
        return a == b
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same_value(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


# --------------------------------------------------------------------- types

SESSION_TZ = "Asia/Kolkata"  # +05:30, non-UTC, with odd historical offsets


def type_cases() -> list[tuple[str, str, Any]]:
    """(case name, postgres type, python value) for the type round-trips."""
    berlin = ZoneInfo("Europe/Berlin")
    return [
        ("int2_min", "int2", -32768),
        ("int2_max", "int2", 32767),
        ("int4_min", "int4", -(2**31)),
        ("int4_max", "int4", 2**31 - 1),
        ("int8_min", "int8", -(2**63)),
        ("int8_max", "int8", 2**63 - 1),
        ("numeric_huge", "numeric", Decimal("1234567890" * 10 + "." + "0987654321" * 5)),
        ("numeric_tiny", "numeric", Decimal("-0.000000000000000000000000000001")),
        ("numeric_exp", "numeric", Decimal("9.99E+500")),
        ("numeric_scale", "numeric", Decimal("1.000")),
        ("numeric_nan", "numeric", Decimal("NaN")),
        ("numeric_inf", "numeric", Decimal("Infinity")),
        ("numeric_ninf", "numeric", Decimal("-Infinity")),
        ("float8_tenth", "float8", 0.1),
        ("float8_negzero", "float8", -0.0),
        ("float8_max", "float8", 1.7976931348623157e308),
        ("float8_denorm", "float8", 5e-324),
        ("float8_inf", "float8", float("inf")),
        ("float8_nan", "float8", float("nan")),
        ("text_unicode", "text", "héllo wörld ✓ 𝄞 日本語 🐘 Ωμέγα"),
        ("text_specials", "text", "quote ' dquote \" backslash \\ newline\n tab\t cr\r %s %% $1"),
        ("text_empty", "text", ""),
        ("bytea_all", "bytea", bytes(range(256))),
        ("bytea_empty", "bytea", b""),
        ("bool_true", "bool", True),
        ("bool_false", "bool", False),
        ("date_leap", "date", date(2024, 2, 29)),
        ("date_min", "date", date(1, 1, 1)),
        ("date_max", "date", date(9999, 12, 31)),
        ("timestamp_us", "timestamp", datetime(2024, 2, 29, 23, 59, 59, 999999)),
        ("timestamp_epoch", "timestamp", datetime(1970, 1, 1)),
        ("timestamp_min", "timestamp", datetime(1, 1, 1, 0, 0, 0, 1)),
        ("timestamptz_utc", "timestamptz", datetime(2024, 7, 1, 12, 0, 0, 123456, tzinfo=timezone.utc)),
        ("timestamptz_berlin_dst", "timestamptz", datetime(2024, 3, 31, 3, 30, tzinfo=berlin)),
        ("timestamptz_offset", "timestamptz",
         datetime(1999, 12, 31, 23, 59, 59, tzinfo=timezone(timedelta(hours=-3, minutes=-30)))),
        ("interval_mixed", "interval", timedelta(days=-3, hours=5, microseconds=7)),
        ("interval_zero", "interval", timedelta(0)),
        ("interval_long", "interval", timedelta(days=100000, seconds=1)),
        ("uuid", "uuid", UUID("12345678-9abc-4def-8123-456789abcdef")),
        ("jsonb", "jsonb", Jsonb({"a": [1, 2.5, None, True, "ü ✓"], "nested": {"k": "v"}, "big": 2**70})),
        ("int4_array_nulls", "int4[]", [1, None, 3, -(2**31)]),
        ("int4_array_2d", "int4[]", [[1, 2], [None, 4]]),
        ("text_array_nulls", "text[]",
         ["a", None, 'with "quotes"', "comma,brace}", "", "NULL", "back\\slash", "✓"]),
        ("all_null", "text", None),
    ]


def check_types(t: Target, binary: bool) -> Observation:
    fmt = "%b" if binary else "%t"
    cases = type_cases()
    table = t.name("types_bin" if binary else "types_text")
    drop_tables(t, table)
    obs: Observation = {}
    try:
        with t.connect(autocommit=True) as conn:
            conn.execute(sql.SQL("SET TimeZone = {}").format(sql.Literal(SESSION_TZ)))
            expect(conn.info.parameter_status("TimeZone") == SESSION_TZ,
                   f"ParameterStatus TimeZone after SET is {conn.info.parameter_status('TimeZone')!r}")
            cur = conn.cursor(binary=binary)
            values = [v for _, _, v in cases]

            # 1. Parameters straight back in a SELECT.
            query = "SELECT " + ", ".join(f"{fmt}::{typ}" for _, typ, _ in cases)
            cur.execute(query, values)
            row = cur.fetchone()
            expect(row is not None, "no row")
            assert row is not None
            desc = [(c.name, c.type_code) for c in cur.description or []]
            obs["select_types"] = desc
            # 2. Parameters into a table with one column per case, and back.
            cols = [sql.SQL("{} {}").format(sql.Identifier(n), sql.SQL(typ)) for n, typ, _ in cases]
            conn.execute(sql.SQL("CREATE TABLE {} ({})").format(sql.Identifier(table), sql.SQL(", ").join(cols)))
            cur.execute(
                sql.SQL("INSERT INTO {} VALUES ({})").format(
                    sql.Identifier(table), sql.SQL(", ").join(sql.SQL(fmt) for _ in cases)),
                values)
            obs["insert_status"] = cur.statusmessage
            cur.execute(sql.SQL("SELECT * FROM {}").format(sql.Identifier(table)))
            trow = cur.fetchone()
            assert trow is not None
            for (name, typ, value), got_select, got_table in zip(cases, row, trow):
                for how, got in (("select", got_select), ("table", got_table)):
                    expect(same_value(value, got),
                           f"{name} ({typ}) via {how}: sent {value!r}, got back {got!r}")
                    if typ == "timestamptz":
                        expect(got.utcoffset() == got.astimezone(ZoneInfo(SESSION_TZ)).utcoffset(),
                               f"{name}: timestamptz not in session TimeZone: {got!r}")
                obs[name] = (repr(got_select), repr(got_table))
    finally:
        drop_tables(t, table)
    return obs


def check_types_text(t: Target) -> Observation:
    return check_types(t, binary=False)


def check_types_binary(t: Target) -> Observation:
    return check_types(t, binary=True)


# ----------------------------------------------------- prepared / executemany

def check_prepared(t: Target) -> Observation:
    obs: Observation = {}
    with t.connect(autocommit=True) as conn:
        q = "SELECT %s::int4 * 2, %s::text || '!', %s::numeric / 4"
        for binary in (False, True):
            got = []
            for i in range(10):
                cur = conn.execute(q, (i, f"v{i}", Decimal(i)), prepare=True, binary=binary)
                got.append(cur.fetchone())
            expect(got == [(i * 2, f"v{i}!", Decimal(i) / 4) for i in range(10)],
                   f"prepared results (binary={binary}): {got!r}")
            obs[f"results_binary_{binary}"] = repr(got)
        row = conn.execute(
            "SELECT count(*), bool_and(NOT from_sql) FROM pg_prepared_statements "
            "WHERE statement LIKE 'SELECT $1::int4 * 2%'").fetchone()
        assert row is not None
        expect(row[0] >= 1 and row[1] is True, f"statement not prepared server-side: {row!r}")
        obs["server_prepared"] = row

        # An execution error must not lose the prepared statement.
        qe = "SELECT 100 / %s::int4"
        conn.execute(qe, (5,), prepare=True)
        try:
            conn.execute(qe, (0,), prepare=True)
            raise CheckError("1/0 via prepared statement did not fail")
        except errors.DivisionByZero as e:
            obs["prepared_error"] = error_fields(t, e)
        r = conn.execute(qe, (4,), prepare=True).fetchone()
        expect(r == (25,), f"prepared statement after error returned {r!r}")

        # SQL-level PREPARE / EXECUTE / DEALLOCATE.
        conn.execute("PREPARE compat_sqlprep (int, text) AS SELECT $1 + 1, upper($2)")
        rows = [conn.execute(f"EXECUTE compat_sqlprep({i}, 'abc')").fetchone() for i in range(3)]
        expect(rows == [(1, "ABC"), (2, "ABC"), (3, "ABC")], f"EXECUTE returned {rows!r}")
        cur = conn.execute("DEALLOCATE compat_sqlprep")
        obs["sql_prepare"] = (rows, cur.statusmessage)
    return obs


def check_executemany(t: Target) -> Observation:
    table = t.name("many")
    drop_tables(t, table)
    obs: Observation = {}
    tid = sql.Identifier(table)
    try:
        with t.connect(autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, name text, amount numeric)").format(tid))
            cur = conn.cursor()
            data = [(i, f"name {i} ✓", Decimal(i) / 8) for i in range(500)]
            cur.executemany(sql.SQL("INSERT INTO {} VALUES (%s, %s, %s)").format(tid), data)
            obs["insert_rowcount"] = cur.rowcount
            cur.executemany(sql.SQL("UPDATE {} SET amount = amount * 2 WHERE id = %s").format(tid),
                            [(i,) for i in range(0, 500, 2)])
            obs["update_rowcount"] = cur.rowcount
            cur.executemany(sql.SQL("INSERT INTO {} VALUES (%s, %s, %s) RETURNING id * 10, name").format(tid),
                            [(1000 + i, f"r{i}", None) for i in range(5)], returning=True)
            returned = []
            while True:
                returned.extend(cur.fetchall())
                if not cur.nextset():
                    break
            expect(returned == [(10000 + 10 * i, f"r{i}") for i in range(5)], f"RETURNING rows {returned!r}")
            obs["returning"] = returned
            row = conn.execute(sql.SQL("SELECT count(*), sum(id), sum(amount) FROM {}").format(tid)).fetchone()
            expected_sum = sum(Decimal(i) / 8 * (2 if i % 2 == 0 else 1) for i in range(500))
            expect(row == (505, sum(range(500)) + 5010, expected_sum), f"table totals {row!r}")
            obs["totals"] = repr(row)

            # A failure half-way through an executemany in a transaction.
            try:
                with conn.transaction():
                    cur.executemany(sql.SQL("INSERT INTO {} VALUES (%s, 'dup', 0)").format(tid),
                                    [(2000,), (2001,), (1,), (2002,)])
                raise CheckError("duplicate key in executemany did not fail")
            except errors.UniqueViolation as e:
                obs["dup_error"] = error_fields(t, e)
            row = conn.execute(sql.SQL("SELECT count(*) FROM {} WHERE id >= 2000").format(tid)).fetchone()
            expect(row == (0,), f"rolled-back executemany left rows: {row!r}")
    finally:
        drop_tables(t, table)
    return obs


# ------------------------------------------------------------------ pipeline

def check_pipeline(t: Target) -> Observation:
    table = t.name("pipe")
    drop_tables(t, table)
    tid = sql.Identifier(table)
    obs: Observation = {}
    try:
        with t.connect(autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, name text)").format(tid))
            with conn.pipeline() as p:
                c1 = conn.execute(sql.SQL("INSERT INTO {} VALUES (%s, %s)").format(tid), (1, "one"))
                c2 = conn.execute(sql.SQL("INSERT INTO {} VALUES (%s, %s) RETURNING id").format(tid), (2, "two"))
                c3 = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(tid))
                c4 = conn.cursor(binary=True)
                c4.execute("SELECT %s::int8 + 1, %s::text", (41, "bin"))
                p.sync()
                r2 = c2.fetchone()
                r3 = c3.fetchone()
                with conn.transaction():
                    conn.execute(sql.SQL("INSERT INTO {} VALUES (%s, %s)").format(tid), (3, "three"))
                    conn.execute(sql.SQL("UPDATE {} SET name = upper(name) WHERE id < %s").format(tid), (3,))
                c5 = conn.execute(sql.SQL("SELECT id, name FROM {} ORDER BY id").format(tid))
                c6 = conn.execute("SELECT generate_series(1, %s)", (1000,))
            got = (c1.statusmessage, r2, r3, c4.fetchone(), c5.fetchall(), len(c6.fetchall()))
            expect(got == ("INSERT 0 1", (2,), (2,), (42, "bin"), [(1, "ONE"), (2, "TWO"), (3, "three")], 1000),
                   f"pipeline results {got!r}")
            obs["results"] = got

            # An error inside a pipeline aborts what follows until the sync.
            aborted: list[str] = []
            try:
                with conn.pipeline():
                    conn.execute(sql.SQL("INSERT INTO {} VALUES (%s, 'x')").format(tid), (10,))
                    conn.execute(sql.SQL("INSERT INTO {} VALUES (%s, 'dup')").format(tid), (1,))
                    with suppress(errors.PipelineAborted):
                        conn.execute("SELECT 1")
                raise CheckError("duplicate key in pipeline did not fail")
            except errors.UniqueViolation as e:
                obs["error"] = error_fields(t, e)
            except errors.PipelineAborted as e:
                aborted.append(type(e).__name__)
            obs["aborted"] = aborted
            row = conn.execute(sql.SQL("SELECT array_agg(id ORDER BY id) FROM {}").format(tid)).fetchone()
            obs["after_error"] = row
            expect(row is not None and row[0] is not None and 1 in row[0], f"table after pipeline error: {row!r}")
    finally:
        drop_tables(t, table)
    return obs


# -------------------------------------------------------------- transactions

def check_transactions(t: Target) -> Observation:
    table = t.name("tx")
    drop_tables(t, table)
    tid = sql.Identifier(table)
    obs: Observation = {}
    ins = sql.SQL("INSERT INTO {} VALUES (%s)").format(tid)

    def ids(c: psycopg.Connection[Any]) -> list[int]:
        return [r[0] for r in c.execute(sql.SQL("SELECT id FROM {} ORDER BY id").format(tid))]

    try:
        with t.connect(autocommit=True) as observer, t.connect() as conn:
            observer.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY)").format(tid))
            status = [conn.info.transaction_status.name]
            conn.execute(ins, (1,))
            status.append(conn.info.transaction_status.name)
            expect(ids(observer) == [], "uncommitted row visible to another session")
            conn.commit()
            status.append(conn.info.transaction_status.name)
            expect(ids(observer) == [1], "committed row not visible")

            conn.execute(ins, (2,))
            conn.rollback()
            expect(ids(observer) == [1], "rolled-back row visible")

            conn.execute(ins, (3,))
            conn.execute("SAVEPOINT s1")
            conn.execute(ins, (4,))
            conn.execute("ROLLBACK TO SAVEPOINT s1")
            conn.execute(ins, (5,))
            conn.execute("RELEASE SAVEPOINT s1")
            conn.commit()
            expect(ids(observer) == [1, 3, 5], f"savepoint rollback: {ids(observer)}")

            with conn.transaction():
                conn.execute(ins, (6,))
                with conn.transaction():  # nested: a savepoint
                    conn.execute(ins, (7,))
                    raise psycopg.Rollback()
            expect(ids(observer) == [1, 3, 5, 6], f"nested transaction rollback: {ids(observer)}")

            # Error mid-transaction: the rest of the block is refused with 25P02.
            conn.execute(ins, (8,))
            try:
                conn.execute("SELECT 1 / 0")
                raise CheckError("1/0 did not fail")
            except errors.DivisionByZero as e:
                obs["first_error"] = error_fields(t, e)
            status.append(conn.info.transaction_status.name)
            try:
                conn.execute("SELECT 1")
                raise CheckError("statement after an error in a transaction did not fail")
            except errors.InFailedSqlTransaction as e:
                expect(e.sqlstate == "25P02", f"sqlstate {e.sqlstate}")
                obs["in_failed"] = error_fields(t, e)
            conn.rollback()
            status.append(conn.info.transaction_status.name)
            expect(conn.execute("SELECT 42").fetchone() == (42,), "connection unusable after rollback")
            conn.rollback()
            expect(ids(observer) == [1, 3, 5, 6], "row from failed transaction persisted")
            obs["status"] = status
            expect(status == ["IDLE", "INTRANS", "IDLE", "INERROR", "IDLE"], f"transaction status {status}")

            # COMMIT of a failed transaction reports ROLLBACK; isolation levels; read only.
            conn.autocommit = True
            tags = [conn.execute("BEGIN").statusmessage]
            with suppress(errors.DivisionByZero):
                conn.execute("SELECT 1 / 0")
            tags.append(conn.execute("COMMIT").statusmessage)
            conn.autocommit = False
            conn.isolation_level = psycopg.IsolationLevel.SERIALIZABLE
            conn.read_only = True
            tags.append(conn.execute("SHOW transaction_isolation").fetchone())
            tags.append(conn.execute("SHOW transaction_read_only").fetchone())
            try:
                conn.execute(ins, (9,))
                raise CheckError("insert in a read-only transaction did not fail")
            except errors.ReadOnlySqlTransaction as e:
                obs["read_only_error"] = error_fields(t, e)
            conn.rollback()
            obs["tags"] = tags
            expect(tags == ["BEGIN", "ROLLBACK", ("serializable",), ("on",)], f"tags {tags}")
    finally:
        drop_tables(t, table)
    return obs


def check_errors(t: Target) -> Observation:
    table = t.name("err")
    drop_tables(t, table)
    tid = sql.Identifier(table)
    obs: Observation = {}
    cases: list[tuple[str, sql.Composable | str, tuple[Any, ...] | None, str]] = [
        ("unique_violation", sql.SQL("INSERT INTO {} VALUES (1, 'dup')").format(tid), None, "23505"),
        ("unique_violation_params", sql.SQL("INSERT INTO {} VALUES (%s, %s)").format(tid), (1, "dup"), "23505"),
        ("division_by_zero", "SELECT 1 / 0", None, "22012"),
        ("division_by_zero_params", "SELECT 1 / %s", (0,), "22012"),
        ("syntax_error", "SELEC 1", None, "42601"),
        ("syntax_error_params", "SELECT %s FROM FROM", (1,), "42601"),
        ("undefined_table", "SELECT * FROM compat_no_such_table", None, "42P01"),
        ("undefined_column", sql.SQL("SELECT nosuchcolumn FROM {}").format(tid), None, "42703"),
        ("not_null", sql.SQL("INSERT INTO {} VALUES (NULL, 'x')").format(tid), None, "23502"),
        ("check_violation", sql.SQL("INSERT INTO {} VALUES (-5, 'x')").format(tid), None, "23514"),
        ("invalid_text", "SELECT %s::int", ("abc",), "22P02"),
        ("raise_custom",
         "DO $$ BEGIN RAISE EXCEPTION 'custom % failure', 7 USING ERRCODE = 'P0042', "
         "DETAIL = 'some detail', HINT = 'some hint'; END $$", None, "P0042"),
    ]
    try:
        with t.connect(autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY CHECK (id > 0), name text)").format(tid))
            conn.execute(sql.SQL("INSERT INTO {} VALUES (1, 'one')").format(tid))
            for name, query, params, sqlstate in cases:
                try:
                    conn.execute(query, params)
                    raise CheckError(f"{name}: statement did not fail")
                except psycopg.Error as e:
                    expect(e.sqlstate == sqlstate, f"{name}: sqlstate {e.sqlstate}, expected {sqlstate}: {e}")
                    obs[name] = error_fields(t, e)
                expect(conn.info.transaction_status == TransactionStatus.IDLE, f"{name}: not idle after error")
                expect(conn.execute("SELECT 1").fetchone() == (1,), f"{name}: connection unusable after error")
    finally:
        drop_tables(t, table)
    return obs


# ---------------------------------------------------------------------- COPY

COPY_ROWS = 10_000


def copy_rows() -> list[tuple[int, str, float, bytes, date | None]]:
    return [
        (i, f"row {i} ✓ tab\there \\ back", i / 7, bytes([i % 256, (i * 7) % 256]) * 3,
         None if i % 10 == 0 else date(2000, 1, 1) + timedelta(days=i))
        for i in range(COPY_ROWS)
    ]


COPY_TYPES = ["int4", "text", "float8", "bytea", "date"]


def check_copy(t: Target, binary: bool) -> Observation:
    table = t.name("copy_bin" if binary else "copy_text")
    drop_tables(t, table)
    tid = sql.Identifier(table)
    opts = sql.SQL(" (FORMAT BINARY)" if binary else "")
    obs: Observation = {}
    rows = copy_rows()
    try:
        with t.connect(autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE TABLE {} (id int4, name text, val float8, data bytea, day date)").format(tid))
            cur = conn.cursor()
            with cur.copy(sql.SQL("COPY {} FROM STDIN{}").format(tid, opts)) as copy:
                if binary:
                    copy.set_types(COPY_TYPES)
                for r in rows:
                    copy.write_row(r)
            obs["copy_in_rowcount"] = cur.rowcount
            obs["copy_in_status"] = cur.statusmessage
            expect(cur.rowcount == COPY_ROWS, f"COPY FROM rowcount {cur.rowcount}")

            # Read back as typed rows.
            with cur.copy(sql.SQL("COPY (SELECT * FROM {} ORDER BY id) TO STDOUT{}").format(tid, opts)) as copy:
                copy.set_types(COPY_TYPES)
                back = list(copy.rows())
            expect(len(back) == COPY_ROWS, f"COPY TO returned {len(back)} rows")
            for want, got in zip(rows, back):
                expect(want == got, f"COPY TO row differs: sent {want!r}, got {got!r}")
            obs["copy_out_status"] = cur.statusmessage

            # Read back as raw bytes (server's exact output).
            h = hashlib.sha256()
            with cur.copy(sql.SQL("COPY (SELECT * FROM {} ORDER BY id) TO STDOUT{}").format(tid, opts)) as copy:
                for block in copy:
                    h.update(block)
            obs["copy_out_sha256"] = h.hexdigest()

            # Raw write of pre-formatted data.
            if not binary:
                with cur.copy(sql.SQL("COPY {} (id, name) FROM STDIN WITH (FORMAT csv)").format(tid)) as copy:
                    copy.write(b'100001,"csv, with comma"\n100002,"quote ""q"""\n')
                    copy.write(b"100003,\n")
                r = conn.execute(sql.SQL("SELECT array_agg(name ORDER BY id) FROM {} WHERE id > 100000").format(tid))
                got_csv = r.fetchone()
                expect(got_csv == (["csv, with comma", 'quote "q"', None],), f"CSV COPY gave {got_csv!r}")
                obs["csv"] = got_csv

            # Server-side error inside COPY FROM, and a client-side abort (CopyFail).
            try:
                with cur.copy(sql.SQL("COPY {} (id, name) FROM STDIN").format(tid)) as copy:
                    if binary:
                        copy.set_types(["text", "text"])  # wrong type on the wire for id
                        copy.write_row(("x", "bad"))
                    else:
                        copy.write(b"1\tok\nx\tbad\n")
                raise CheckError("bad COPY data was accepted")
            except psycopg.errors.DataError as e:
                obs["copy_data_error"] = error_fields(t, e)
            except psycopg.errors.ProtocolViolation as e:
                obs["copy_data_error"] = error_fields(t, e)

            class Abort(Exception):
                pass

            try:
                with cur.copy(sql.SQL("COPY {} (id, name) FROM STDIN").format(tid)) as copy:
                    copy.write_row((200001, "never"))
                    raise Abort()
            except Abort:
                pass
            expect(conn.info.transaction_status == TransactionStatus.IDLE, "not idle after COPY abort")
            final = conn.execute(sql.SQL("SELECT count(*), sum(id) FROM {}").format(tid)).fetchone()
            expected_count = COPY_ROWS + (0 if binary else 3)
            expect(final is not None and final[0] == expected_count, f"rows after COPY errors: {final!r}")
            obs["final"] = final
    finally:
        drop_tables(t, table)
    return obs


def check_copy_text(t: Target) -> Observation:
    return check_copy(t, binary=False)


def check_copy_binary(t: Target) -> Observation:
    return check_copy(t, binary=True)


# ------------------------------------------------------------- LISTEN/NOTIFY

def check_listen_notify(t: Target) -> Observation:
    chan = t.name("chan")
    ident = sql.Identifier(chan)
    obs: Observation = {}
    with t.connect(autocommit=True) as listener, t.connect(autocommit=True) as sender:
        listener.execute(sql.SQL("LISTEN {}").format(ident))
        sender_pid = one(sender, "SELECT pg_backend_pid()")
        listener_pid = one(listener, "SELECT pg_backend_pid()")

        def seen(ns: Iterable[psycopg.Notify], pid: int) -> list[tuple[str | None, str, bool]]:
            return [(t.norm(n.channel), n.payload, n.pid == pid) for n in ns]

        sender.execute("SELECT pg_notify(%s, %s)", (chan, "payload ✓ 1"))
        sender.execute(sql.SQL("NOTIFY {}, 'second'").format(ident))
        got = seen(listener.notifies(timeout=5, stop_after=2), sender_pid)
        expect(got == [("compat_chan_ROLE", "payload ✓ 1", True), ("compat_chan_ROLE", "second", True)],
               f"notifications received: {got!r}")
        obs["idle_delivery"] = got

        # Inside a transaction the notification is only delivered at COMMIT.
        with sender.transaction():
            sender.execute(sql.SQL("NOTIFY {}, 'in-tx'").format(ident))
            early = seen(listener.notifies(timeout=0.5, stop_after=1), sender_pid)
        expect(early == [], f"notification delivered before COMMIT: {early!r}")
        got = seen(listener.notifies(timeout=5, stop_after=1), sender_pid)
        expect(got == [("compat_chan_ROLE", "in-tx", True)], f"after COMMIT: {got!r}")
        obs["commit_delivery"] = got

        # UNLISTEN stops delivery.
        listener.execute(sql.SQL("UNLISTEN {}").format(ident))
        sender.execute(sql.SQL("NOTIFY {}, 'after-unlisten'").format(ident))
        late = seen(listener.notifies(timeout=0.5, stop_after=1), sender_pid)
        expect(late == [], f"notification after UNLISTEN: {late!r}")
        listener.execute(sql.SQL("LISTEN {}").format(ident))

        # A notification arriving while the listener runs a query reaches the
        # handler (no notifies() from here on: psycopg warns against mixing both).
        handled: list[psycopg.Notify] = []
        listener.add_notify_handler(handled.append)
        sender.execute(sql.SQL("NOTIFY {}, 'during-query'").format(ident))
        time.sleep(0.2)
        listener.execute("SELECT pg_sleep(0.1)")
        deadline = time.monotonic() + 5
        while not handled and time.monotonic() < deadline:
            listener.execute("SELECT 1")
        got = seen(handled, sender_pid)
        expect(got == [("compat_chan_ROLE", "during-query", True)], f"notify handler got {got!r}")
        obs["handler_delivery"] = got

        # Self-notification: delivered right after the NOTIFY completes.
        handled.clear()
        listener.execute(sql.SQL("NOTIFY {}, 'self'").format(ident))
        got = seen(handled, listener_pid)
        expect(got == [("compat_chan_ROLE", "self", True)], f"self notification {got!r}")
        obs["self_delivery"] = got
    return obs


# -------------------------------------------------------------------- cancel

def run_cancelled(conn: psycopg.Connection[Any], cancel: Callable[[], None], query: str) -> Observation:
    """Run `query` in a thread, cancel it after 0.5 s, return what happened."""
    outcome: dict[str, BaseException | None] = {}

    def worker() -> None:
        try:
            conn.execute(query)
            outcome["exc"] = None
        except BaseException as e:  # noqa: BLE001 - reported to the main thread
            outcome["exc"] = e

    th = threading.Thread(target=worker, daemon=True)
    th.start()
    time.sleep(0.5)
    t0 = time.monotonic()
    cancel()
    th.join(10)
    elapsed = time.monotonic() - t0
    expect(not th.is_alive(), "query still running 10 s after cancel")
    exc = outcome.get("exc")
    expect(isinstance(exc, errors.QueryCanceled), f"expected QueryCanceled, got {exc!r}")
    assert isinstance(exc, errors.QueryCanceled)
    expect(elapsed < 5, f"cancel took {elapsed:.1f} s")
    return {"class": type(exc).__name__, "sqlstate": exc.sqlstate,
            "message": exc.diag.message_primary, "severity": exc.diag.severity_nonlocalized}


def check_cancel(t: Target) -> Observation:
    obs: Observation = {}
    with t.connect(autocommit=True) as conn:
        obs["cancel"] = run_cancelled(conn, conn.cancel, "SELECT pg_sleep(30)")
        expect(obs["cancel"]["sqlstate"] == "57014", f"sqlstate {obs['cancel']['sqlstate']}")
        expect(conn.execute("SELECT 'still usable'").fetchone() == ("still usable",), "unusable after cancel")

        obs["cancel_safe"] = run_cancelled(conn, lambda: conn.cancel_safe(timeout=5), "SELECT pg_sleep(30)")
        expect(conn.execute("SELECT 2").fetchone() == (2,), "unusable after cancel_safe")

        # Cancel inside a transaction leaves it failed; rollback recovers.
        conn.autocommit = False
        conn.execute("SELECT 1")
        obs["cancel_in_tx"] = run_cancelled(conn, conn.cancel, "SELECT pg_sleep(30)")
        obs["status_after"] = conn.info.transaction_status.name
        expect(obs["status_after"] == "INERROR", f"status after cancel in tx: {obs['status_after']}")
        conn.rollback()
        conn.autocommit = True

        # A cancel while nothing runs must not hit the next query.
        conn.cancel()
        time.sleep(0.3)
        r = conn.execute("SELECT pg_sleep(0.5), 'not cancelled'").fetchone()
        expect(r is not None and r[1] == "not cancelled", f"query after idle cancel: {r!r}")
        obs["idle_cancel"] = "ok"
    return obs


# -------------------------------------------------------------- big results

BIG_ROWS = 100_000
BIG_QUERY = "SELECT g, md5(g::text), g::float8 / 3 FROM generate_series(1, %s) AS g"


def big_expected_digest() -> str:
    h = hashlib.sha256()
    for g in range(1, BIG_ROWS + 1):
        h.update(repr((g, hashlib.md5(str(g).encode()).hexdigest(), g / 3)).encode())
    return h.hexdigest()


def digest_rows(rows: Iterable[tuple[Any, ...]]) -> tuple[int, str]:
    h = hashlib.sha256()
    n = 0
    for r in rows:
        h.update(repr(tuple(r)).encode())
        n += 1
    return n, h.hexdigest()


def check_large_result(t: Target) -> Observation:
    want = (BIG_ROWS, big_expected_digest())
    obs: Observation = {}
    with t.connect(autocommit=True) as conn:
        for binary in (False, True):
            cur = conn.cursor(binary=binary)
            cur.execute(BIG_QUERY, (BIG_ROWS,))
            got = digest_rows(cur.fetchall())
            expect(got == want, f"fetchall binary={binary}: {got[0]} rows, digest {got[1][:16]}")
            obs[f"fetchall_binary_{binary}"] = got
        got = digest_rows(conn.cursor().stream(BIG_QUERY, (BIG_ROWS,)))
        expect(got == want, f"stream(): {got[0]} rows")
        obs["stream"] = got
        with conn.transaction():
            named = conn.cursor(name="compat_big_cursor")
            named.itersize = 2000
            named.execute(BIG_QUERY, (BIG_ROWS,))
            got = digest_rows(named)
            named.close()
        expect(got == want, f"server-side cursor: {got[0]} rows")
        obs["server_cursor"] = got
    return obs


def check_large_values(t: Target) -> Observation:
    blob = bytes(range(256)) * (64 * 1024)  # 16 MiB
    text = ("ünïcode ✓ " * 100_000)[:800_000]
    obs: Observation = {}
    with t.connect(autocommit=True) as conn:
        for binary in (False, True):
            cur = conn.cursor(binary=binary)
            cur.execute("SELECT %s::bytea, length(%s::bytea), %s::text",
                        (blob, blob, text))
            r = cur.fetchone()
            expect(r is not None and r[0] == blob and r[1] == len(blob) and r[2] == text,
                   f"16 MiB bytea / long text round trip failed (binary={binary})")
            obs[f"binary_{binary}"] = (len(r[0]), r[1], len(r[2])) if r else None
        literal = "SELECT length('" + "x" * 1_000_000 + "')"
        r = conn.execute(literal).fetchone()
        expect(r == (1_000_000,), f"1 MB query text: {r!r}")
        obs["long_query"] = r
    return obs


# --------------------------------------------------------- simple protocol

def check_simple_protocol(t: Target) -> Observation:
    obs: Observation = {}
    with t.connect(autocommit=True) as conn:
        cur = conn.cursor()
        cur.execute("SELECT 1 AS a; SELECT 'two' AS b, 2.5::float8; VALUES (3), (4)")
        sets = []
        while True:
            sets.append(([c.name for c in cur.description or []], cur.fetchall(), cur.statusmessage))
            if not cur.nextset():
                break
        expect(sets == [(["a"], [(1,)], "SELECT 1"), (["b", "float8"], [("two", 2.5)], "SELECT 1"),
                        (["column1"], [(3,), (4,)], "SELECT 2")], f"multi-statement results {sets!r}")
        obs["multi"] = sets
        cur.execute("SET search_path = public; SHOW search_path")
        set_tag = cur.statusmessage
        expect(cur.nextset() is True, "no second result for 'SET ...; SHOW ...'")
        obs["set_show"] = (set_tag, cur.statusmessage, cur.fetchall())
        expect(obs["set_show"] == ("SET", "SHOW", [("public",)]), f"SET; SHOW gave {obs['set_show']!r}")
        ccur = psycopg.ClientCursor(conn)
        ccur.execute("SELECT %s, %s, %s", ("it's", None, b"\x00\xff"))
        r = ccur.fetchone()
        expect(r == ("it's", None, b"\x00\xff"), f"client-side binding: {r!r}")
        obs["client_cursor"] = r
        cur.execute("SELECT 1 WHERE false")
        obs["empty_result"] = (cur.fetchall(), cur.statusmessage, cur.rowcount)
        cur.execute(";")
        status = psycopg.pq.ExecStatus(cur.pgresult.status).name if cur.pgresult else None
        obs["empty_query"] = (status, cur.statusmessage)
        expect(status == "EMPTY_QUERY", f"';' gave {status}")
        try:
            cur.execute("SELECT 1; SELECT 1/0; SELECT 3")
            raise CheckError("multi-statement with error did not fail")
        except errors.DivisionByZero as e:
            obs["multi_error"] = error_fields(t, e)
        expect(conn.execute("SELECT 5").fetchone() == (5,), "unusable after multi-statement error")
    return obs


# ---------------------------------------------------------- server params

def check_server_params(t: Target) -> Observation:
    obs: Observation = {}
    with t.connect() as conn:
        info = conn.info
        obs["server_version"] = info.parameter_status("server_version")
        obs["client_encoding"] = info.parameter_status("client_encoding")
        obs["TimeZone"] = info.parameter_status("TimeZone")
        obs["info.server_version"] = info.server_version
        obs["info.encoding"] = info.encoding
        obs["status_start"] = info.transaction_status.name
        conn.execute("SELECT 1")  # psycopg starts a transaction (BEGIN) implicitly
        obs["status_after_begin"] = info.transaction_status.name
        expect(obs["status_after_begin"] == "INTRANS", f"after BEGIN: {obs['status_after_begin']}")
        conn.commit()
        obs["status_after_commit"] = info.transaction_status.name
        expect(obs["status_after_commit"] == "IDLE", f"after COMMIT: {obs['status_after_commit']}")
        conn.autocommit = True
        conn.execute("BEGIN")  # explicit BEGIN in autocommit mode
        obs["status_after_explicit_begin"] = info.transaction_status.name
        expect(obs["status_after_explicit_begin"] == "INTRANS", f"after BEGIN: {obs['status_after_explicit_begin']}")
        conn.execute("ROLLBACK")
        expect(all(obs[k] for k in ("server_version", "client_encoding", "TimeZone")),
               f"missing ParameterStatus: {obs!r}")
    return obs


def check_server_params_extra(t: Target) -> Observation:
    names = ["server_version", "server_encoding", "client_encoding", "TimeZone", "DateStyle",
             "IntervalStyle", "integer_datetimes", "standard_conforming_strings", "is_superuser",
             "session_authorization", "application_name", "default_transaction_read_only",
             "in_hot_standby"]
    obs: Observation = {}
    with t.connect(autocommit=True) as conn:
        obs["initial"] = {n: conn.info.parameter_status(n) for n in names}
        # ParameterStatus messages after SET must reach the client.
        conn.execute("SET TimeZone = 'Europe/Helsinki'")
        conn.execute("SET application_name = 'compat_set'")
        conn.execute("SET DateStyle = 'SQL, DMY'")
        conn.execute("SET IntervalStyle = 'iso_8601'")
        after = {n: conn.info.parameter_status(n) for n in ("TimeZone", "application_name", "DateStyle",
                                                             "IntervalStyle")}
        expect(after == {"TimeZone": "Europe/Helsinki", "application_name": "compat_set",
                         "DateStyle": "SQL, DMY", "IntervalStyle": "iso_8601"}, f"after SET: {after!r}")
        obs["after_set"] = after
        r = conn.execute("SELECT '2024-01-02 03:04:05+00'::timestamptz::text, '1 day 2 hours'::interval::text"
                         ).fetchone()
        expect(r == ("02/01/2024 05:04:05 EET", "P1DT2H"), f"values under changed DateStyle/IntervalStyle: {r!r}")
        obs["values"] = r
        conn.execute("RESET ALL")
        obs["after_reset"] = {n: conn.info.parameter_status(n) for n in ("TimeZone", "application_name")}
    return obs


def check_startup_params(t: Target) -> Observation:
    obs: Observation = {}
    kwargs = {"application_name": "compat_app", "client_encoding": "LATIN1",
              "options": "-c TimeZone=America/Sao_Paulo -c search_path=pg_catalog,public -c work_mem=5MB"}
    with t.connect(autocommit=True, **kwargs) as conn:
        ps = {n: conn.info.parameter_status(n) for n in ("application_name", "client_encoding", "TimeZone")}
        shown = conn.execute("SELECT current_setting('search_path'), current_setting('work_mem'), "
                             "current_setting('application_name'), 'é' || %s", ("ñ",)).fetchone()
        expect(ps == {"application_name": "compat_app", "client_encoding": "LATIN1",
                      "TimeZone": "America/Sao_Paulo"}, f"startup ParameterStatus {ps!r}")
        expect(shown is not None and shown[:2] == ("pg_catalog,public", "5MB") and shown[3] == "éñ",
               f"startup options not applied: {shown!r}")
        obs["parameter_status"] = ps
        obs["settings"] = shown
    return obs


def check_backend_pid(t: Target) -> Observation:
    """BackendKeyData pid must be the real backend pid (pg_backend_pid(), NOTIFY's pid).
    Fails for proxies that hand out synthetic keys (PgBouncer does); --skip backend_pid
    if that is intended."""
    with t.connect(autocommit=True) as conn:
        real = one(conn, "SELECT pg_backend_pid()")
        expect(conn.info.backend_pid == real,
               f"conn.info.backend_pid={conn.info.backend_pid} but pg_backend_pid()={real}")
    return {"backend_pid_matches": True}


# ------------------------------------------------------------------ notices

def check_notices(t: Target) -> Observation:
    got: list[tuple[Any, ...]] = []
    with t.connect(autocommit=True) as conn:
        conn.add_notice_handler(lambda d: got.append(
            (d.severity, d.severity_nonlocalized, d.sqlstate, t.norm(d.message_primary),
             d.message_detail, d.message_hint)))
        conn.execute("DO $$ BEGIN RAISE NOTICE 'hello %', 42; END $$")
        expect(got[:1] == [("NOTICE", "NOTICE", "00000", "hello 42", None, None)], f"notice {got!r}")
        conn.execute("DO $$ BEGIN RAISE NOTICE 'one'; RAISE WARNING 'two' USING DETAIL = 'dd', HINT = 'hh'; "
                     "RAISE INFO 'three'; END $$")
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(t.name("never_exists"))))
        with conn.pipeline():
            conn.execute("DO $$ BEGIN RAISE NOTICE 'in pipeline'; END $$")
            conn.execute("SELECT %s::int", (1,))
        conn.execute("SET client_min_messages = warning")
        conn.execute("DO $$ BEGIN RAISE NOTICE 'filtered'; END $$")
    expect([g[3] for g in got] == ["hello 42", "one", "two", "three",
                                   'table "compat_never_exists_ROLE" does not exist, skipping',
                                   "in pipeline"], f"notices {got!r}")
    return {"notices": got}


# ------------------------------------------------------------------- runner

CHECKS: list[tuple[str, Callable[[Target], Observation]]] = [
    ("types_text", check_types_text),
    ("types_binary", check_types_binary),
    ("prepared", check_prepared),
    ("executemany", check_executemany),
    ("pipeline", check_pipeline),
    ("transactions", check_transactions),
    ("errors", check_errors),
    ("copy_text", check_copy_text),
    ("copy_binary", check_copy_binary),
    ("listen_notify", check_listen_notify),
    ("cancel", check_cancel),
    ("large_result", check_large_result),
    ("large_values", check_large_values),
    ("simple_protocol", check_simple_protocol),
    ("server_params", check_server_params),
    ("server_params_extra", check_server_params_extra),
    ("startup_params", check_startup_params),
    ("notices", check_notices),
    ("backend_pid", check_backend_pid),
]


def short(v: Any, limit: int = 300) -> str:
    s = repr(v)
    return s if len(s) <= limit else s[:limit] + f"...({len(s)} chars)"


def describe_difference(proxy: Any, direct: Any, path: str = "") -> str:
    """First place where two observations differ, as 'path: proxy=... direct=...'."""
    if isinstance(proxy, dict) and isinstance(direct, dict):
        for k in list(direct) + [k for k in proxy if k not in direct]:
            if k not in proxy or k not in direct or proxy[k] != direct[k]:
                return describe_difference(proxy.get(k, "<missing>"), direct.get(k, "<missing>"),
                                           f"{path}.{k}" if path else str(k))
    if isinstance(proxy, (list, tuple)) and isinstance(direct, (list, tuple)) and len(proxy) == len(direct):
        for i, (a, b) in enumerate(zip(proxy, direct)):
            if a != b:
                return describe_difference(a, b, f"{path}[{i}]")
    return f"{path or 'result'}: proxy={short(proxy)} direct={short(direct)}"


def run_side(name: str, fn: Callable[[Target], Observation], t: Target, timeout: float) -> Observation:
    def on_timeout() -> None:
        print(f"FAIL {name}: {t.role} side timed out after {timeout:.0f} s", flush=True)
        os._exit(1)

    watchdog = threading.Timer(timeout, on_timeout)
    watchdog.daemon = True
    watchdog.start()
    try:
        return fn(t)
    finally:
        watchdog.cancel()


def run_check(name: str, fn: Callable[[Target], Observation], proxy: Target, direct: Target,
              timeout: float, verbose: bool) -> str | None:
    """None if the check passed, else the reason."""
    results: dict[str, Observation] = {}
    for t in (direct, proxy):
        try:
            results[t.role] = run_side(name, fn, t, timeout)
        except CheckError as e:
            return f"{t.role}: {e}" + (" (reference side!)" if t is direct else "")
        except Exception as e:  # noqa: BLE001 - any failure is a reportable difference
            if verbose:
                traceback.print_exc()
            return (f"{t.role} raised {type(e).__name__}: {short(str(e).strip(), 400)}"
                    + (" (reference side!)" if t is direct else ""))
    if results["proxy"] != results["direct"]:
        return describe_difference(results["proxy"], results["direct"])
    return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--proxy", required=True, help="libpq DSN/URI through the proxy")
    ap.add_argument("--direct", required=True, help="libpq DSN/URI straight to the server")
    ap.add_argument("--only", default="", help="comma-separated check names to run")
    ap.add_argument("--skip", default="", help="comma-separated check names to skip")
    ap.add_argument("--list", action="store_true", help="list check names and exit")
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds per check and side")
    ap.add_argument("-v", "--verbose", action="store_true", help="tracebacks on stderr")
    args = ap.parse_args(argv)
    if not args.verbose:  # e.g. "error ignored terminating Pipeline" after the intended pipeline error
        logging.getLogger("psycopg").addHandler(logging.NullHandler())

    names = [n for n, _ in CHECKS]
    if args.list:
        print("\n".join(names))
        return 0
    only = {s for s in args.only.split(",") if s}
    skip = {s for s in args.skip.split(",") if s}
    unknown = (only | skip) - set(names)
    if unknown:
        ap.error(f"unknown check(s): {', '.join(sorted(unknown))}; known: {', '.join(names)}")

    proxy, direct = Target("proxy", args.proxy), Target("direct", args.direct)
    failed = 0
    for name, fn in CHECKS:
        if (only and name not in only) or name in skip:
            continue
        reason = run_check(name, fn, proxy, direct, args.timeout, args.verbose)
        if reason is None:
            print(f"ok {name}", flush=True)
        else:
            failed += 1
            print(f"FAIL {name}: {reason}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
