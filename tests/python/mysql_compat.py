#!/usr/bin/env python3
"""PyMySQL compatibility check: a client must not be able to tell capgate's MySQL front end
from a direct connection to MariaDB.

    python3 tests/python/mysql_compat.py --proxy HOST:PORT --direct HOST:PORT --user USER

Every check runs the same scenario once against each address (direct first, as the
reference) and compares what the client observed; each scenario also asserts what it must
see on its own, so two equally wrong answers do not pass. Table names carry the side's role
(compat_t_proxy / compat_t_direct) and are normalised back before comparison.

Output: ``ok <name>`` or ``FAIL <name>: …`` per check; exit status 0 when all passed.
Requires PyMySQL (``pip install PyMySQL``).
"""
from __future__ import annotations

import argparse
import datetime
import decimal
import os
import sys
import tempfile
import threading
import time
import traceback

import pymysql
import pymysql.constants.CLIENT as CLIENT
import pymysql.cursors

DB = "pymysql_compat"


def connect(addr: str, user: str, **kw):
    host, port = addr.rsplit(":", 1)
    return pymysql.connect(host=host, port=int(port), user=user, password="", database=DB, **kw)


def check_types(conn, role):
    t = f"types_{role}"
    with conn.cursor() as c:
        c.execute(f"DROP TABLE IF EXISTS {t}")
        c.execute(
            f"CREATE TABLE {t} (id INT PRIMARY KEY, i BIGINT, u BIGINT UNSIGNED, d DECIMAL(30,10), f DOUBLE,"
            " s VARCHAR(100), b VARBINARY(300), dt DATE, ts DATETIME(6), tm TIME(6), j JSON, e ENUM('a','b'), n INT NULL)"
        )
        rows = [
            (1, -(2**63), 2**64 - 1, decimal.Decimal("12345678901234567890.0123456789"), 1e-300, "ünïcödé ✓", bytes(range(256)),
             datetime.date(2026, 12, 3), datetime.datetime(1999, 12, 31, 23, 59, 59, 999999), datetime.timedelta(hours=-25, microseconds=5),
             '{"a": [1, 2, null]}', "b", None),
            (2, 0, 0, decimal.Decimal("0"), 0.0, "", b"", datetime.date(1000, 1, 1), datetime.datetime(2038, 1, 19, 3, 14, 7), datetime.timedelta(0),
             "[]", "a", None),
        ]
        c.executemany(f"INSERT INTO {t} VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)", rows)
        c.execute(f"SELECT * FROM {t} ORDER BY id")
        got = c.fetchall()
        assert got[0][2] == 2**64 - 1 and got[0][6] == bytes(range(256)) and got[0][3] == rows[0][3], got[0]
        desc = [(d[0], d[1]) for d in c.description]
        c.execute(f"DROP TABLE {t}")
    conn.commit()
    return got, desc


def check_transactions_and_errors(conn, role):
    t = f"tx_{role}"
    out = []
    with conn.cursor() as c:
        c.execute(f"DROP TABLE IF EXISTS {t}")
        c.execute(f"CREATE TABLE {t} (id INT PRIMARY KEY) ENGINE=InnoDB")
        conn.begin()
        c.execute(f"INSERT INTO {t} VALUES (1)")
        try:
            c.execute(f"INSERT INTO {t} VALUES (1)")
        except pymysql.err.IntegrityError as e:
            out.append(("dup", e.args[0], e.args[1].replace(role, "ROLE")))
        c.execute(f"INSERT INTO {t} VALUES (2)")
        conn.rollback()
        c.execute(f"SELECT COUNT(*) FROM {t}")
        out.append(("after rollback", c.fetchone()))
        conn.autocommit(True)
        c.execute(f"INSERT INTO {t} VALUES (3)")
        conn.autocommit(False)
        c.execute(f"SELECT id FROM {t}")
        out.append(("autocommitted", c.fetchall()))
        for sql in ["SELECT * FROM no_such_table", "SELEC 1", "SELECT 1 FROM DUAL WHERE"]:
            try:
                c.execute(sql)
            except pymysql.err.MySQLError as e:
                out.append((sql, e.args[0], e.args[1]))
        c.execute(f"DROP TABLE {t}")
    assert out[0][1] == 1062 and out[1][1] == (0,) and out[2][1] == ((3,),), out
    return out


