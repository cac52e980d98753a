-- Run with the mariadb client (batch mode, --force, --show-warnings, --local-infile) directly
-- and through capgate; the outputs must be identical. @INFILE@ is replaced by a CSV path.
DROP DATABASE IF EXISTS compat;
CREATE DATABASE compat;
USE compat;
SELECT DATABASE();
CREATE TABLE t (id INT PRIMARY KEY, name VARCHAR(20), amount DECIMAL(10,2), at DATETIME(3)) ENGINE=InnoDB;
-- transactions and savepoints
BEGIN;
INSERT INTO t VALUES (1, 'one', 1.50, '2026-01-02 03:04:05.678');
SAVEPOINT s1;
INSERT INTO t VALUES (2, 'two', 2.25, NULL);
ROLLBACK TO SAVEPOINT s1;
INSERT INTO t VALUES (3, 'three', NULL, NOW(3));
COMMIT;
SELECT id, name, amount FROM t ORDER BY id;
-- an error in the middle of a transaction: the transaction goes on (MySQL semantics)
BEGIN;
INSERT INTO t VALUES (4, 'four', 4, NULL);
INSERT INTO t VALUES (1, 'duplicate', 0, NULL);
INSERT INTO t VALUES (5, 'five', 5, NULL);
COMMIT;
SELECT id, name FROM t ORDER BY id;
ROLLBACK;
SELECT @@in_transaction;
-- warnings (not strict: a value too long is truncated with a warning)
SET SESSION sql_mode = '';
INSERT INTO t (id, name) VALUES (6, 'a name far longer than twenty characters');
SELECT 1/0;
SELECT CAST('12abc' AS INTEGER);
SET SESSION sql_mode = DEFAULT;
-- several statements in one query (sent as one COM_QUERY)
DELIMITER //
SELECT 'first' AS a; SELECT 'second' AS b; UPDATE t SET amount = 9 WHERE id = 3//
DELIMITER ;
SELECT amount FROM t WHERE id = 3;
-- LOAD DATA LOCAL INFILE
CREATE TABLE loaded (k INT, v VARCHAR(10));
LOAD DATA LOCAL INFILE '@INFILE@' INTO TABLE loaded FIELDS TERMINATED BY ',' (k, v);
SELECT COUNT(*), SUM(k), MAX(v) FROM loaded;
-- stored procedures with several results
DELIMITER //
CREATE PROCEDURE two_results(IN n INT)
BEGIN
  SELECT n AS first;
  SELECT name FROM t WHERE id <= n ORDER BY id;
  INSERT INTO loaded VALUES (n, 'proc');
END//
DELIMITER ;
CALL two_results(3);
SELECT COUNT(*) FROM loaded WHERE v = 'proc';
-- prepared statements in SQL
PREPARE st FROM 'SELECT name FROM t WHERE id = ?';
SET @i = 3;
EXECUTE st USING @i;
DEALLOCATE PREPARE st;
-- an unknown table, a syntax error
SELECT * FROM no_such_table;
SELEC 1;
-- 100,000 rows
SELECT seq, MD5(seq) FROM seq_1_to_100000;
-- USE another database, and back
USE mysql;
SELECT DATABASE();
USE compat;
SELECT COUNT(*) FROM t;
DROP DATABASE compat;
