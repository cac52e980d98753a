#!/usr/bin/env python3
"""SQL that installs one capture variant on sysbench's sbtest1..N (benches/mysql_capture.sh).

usage: mysql_capture_sql.py VARIANT TABLES

Each variant is the text capgate's capture would install on sysbench's tables (id, k, c, pad),
written out here so the primary can be measured without capgate: `main` is what
`store::mysql::capture` and `store::mysql::primary` install (decision 0031); the others differ
in one thing each. `capgate.changes` is recreated in the variant's shape.
"""
import sys

VARIANTS = {
    "none": "no capture triggers",
    "main": "each trigger calls capgate.capture(tbl, op, old, new), which inserts the row",
    "empty": "the routine emptied (BEGIN END), same arguments: trigger, images and call only",
    "noimg": "the routine emptied and NULL for both images: the trigger and the call alone",
    "inline": "each trigger inserts into capgate.changes itself (before decision 0031; error 1442 under LOCK TABLES)",
    "narrow": "capgate.changes without conn and proxied, tbl a SMALLINT id",
    "bare": "INSERT/UPDATE triggers a bare CALL, the @capgate_apply test moved into the routine",
    "func": "a function (DO capgate.capture_f(...)) instead of a procedure",
}

WIDE = """CREATE TABLE capgate.changes (seq BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
 conn BIGINT UNSIGNED NOT NULL, at DATETIME(6) NOT NULL, tbl VARCHAR(400) NOT NULL, op CHAR(1) NOT NULL,
 old_image LONGTEXT NULL, new_image LONGTEXT NULL, proxied BOOLEAN NOT NULL
 ) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;"""
NARROW = """CREATE TABLE capgate.changes (seq BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
 at DATETIME(6) NOT NULL, tbl SMALLINT UNSIGNED NOT NULL, op CHAR(1) NOT NULL,
 old_image LONGTEXT NULL, new_image LONGTEXT NULL) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;"""
INSERT_WIDE = ("INSERT INTO capgate.changes (conn, at, tbl, op, old_image, new_image, proxied) VALUES "
               "(CONNECTION_ID(), UTC_TIMESTAMP(6), {tbl}, {op}, {old}, {new}, @capgate_session IS NOT NULL)")
INSERT_NARROW = "INSERT INTO capgate.changes (at, tbl, op, old_image, new_image) VALUES (UTC_TIMESTAMP(6), {tbl}, {op}, {old}, {new})"
COLUMNS = ["id", "k", "c", "pad"]


def image(row, variant):
    if variant == "noimg":
        return "NULL"
    return "JSON_OBJECT(" + ", ".join(f"'{c}', {row}.`{c}`" for c in COLUMNS) + ")"


def sql(variant, tables):
    out = ["SET NAMES utf8mb4;"]
    for i in range(1, tables + 1):
        out += [f"DROP TRIGGER IF EXISTS sbtest.capgate_{e}_sbtest{i};" for e in "iud"]
    if variant == "none":
        return out
    narrow = variant == "narrow"
    insert = INSERT_NARROW if narrow else INSERT_WIDE
    routine_insert = insert.format(tbl="p_tbl", op="p_op", old="p_old", new="p_new")
    tbl_type = "SMALLINT UNSIGNED" if narrow else "VARCHAR(400) CHARACTER SET utf8mb4"
    params = (f"IN p_tbl {tbl_type}, IN p_op CHAR(1) CHARACTER SET utf8mb4, IN p_old LONGTEXT CHARACTER SET utf8mb4, "
              "IN p_new LONGTEXT CHARACTER SET utf8mb4")
    body = {"empty": "BEGIN END", "noimg": "BEGIN END", "bare": f"BEGIN IF @capgate_apply IS NULL THEN {routine_insert}; END IF; END"}.get(variant, routine_insert)
    out += ["DROP TABLE IF EXISTS capgate.changes;", NARROW if narrow else WIDE,
            "DROP PROCEDURE IF EXISTS capgate.capture;", "DROP FUNCTION IF EXISTS capgate.capture_f;", "DELIMITER ;;",
            f"CREATE DEFINER = CURRENT_USER PROCEDURE capgate.capture({params}) MODIFIES SQL DATA SQL SECURITY DEFINER {body};;"]
    if variant == "func":
        out.append(f"CREATE DEFINER = CURRENT_USER FUNCTION capgate.capture_f({params.replace('IN ', '')}) RETURNS INT "
                   f"MODIFIES SQL DATA SQL SECURITY DEFINER BEGIN {routine_insert}; RETURN 0; END;;")
    for i in range(1, tables + 1):
        table = f"sbtest.sbtest{i}"
        tbl = str(i) if narrow else f"'{table}'"

        def record(op, old, new):
            if variant == "func":
                return f"DO capgate.capture_f({tbl}, '{op}', {old}, {new});"
            if variant == "inline":
                return insert.format(tbl=tbl, op=f"'{op}'", old=old, new=new) + ";"
            return f"CALL capgate.capture({tbl}, '{op}', {old}, {new});"

        # The delete trigger carries a TRUNCATE as capgate's does (decision 0029).
        bodies = {
            "INSERT": record("I", "NULL", image("NEW", variant)),
            "UPDATE": record("U", image("OLD", variant), image("NEW", variant)),
            "DELETE": (f"IF @capgate_truncate <=> 12345 THEN IF @capgate_truncated IS NULL THEN {record('T', 'NULL', 'NULL')} "
                       f"SET @capgate_truncated = 1; END IF; ELSE {record('D', image('OLD', variant), 'NULL')} END IF;"),
        }
        for event, letter in (("INSERT", "i"), ("UPDATE", "u"), ("DELETE", "d")):
            if variant == "bare" and event != "DELETE":
                trigger = bodies[event].rstrip(";")
            else:
                trigger = f"BEGIN IF @capgate_apply IS NULL THEN {bodies[event]} END IF; END"
            out.append(f"CREATE DEFINER = CURRENT_USER TRIGGER sbtest.capgate_{letter}_sbtest{i} AFTER {event} ON {table} "
                       f"FOR EACH ROW {trigger};;")
    out.append("DELIMITER ;")
    return out


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in VARIANTS:
        sys.exit("usage: mysql_capture_sql.py VARIANT TABLES\nvariants:\n" + "\n".join(f"  {k}: {v}" for k, v in VARIANTS.items()))
    print("\n".join(sql(sys.argv[1], int(sys.argv[2]))))