def check_multi_statements_and_warnings(conn, role):
    out = []
    with conn.cursor() as c:
        c.execute("SELECT 1 AS a; SELECT 'two' AS b, 2 AS c; DO 1; SELECT 1/0")
        while True:
            out.append((c.description and [d[0] for d in c.description], c.fetchall(), c.rowcount))
            if not c.nextset():
                break
        c.execute("SELECT CAST('9x' AS INTEGER)")
        c.execute("SHOW WARNINGS")
        out.append(c.fetchall())
    assert len(out) == 5 and out[1][1] == (("two", 2),) and out[4][0][1] == 1292, out
    return out


def check_load_data_local(conn, role):
    t = f"loaded_{role}"
    with tempfile.NamedTemporaryFile("w", suffix=".csv", delete=False) as f:
        for i in range(20000):
            f.write(f"{i},value {i}\n")
        path = f.name
    try:
        with conn.cursor() as c:
            c.execute(f"DROP TABLE IF EXISTS {t}")
            c.execute(f"CREATE TABLE {t} (k INT, v VARCHAR(30))")
            n = c.execute(f"LOAD DATA LOCAL INFILE '{path}' INTO TABLE {t} FIELDS TERMINATED BY ','")
            c.execute(f"SELECT COUNT(*), SUM(k) FROM {t}")
            got = (n, c.fetchone())
            c.execute(f"DROP TABLE {t}")
        conn.commit()
    finally:
        os.unlink(path)
    assert got == (20000, (20000, decimal.Decimal(199990000))), got
    return got


def check_streaming_and_select_db(conn, role):
    with conn.cursor(pymysql.cursors.SSCursor) as c:
        c.execute("SELECT seq, REPEAT('x', seq % 100) FROM seq_1_to_50000")
        n = 0
        total = 0
        for row in c:
            n += 1
            total += len(row[1])
    conn.select_db("mysql")
    with conn.cursor() as c:
        c.execute("SELECT DATABASE()")
        db = c.fetchone()
    conn.select_db(DB)
    conn.ping()
    assert n == 50000 and db == ("mysql",), (n, db)
    return n, total, db


def check_kill(conn, role, addr, user):
    """A second connection kills the first one's query (COM_PROCESS_KILL is PyMySQL's kill)."""
    result = {}

    def long():
        with conn.cursor() as c:
            try:
                c.execute("SELECT SLEEP(30)")
                result["value"] = c.fetchone()
            except pymysql.err.MySQLError as e:
                result["error"] = e.args[0]

    th = threading.Thread(target=long)
    th.start()
    killer = connect(addr, user)
    for _ in range(200):
        with killer.cursor() as c:
            c.execute("SELECT COUNT(*) FROM information_schema.processlist WHERE id = %s AND info LIKE 'SELECT SLEEP%%'", (conn.thread_id(),))
            if c.fetchone()[0] == 1:
                break
        time.sleep(0.05)
    killer.kill(conn.thread_id())
    th.join(20)
    killer.close()
    assert not th.is_alive(), "the query was not killed"
    return sorted(result.keys())


CHECKS = ["types", "transactions_and_errors", "multi_statements_and_warnings", "load_data_local", "streaming_and_select_db", "kill"]


def run(name, addr, user, role):
    conn = connect(addr, user, client_flag=CLIENT.MULTI_STATEMENTS, local_infile=True, autocommit=False)
    try:
        fn = globals()[f"check_{name}"]
        if name == "kill":
            return fn(conn, role, addr, user)
        return fn(conn, role)
    finally:
        try:
            conn.close()
        except Exception:
            pass


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--proxy", required=True)
    p.add_argument("--direct", required=True)
    p.add_argument("--user", default="capgate")
    a = p.parse_args()
    host, port = a.direct.rsplit(":", 1)
    boot = pymysql.connect(host=host, port=int(port), user=a.user, password="")
    with boot.cursor() as c:
        c.execute(f"CREATE DATABASE IF NOT EXISTS {DB} CHARACTER SET utf8mb4")
    boot.close()
    failed = 0
    for name in CHECKS:
        try:
            direct = run(name, a.direct, a.user, "direct")
            proxy = run(name, a.proxy, a.user, "proxy")
            if direct != proxy:
                failed += 1
                print(f"FAIL {name}: direct {direct!r} != proxy {proxy!r}")
            else:
                print(f"ok {name}")
        except Exception:
            failed += 1
            print(f"FAIL {name}: {traceback.format_exc()}")
        sys.stdout.flush()
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
