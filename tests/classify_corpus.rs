//! A corpus of real-world PostgreSQL statements with their expected classification: what
//! ORMs send (Django, Rails, SQLAlchemy, Hibernate, Prisma), pgbench and sysbench, quoting and
//! case traps, CTEs, upserts, multi-table DML, DDL, COPY, transaction and session control,
//! and what must come out `unknown`. Plus a randomized "never panics" run.
//!
//! Each record is `kind | writes | reads | nondeterministic | sql` (lists comma-separated,
//! `-` for none), classified with search_path `public` and the catalog in [`catalog`].

#[path = "common/corpus.rs"]
mod corpus;

use capgate::classify::{classify, Catalog, ColumnDefault, DefaultKind, Dialect, FunctionInfo, SearchPath, TableName, Volatility};

const CORPUS: &str = r#"
# --- pgbench (TPC-B-like and -S, and -i) ---
write | public.pgbench_accounts | - | - | UPDATE pgbench_accounts SET abalance = abalance + -4021 WHERE aid = 6372;
read | - | public.pgbench_accounts | - | SELECT abalance FROM pgbench_accounts WHERE aid = 6372;
write | public.pgbench_tellers | - | - | UPDATE pgbench_tellers SET tbalance = tbalance + -4021 WHERE tid = 7;
write | public.pgbench_branches | - | - | UPDATE pgbench_branches SET bbalance = bbalance + -4021 WHERE bid = 1;
write | public.pgbench_history | - | current_timestamp | INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (7, 1, 6372, -4021, CURRENT_TIMESTAMP);
write | public.pgbench_accounts | - | - | UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2
read | - | public.pgbench_accounts | - | SELECT abalance FROM pgbench_accounts WHERE aid = $1
transaction | - | - | - | BEGIN;
transaction | - | - | - | END;
ddl | public.pgbench_accounts, public.pgbench_branches, public.pgbench_history, public.pgbench_tellers | - | - | drop table if exists pgbench_accounts, pgbench_branches, pgbench_history, pgbench_tellers
ddl | public.pgbench_history | - | - | create table pgbench_history(tid int,bid int,aid    int,delta int,mtime timestamp,filler char(22))
ddl | public.pgbench_tellers | - | - | create table pgbench_tellers(tid int not null,bid int,tbalance int,filler char(84)) with (fillfactor=100)
ddl | public.pgbench_accounts | - | - | create table pgbench_accounts(aid    int not null,bid int,abalance int,filler char(84)) with (fillfactor=100)
write | public.pgbench_accounts, public.pgbench_branches, public.pgbench_history, public.pgbench_tellers | - | - | truncate table pgbench_accounts, pgbench_branches, pgbench_history, pgbench_tellers
write | public.pgbench_branches | - | - | insert into pgbench_branches(bid,bbalance) values(1,0)
write | public.pgbench_tellers | - | - | insert into pgbench_tellers(tid,bid,tbalance) select tid, (tid - 1) / 10 + 1, 0 from generate_series(1, 10) as tid
write | public.pgbench_accounts | - | - | copy pgbench_accounts from stdin
ddl | public.pgbench_branches | - | - | alter table pgbench_branches add primary key (bid)
ddl | public.pgbench_tellers | - | - | alter table pgbench_tellers add primary key (tid)
utility | - | public.pgbench_branches | - | vacuum analyze pgbench_branches
utility | - | public.pgbench_accounts | - | vacuum analyze pgbench_accounts
utility | - | public.pgbench_history | - | vacuum (analyze, verbose) pgbench_history
# --- sysbench oltp ---
read | - | public.sbtest1 | - | SELECT c FROM sbtest1 WHERE id=5023
read | - | public.sbtest1 | - | SELECT c FROM sbtest1 WHERE id BETWEEN 5023 AND 5122
read | - | public.sbtest1 | - | SELECT SUM(k) FROM sbtest1 WHERE id BETWEEN 5023 AND 5122
read | - | public.sbtest1 | - | SELECT c FROM sbtest1 WHERE id BETWEEN 5023 AND 5122 ORDER BY c
read | - | public.sbtest1 | - | SELECT DISTINCT c FROM sbtest1 WHERE id BETWEEN 5023 AND 5122 ORDER BY c
write | public.sbtest1 | - | - | UPDATE sbtest1 SET k=k+1 WHERE id=5023
write | public.sbtest1 | - | - | UPDATE sbtest1 SET c='12345-67890' WHERE id=5023
write | public.sbtest1 | - | - | DELETE FROM sbtest1 WHERE id=5023
write | public.sbtest1 | - | - | INSERT INTO sbtest1 (id, k, c, pad) VALUES (5023, 4991, '1234-5678', '9876-5432')
ddl | public.sbtest1 | - | - | CREATE TABLE sbtest1(id SERIAL, k INTEGER DEFAULT '0' NOT NULL, c CHAR(120) DEFAULT '' NOT NULL, pad CHAR(60) DEFAULT '' NOT NULL, PRIMARY KEY (id))
ddl | public.sbtest1 | - | - | CREATE INDEX k_1 ON sbtest1(k)
write | public.sbtest7 | - | - | INSERT INTO sbtest7(k, c, pad) VALUES(4991, '1', '2'),(4992, '3', '4'),(4993, '5', '6')
# --- Django ---
read | - | public.auth_user | - | SELECT "auth_user"."id", "auth_user"."password", "auth_user"."last_login", "auth_user"."is_superuser" FROM "auth_user" WHERE "auth_user"."username" = 'bob' LIMIT 21
write | public.polls_question | - | - | INSERT INTO "polls_question" ("question_text", "pub_date") VALUES ('What''s up?', '2024-01-01T00:00:00+00:00'::timestamptz) RETURNING "polls_question"."id"
write | public.polls_question | - | - | UPDATE "polls_question" SET "question_text" = 'What''s new?' WHERE "polls_question"."id" = 1
write | public.polls_choice | - | - | DELETE FROM "polls_choice" WHERE "polls_choice"."id" IN (1, 2, 3)
read | - | public.polls_choice | - | SELECT COUNT(*) AS "__count" FROM "polls_choice" WHERE "polls_choice"."question_id" = 1
read | - | public.django_session | - | SELECT "django_session"."session_key", "django_session"."session_data", "django_session"."expire_date" FROM "django_session" WHERE ("django_session"."expire_date" > '2024-05-01T10:00:00+00:00'::timestamptz AND "django_session"."session_key" = 'x9y8') LIMIT 21
transaction | - | - | - | SAVEPOINT "s140241_x1"
transaction | - | - | - | RELEASE SAVEPOINT "s140241_x1"
transaction | - | - | - | ROLLBACK TO SAVEPOINT "s140241_x1"
read | - | public.auth_user | - | SELECT (1) AS "a" FROM "auth_user" WHERE "auth_user"."username" = 'bob' LIMIT 1
write | public.django_migrations | - | - | INSERT INTO "django_migrations" ("app", "name", "applied") VALUES ('polls', '0001_initial', '2024-01-01T00:00:00+00:00'::timestamptz) RETURNING "django_migrations"."id"
ddl | public.polls_question | - | - | CREATE TABLE "polls_question" ("id" bigint NOT NULL PRIMARY KEY GENERATED BY DEFAULT AS IDENTITY, "question_text" varchar(200) NOT NULL, "pub_date" timestamp with time zone NOT NULL)
read | - | public.polls_choice, public.polls_question | - | SELECT "polls_choice"."id" FROM "polls_choice" INNER JOIN "polls_question" ON ("polls_choice"."question_id" = "polls_question"."id") WHERE "polls_question"."pub_date" <= '2024-01-01T00:00:00+00:00'::timestamptz ORDER BY "polls_question"."pub_date" DESC LIMIT 5
write | public.polls_choice | - | - | UPDATE "polls_choice" SET "votes" = ("polls_choice"."votes" + 1) WHERE "polls_choice"."id" = 3
read | - | public.polls_question | - | SELECT "polls_question"."id", "polls_question"."question_text" FROM "polls_question" WHERE "polls_question"."id" = 1 LIMIT 21 FOR UPDATE
write | public.polls_choice | - | - | INSERT INTO "polls_choice" ("question_id", "choice_text", "votes") VALUES (1, 'Not much', 0), (1, 'The sky', 0) RETURNING "polls_choice"."id"
write | public.polls_tag | - | - | INSERT INTO "polls_tag" ("name") VALUES ('a'), ('b') ON CONFLICT DO NOTHING
read | - | public.django_content_type | - | SELECT "django_content_type"."id", "django_content_type"."app_label", "django_content_type"."model" FROM "django_content_type" WHERE ("django_content_type"."app_label" = 'polls' AND "django_content_type"."model" = 'question') LIMIT 21
read | - | public.auth_permission, public.django_content_type | - | SELECT "auth_permission"."content_type_id", "auth_permission"."codename" FROM "auth_permission" INNER JOIN "django_content_type" ON ("auth_permission"."content_type_id" = "django_content_type"."id") WHERE "auth_permission"."content_type_id" IN (1, 2, 3) ORDER BY "django_content_type"."app_label" ASC, "django_content_type"."model" ASC, "auth_permission"."codename" ASC
write | public.auth_user | - | - | UPDATE "auth_user" SET "last_login" = '2024-05-01T10:00:00+00:00'::timestamptz WHERE "auth_user"."id" = 1
read | - | public.polls_question | - | SELECT DISTINCT "polls_question"."pub_date" FROM "polls_question" WHERE "polls_question"."question_text"::text LIKE '%what%' ORDER BY "polls_question"."pub_date" DESC
read | - | public.polls_question | - | SELECT "polls_question"."id" FROM "polls_question" WHERE EXTRACT(YEAR FROM "polls_question"."pub_date" AT TIME ZONE 'UTC') = 2024
write | public.polls_choice | public.polls_question | - | DELETE FROM "polls_choice" WHERE "polls_choice"."question_id" IN (SELECT U0."id" FROM "polls_question" U0 WHERE U0."pub_date" < '2020-01-01'::timestamptz)
ddl | public.polls_choice | - | - | ALTER TABLE "polls_choice" ADD CONSTRAINT "polls_choice_question_id_fk" FOREIGN KEY ("question_id") REFERENCES "polls_question" ("id") DEFERRABLE INITIALLY DEFERRED
ddl | public.polls_choice | - | - | CREATE INDEX "polls_choice_question_id_c5b4b260" ON "polls_choice" ("question_id")
# --- Rails (ActiveRecord) ---
read | - | public.users | - | SELECT "users".* FROM "users" WHERE "users"."email" = $1 LIMIT $2
write | public.users | - | - | INSERT INTO "users" ("email", "created_at", "updated_at") VALUES ($1, $2, $3) RETURNING "id"
write | public.users | - | - | UPDATE "users" SET "name" = $1, "updated_at" = $2 WHERE "users"."id" = $3
write | public.users | - | - | DELETE FROM "users" WHERE "users"."id" = $1
read | - | public.users | - | SELECT 1 AS one FROM "users" WHERE "users"."email" = $1 LIMIT $2
read | - | public.orders | - | SELECT COUNT(*) FROM "orders" WHERE "orders"."user_id" = $1
read | - | public.schema_migrations | - | SELECT "schema_migrations"."version" FROM "schema_migrations" ORDER BY "schema_migrations"."version" ASC
read | - | - | - | SELECT pg_try_advisory_lock(1727364828729913200)
read | - | - | - | SELECT pg_advisory_unlock(1727364828729913200)
read | - | public.ar_internal_metadata | - | SELECT "ar_internal_metadata".* FROM "ar_internal_metadata" WHERE "ar_internal_metadata"."key" = $1 LIMIT $2
write | public.schema_migrations | - | - | INSERT INTO "schema_migrations" ("version") VALUES ('20240101000000') RETURNING "version"
read | - | public.posts, public.comments | - | SELECT "posts".* FROM "posts" INNER JOIN "comments" ON "comments"."post_id" = "posts"."id" WHERE "comments"."approved" = $1
write | public.posts | - | - | UPDATE "posts" SET "comments_count" = COALESCE("comments_count", 0) + 1 WHERE "posts"."id" = $1
read | - | pg_catalog.pg_attribute, pg_catalog.pg_attrdef, pg_catalog.pg_type, pg_catalog.pg_collation | - | SELECT a.attname, format_type(a.atttypid, a.atttypmod), pg_get_expr(d.adbin, d.adrelid), a.attnotnull, a.atttypid, a.atttypmod, c.collname FROM pg_attribute a LEFT JOIN pg_attrdef d ON a.attrelid = d.adrelid AND a.attnum = d.adnum LEFT JOIN pg_type t ON a.atttypid = t.oid LEFT JOIN pg_collation c ON a.attcollation = c.oid AND a.attcollation <> t.typcollation WHERE a.attrelid = '"users"'::regclass AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum
session | - | - | - | SET client_min_messages TO 'warning'
session | - | - | - | SET standard_conforming_strings = on
session | - | - | - | SET intervalstyle = iso_8601
session | - | - | - | SET SESSION timezone TO 'UTC'
write | public.line_items | public.orders | - | UPDATE "line_items" SET "price" = "orders"."total" FROM "orders" WHERE "line_items"."order_id" = "orders"."id"
read | - | public.users, public.posts | - | SELECT "users".* FROM "users" WHERE "users"."id" IN (SELECT "posts"."user_id" FROM "posts" WHERE "posts"."published" = TRUE)
write | public.users | - | - | INSERT INTO "users" ("email","created_at","updated_at") VALUES ('a@b.c', '2024-01-01', '2024-01-01') ON CONFLICT ("email") DO UPDATE SET updated_at = excluded.updated_at RETURNING "id"
# --- SQLAlchemy ---
read | - | public.users | - | SELECT users.id, users.name, users.fullname FROM users WHERE users.id = $1::INTEGER
write | public.users | - | - | INSERT INTO users (name, fullname) VALUES ('spongebob', 'Spongebob Squarepants') RETURNING users.id
read | - | public.users | - | SELECT users.id AS users_id, users.name AS users_name FROM users WHERE users.name IN ('a', 'b')
read | - | public.users, public.addresses | - | SELECT anon_1.users_id FROM (SELECT users.id AS users_id FROM users LIMIT 10 OFFSET 0) AS anon_1 JOIN addresses ON anon_1.users_id = addresses.user_id
read | - | public.users, public.addresses | - | SELECT users.name, count(addresses.id) AS count_1 FROM users LEFT OUTER JOIN addresses ON users.id = addresses.user_id GROUP BY users.name HAVING count(addresses.id) > 1
read | - | public.addresses | - | SELECT EXISTS (SELECT * FROM addresses WHERE addresses.user_id = 1) AS anon_1
read | - | - | - | select pg_catalog.version()
read | - | - | - | select current_schema()
utility | - | - | - | show standard_conforming_strings
read | - | pg_catalog.pg_class, pg_catalog.pg_namespace | - | select relname from pg_class c join pg_namespace n on n.oid=c.relnamespace where pg_catalog.pg_table_is_visible(c.oid) and relname='users'
write | public.users | public.users | - | UPDATE users SET name='x' WHERE users.id IN (SELECT users.id FROM users WHERE name LIKE 'a%')
read | - | public.nodes | - | WITH RECURSIVE tree(id, parent_id) AS (SELECT id, parent_id FROM nodes WHERE id = 1 UNION ALL SELECT n.id, n.parent_id FROM nodes n JOIN tree t ON n.parent_id = t.id) SELECT * FROM tree
write | public.addresses | - | - | INSERT INTO addresses (user_id, email_address) VALUES (1, 'a@b.c'), (1, 'd@e.f') RETURNING addresses.id
read | - | public.users | - | SELECT users.id, users.name FROM users ORDER BY users.id LIMIT 5 OFFSET 10
read | - | public.users, public.addresses | - | SELECT users.name FROM users WHERE EXISTS (SELECT 1 FROM addresses WHERE addresses.user_id = users.id AND addresses.email_address LIKE '%@x.org')
read | - | public.users | - | SELECT lower(users.name) AS lower_1, length(users.name) AS length_1 FROM users
write | public.users | - | - | DELETE FROM users WHERE users.name = 'x' RETURNING users.id
read | - | public.users, public.addresses | - | SELECT users.id FROM users UNION SELECT addresses.user_id FROM addresses
# --- Hibernate ---
read | - | public.users | - | select u1_0.id,u1_0.name from users u1_0 where u1_0.id=$1
write | public.users | - | - | insert into users (name,version,id) values ($1,$2,$3)
write | public.users_seq | - | nextval() | select nextval('users_seq')
write | public.users | - | - | update users set name=$1,version=$2 where id=$3 and version=$4
write | public.users | - | - | delete from users where id=$1
read | - | public.orders, public.customers | - | select o1_0.id from orders o1_0 join customers c1_0 on c1_0.id=o1_0.customer_id where c1_0.email=$1 for update of o1_0
ddl | public.users_seq | - | - | create sequence users_seq start with 1 increment by 50
ddl | public.orders | - | - | alter table if exists orders add constraint FK14n2n foreign key (customer_id) references customers
write | public.orders | - | - | insert into orders (customer_id,total,id) values ($1,$2,$3)
read | - | public.orders, public.order_items | - | select o1_0.id,i1_0.order_id,i1_0.id from orders o1_0 left join order_items i1_0 on o1_0.id=i1_0.order_id where o1_0.id=$1
write | public.order_items | - | - | delete from order_items where order_id=$1
read | - | public.users | - | select count(u1_0.id) from users u1_0 where u1_0.name like $1 escape ''
session | - | - | - | SET extra_float_digits = 3
session | - | - | - | SET application_name = 'PostgreSQL JDBC Driver'
# --- Prisma ---
read | - | public."User" | - | SELECT "public"."User"."id", "public"."User"."email", "public"."User"."name" FROM "public"."User" WHERE "public"."User"."email" = $1 LIMIT $2 OFFSET $3
write | public."User" | - | - | INSERT INTO "public"."User" ("email","name") VALUES ($1,$2) RETURNING "public"."User"."id", "public"."User"."email", "public"."User"."name"
write | public."Post" | - | - | UPDATE "public"."Post" SET "published" = $1 WHERE ("public"."Post"."id" = $2 AND 1=1) RETURNING "public"."Post"."id", "public"."Post"."title"
write | public."Post" | - | - | DELETE FROM "public"."Post" WHERE ("public"."Post"."id" = $1 AND 1=1)
read | - | public."User" | - | SELECT COUNT(*) AS "_count$_all" FROM (SELECT "public"."User"."id" FROM "public"."User" WHERE 1=1 OFFSET $1) AS "sub"
read | - | public."Post" | - | SELECT "t1"."id", "t1"."title" FROM "public"."Post" AS "t1" WHERE "t1"."authorId" IN ($1,$2)
read | - | public._prisma_migrations | - | SELECT "id", "checksum", "finished_at", "migration_name", "logs", "rolled_back_at", "started_at", "applied_steps_count" FROM "_prisma_migrations" ORDER BY "started_at" ASC
ddl | public._prisma_migrations | - | now() | CREATE TABLE "_prisma_migrations" ("id" VARCHAR(36) PRIMARY KEY NOT NULL, "checksum" VARCHAR(64) NOT NULL, "finished_at" TIMESTAMPTZ, "migration_name" VARCHAR(255) NOT NULL, "logs" TEXT, "rolled_back_at" TIMESTAMPTZ, "started_at" TIMESTAMPTZ NOT NULL DEFAULT now(), "applied_steps_count" INTEGER NOT NULL DEFAULT 0)
ddl | public."User" | - | - | CREATE UNIQUE INDEX "User_email_key" ON "public"."User"("email")
write | public."Post" | - | - | UPDATE "public"."Post" SET "views" = ("public"."Post"."views" + $1) WHERE "public"."Post"."id" = $2
read | - | public."User", public."Post" | - | SELECT "public"."User"."id" FROM "public"."User" WHERE ("public"."User"."id") IN (SELECT "t1"."authorId" FROM "public"."Post" AS "t1" WHERE ("t1"."published" = $1 AND "t1"."authorId" IS NOT NULL))
write | public."Post" | - | - | INSERT INTO "public"."Post" ("title","authorId") VALUES ($1,$2) ON CONFLICT ("title") DO UPDATE SET "authorId" = $3 RETURNING "public"."Post"."id"
# --- quoting and case traps ---
read | - | public."Orders" | - | SELECT * FROM "Orders"
read | - | public.orders | - | SELECT * FROM Orders
read | - | public.orders | - | SELECT * FROM ORDERS
read | - | "my.schema"."my.table" | - | SELECT * FROM "my.schema"."my.table"
write | "Sales"."Q1" | - | - | UPDATE "Sales"."Q1" SET x = 1
write | public."weird""name" | - | - | INSERT INTO "weird""name" VALUES (1)
read | - | public.t | - | SELECT * FROM mydb.public.t
read | - | public.orders | - | SELECT * FROM PUBLIC.ORDERS
read | - | public.dual_t | - | SELECT 'orders' FROM dual_t
read | - | public.from | - | SELECT "select" FROM "from"
read | - | public.orders | - | select * from orders o where o.note = 'drop table x; --'
read | - | public.t | - | SELECT * FROM t /* ; DELETE FROM t */
read | - | - | - | SELECT $$;DELETE FROM t;$$
read | - | public."Order Items" | - | SELECT * FROM "Order Items"
write | "Mixed Case"."Table" | - | - | DELETE FROM "Mixed Case"."Table" WHERE true
read | - | s.t | - | SELECT * FROM S.T
read | - | public.t | - | SELECT * FROM public . t
write | public.o | - | - | INSERT INTO O VALUES ('"quoted" in a string', 'with ; semicolon')
read | - | public.x1 | - | SELECT "x1".a FROM x1 -- trailing comment ; DELETE FROM y
read | - | public.abcdefghijabcdefghijabcdefghijabcdefghijabcdefghijabcdefghijabc | - | SELECT * FROM abcdefghijabcdefghijabcdefghijabcdefghijabcdefghijabcdefghijabcdefghij
# --- CTEs ---
read | - | public.orders | - | WITH o AS (SELECT * FROM orders) SELECT * FROM o
read | - | - | - | WITH orders AS (SELECT 1 AS x) SELECT * FROM orders
write | public.inbox, public.archive | - | - | WITH moved AS (DELETE FROM inbox WHERE id < 10 RETURNING *) INSERT INTO archive SELECT * FROM moved
write | public.stock | - | - | WITH upd AS (UPDATE stock SET qty = qty - 1 WHERE id = 1 RETURNING id) SELECT * FROM upd
read | - | public.a, public.b | - | WITH x AS (SELECT id FROM a), y AS (SELECT id FROM b JOIN x USING (id)) SELECT * FROM y
read | - | public.cte | - | WITH cte AS (SELECT 1) SELECT * FROM public.cte
write | public.log | public.events | now() | WITH ins AS (INSERT INTO log (at) VALUES (now()) RETURNING id) SELECT e.* FROM events e, ins
read | - | public.t | - | WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 10) SELECT * FROM r, t
write | public.t | public.src | - | WITH s AS (SELECT * FROM src) UPDATE t SET v = s.v FROM s WHERE t.id = s.id
read | - | public.a | - | SELECT * FROM (WITH a AS (SELECT 1) SELECT * FROM a) sub, a
write | public.accounts | - | - | WITH d AS MATERIALIZED (SELECT 1 AS id) DELETE FROM accounts USING d WHERE accounts.id = d.id
# --- upserts ---
write | public.counters | - | - | INSERT INTO counters (k, v) VALUES ('a', 1) ON CONFLICT (k) DO UPDATE SET v = counters.v + EXCLUDED.v
write | public.t | public.s | - | INSERT INTO t (id) SELECT id FROM s ON CONFLICT DO NOTHING
write | public.accounts | public.staging | - | MERGE INTO accounts a USING staging s ON a.id = s.id WHEN MATCHED THEN UPDATE SET balance = s.balance WHEN NOT MATCHED THEN INSERT (id, balance) VALUES (s.id, s.balance)
write | public.kv | - | now() | INSERT INTO kv (k, v, at) VALUES ('x', 'y', now()) ON CONFLICT ON CONSTRAINT kv_pkey DO UPDATE SET v = EXCLUDED.v, at = now()
write | public.inventory | public.shipments | - | MERGE INTO inventory i USING (SELECT item, sum(qty) AS q FROM shipments GROUP BY item) s ON i.item = s.item WHEN MATCHED THEN UPDATE SET qty = i.qty + s.q WHEN NOT MATCHED THEN DO NOTHING
# --- multi-table DML ---
write | public.orders | public.customers | - | UPDATE orders SET status = 'vip' FROM customers WHERE orders.customer_id = customers.id AND customers.vip
write | public.orders | public.customers | - | DELETE FROM orders USING customers WHERE orders.customer_id = customers.id AND customers.banned
write | public.archive | public.orders | now() | INSERT INTO archive SELECT * FROM orders WHERE created < now() - interval '1 year'
write | public.t | public.t | LIMIT without ORDER BY | DELETE FROM t WHERE id IN (SELECT id FROM t LIMIT 10)
write | public.t | public.t | - | DELETE FROM t WHERE id IN (SELECT id FROM t ORDER BY id LIMIT 10)
write | public.t | public.u | - | UPDATE t SET x = (SELECT max(y) FROM u) WHERE id = 1
write | public.queue | public.queue | LIMIT without ORDER BY | UPDATE queue SET taken = true WHERE id = (SELECT id FROM queue WHERE NOT taken LIMIT 1 FOR UPDATE SKIP LOCKED) RETURNING id
write | public.t2 | public.t1 | LIMIT without ORDER BY | INSERT INTO t2 SELECT * FROM t1 LIMIT 100
write | public.t | - | - | UPDATE ONLY t SET a = 1
write | public.a | public.b, public.c | - | UPDATE a SET x = b.x FROM b JOIN c ON b.id = c.id WHERE a.id = b.id
# --- DDL ---
ddl | public.x | - | - | CREATE TABLE x (id bigserial PRIMARY KEY, note text)
ddl | s.x | - | - | CREATE TABLE IF NOT EXISTS s.x (id int)
ddl | public.a, public.b | - | - | ALTER TABLE a RENAME TO b
ddl | s.a, s.b | - | - | ALTER TABLE s.a RENAME TO b
ddl | public.a | - | - | ALTER TABLE a ADD COLUMN c int DEFAULT 0
ddl | public.a | - | - | ALTER TABLE a RENAME COLUMN x TO y
ddl | - | - | - | DROP INDEX IF EXISTS idx_a
ddl | public.v | public.t | - | CREATE VIEW v AS SELECT * FROM t WHERE x > 1
ddl | public.mv | public.t | - | CREATE MATERIALIZED VIEW mv AS SELECT count(*) FROM t
ddl | - | - | - | CREATE SCHEMA IF NOT EXISTS app
ddl | - | - | - | CREATE EXTENSION IF NOT EXISTS pgcrypto
ddl | - | - | - | CREATE FUNCTION add(a int, b int) RETURNS int LANGUAGE sql IMMUTABLE AS $$ SELECT a + b $$
ddl | - | - | - | CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy')
ddl | - | - | - | COMMENT ON TABLE t IS 'the t table'
ddl | - | - | - | GRANT SELECT, INSERT ON orders TO app_user
ddl | - | - | - | REVOKE ALL ON orders FROM public
ddl | public.s | - | - | CREATE SEQUENCE s START 100
ddl | public.s | - | - | ALTER SEQUENCE s RESTART WITH 1
ddl | public.s | - | - | DROP SEQUENCE s
ddl | public.t2 | public.t | - | CREATE TABLE t2 AS SELECT * FROM t
ddl | public.t3 | public.t | - | SELECT * INTO t3 FROM t
ddl | pg_temp.scratch | - | - | CREATE TEMP TABLE scratch (id int)
ddl | public.v | - | - | DROP VIEW v
ddl | public.t | - | - | CREATE INDEX CONCURRENTLY idx_t_a ON t USING btree (a) WHERE a IS NOT NULL
ddl | - | - | - | CREATE ROLE app LOGIN
ddl | - | - | - | DROP SCHEMA app CASCADE
ddl | - | - | - | CREATE TRIGGER trg BEFORE UPDATE ON t FOR EACH ROW EXECUTE FUNCTION touch()
ddl | public.t | - | - | ALTER TABLE t ALTER COLUMN c SET NOT NULL
ddl | public.t | - | - | ALTER TABLE t DROP COLUMN c
# --- COPY ---
write | public.t | - | - | COPY t FROM STDIN
write | public.t | - | - | COPY t (a, b) FROM STDIN WITH (FORMAT csv, HEADER true)
read | - | public.t | - | COPY t TO STDOUT
read | - | public.t | - | COPY (SELECT * FROM t WHERE x > 1) TO STDOUT WITH CSV
write | public."Mixed" | - | - | COPY "Mixed" FROM STDIN
write | s.t | - | - | COPY s.t FROM STDIN (FORMAT binary)
# --- transaction control ---
transaction | - | - | - | BEGIN
transaction | - | - | - | BEGIN ISOLATION LEVEL SERIALIZABLE
transaction | - | - | - | START TRANSACTION READ WRITE
transaction | - | - | - | COMMIT
transaction | - | - | - | ROLLBACK
transaction | - | - | - | ABORT
transaction | - | - | - | SAVEPOINT a
transaction | - | - | - | RELEASE a
transaction | - | - | - | ROLLBACK TO a
transaction | - | - | - | PREPARE TRANSACTION 'capgate-1-42'
transaction | - | - | - | COMMIT PREPARED 'capgate-1-42'
transaction | - | - | - | ROLLBACK PREPARED 'capgate-1-42'
transaction | - | - | - | COMMIT AND CHAIN
transaction | - | - | - | begin read only
# --- session ---
session | - | - | - | SET search_path TO app, public
session | - | - | - | SET search_path = "$user", public
session | - | - | - | SET TIME ZONE 'UTC'
session | - | - | - | RESET ALL
session | - | - | - | RESET search_path
session | - | - | - | DISCARD ALL
session | - | - | - | SET LOCAL statement_timeout = '5s'
session | - | - | - | SET datestyle TO ISO, MDY
session | - | - | - | SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL REPEATABLE READ
session | - | - | - | SET TRANSACTION ISOLATION LEVEL SERIALIZABLE
session | - | - | - | SET CONSTRAINTS ALL DEFERRED
# --- utility ---
utility | - | - | - | SHOW search_path
utility | - | public.t | - | EXPLAIN SELECT * FROM t
utility | - | public.t | - | EXPLAIN UPDATE t SET a = 1
write | public.t | - | - | EXPLAIN ANALYZE UPDATE t SET a = 1
utility | - | - | - | LISTEN jobs
utility | - | - | - | NOTIFY jobs, 'payload'
utility | - | - | - | UNLISTEN *
utility | - | - | - | VACUUM
utility | - | public.t | - | VACUUM FULL t
utility | - | public.t | - | ANALYZE t
utility | - | - | - | CHECKPOINT
utility | - | public.accounts | - | LOCK TABLE accounts IN ACCESS EXCLUSIVE MODE
utility | - | public.t | - | DECLARE c CURSOR FOR SELECT * FROM t
utility | - | - | - | FETCH 100 FROM c
utility | - | - | - | CLOSE c
utility | - | - | - | PREPARE q (int) AS SELECT * FROM t WHERE id = $1
session | - | - | - | DEALLOCATE ALL
utility | - | public.t | - | CLUSTER t USING t_pkey
utility | - | public.t | - | REINDEX TABLE t
write | public.mv | - | - | REFRESH MATERIALIZED VIEW CONCURRENTLY mv
# --- non-deterministic functions ---
read | - | - | clock_timestamp() | SELECT clock_timestamp()
write | public.t | - | statement_timestamp() | UPDATE t SET at = statement_timestamp()
write | public.t | - | timeofday() | INSERT INTO t VALUES (timeofday())
write | public.t | - | gen_random_uuid() | INSERT INTO t (id) VALUES (gen_random_uuid())
write | public.t | - | uuid_generate_v4() | INSERT INTO t (id) VALUES (uuid_generate_v4())
write | public.t | - | txid_current() | INSERT INTO t (x) VALUES (txid_current())
write | public.t | - | pg_backend_pid() | INSERT INTO t (x) VALUES (pg_backend_pid())
write | public.t | - | current_date, localtimestamp | INSERT INTO t (d, ts) VALUES (current_date, localtimestamp)
write | public.t | - | random() | UPDATE t SET r = random() WHERE id = 1
write | public.t_id_seq | public.t | setval() | SELECT setval('t_id_seq', (SELECT max(id) FROM t))
read | - | - | currval() | SELECT currval('t_id_seq')
write | public."Seq" | - | nextval() | SELECT nextval('"Seq"')
write | s.q | - | nextval() | SELECT nextval('s.q'::regclass)
write | public.t, public.t_id_seq | - | nextval() | INSERT INTO t (id) VALUES (nextval('t_id_seq'))
write | public.t | - | now() | UPDATE t SET at = now() WHERE id = 1
read | - | public.t | now() | SELECT * FROM t WHERE at > now() - interval '1 day' LIMIT 5
write | public.t | - | transaction_timestamp() | UPDATE t SET at = transaction_timestamp()
read | - | - | - | SELECT set_config('app.user', '42', false)
read | - | - | - | SELECT pg_sleep(0.1)
# --- functions known from the catalog ---
write | public.accounts | - | public.transfer() | SELECT transfer(1, 2, 100)
write | public.accounts | - | public.transfer() | SELECT * FROM public.transfer(1, 2, 100)
read | - | - | - | SELECT app.total_stable(1)
write | public.accounts | - | public.transfer() | CALL transfer(1, 2, 100)
# --- column defaults from the catalog ---
write | public.invoices | - | nextval('invoices_id_seq'::regclass) (default of public.invoices.id), now() (default of public.invoices.created_at) | INSERT INTO invoices (customer_id) VALUES (1)
write | public.invoices | - | - | INSERT INTO invoices (id, customer_id, created_at) VALUES (5, 1, '2024-01-01')
write | public.invoices | - | nextval('invoices_id_seq'::regclass) (default of public.invoices.id), now() | INSERT INTO invoices (id, customer_id, created_at) VALUES (DEFAULT, 1, now())
write | public.invoices | - | nextval('invoices_id_seq'::regclass) (default of public.invoices.id), now() (default of public.invoices.created_at) | INSERT INTO invoices DEFAULT VALUES
# --- unknown: never silently a read ---
unknown | - | - | - | DO $$ BEGIN UPDATE accounts SET balance = 0; END $$
unknown | - | - | - | EXECUTE q(1)
unknown | - | - | - | SELEC 1
unknown | - | - | - | SELECT my_func(1)
unknown | - | - | - | CALL do_things()
unknown | - | - | - | SELECT lo_import('/tmp/x')
unknown | - | - | - | SELECT 'unterminated
unknown | - | public.t | app.mutate() | SELECT app.mutate(id) FROM t
unknown | - | public.t | - | SELECT * FROM t WHERE f(x)
unknown | - | public.seqs_without_literal | nextval() | SELECT nextval(name) FROM seqs_without_literal
unknown | - | - | - | IMPORT FOREIGN SCHEMA remote FROM SERVER s INTO local
"#;

/// The catalog the corpus is classified with: two user functions and one table with
/// non-deterministic defaults.
fn catalog() -> Catalog {
    let mut c = Catalog::new();
    c.add_function(
        "public",
        "transfer",
        FunctionInfo { volatility: Volatility::Volatile, writes: Some(vec![TableName::new("public", "accounts")]) },
    );
    c.add_function("app", "total_stable", FunctionInfo { volatility: Volatility::Stable, writes: None });
    c.add_function("app", "mutate", FunctionInfo { volatility: Volatility::Volatile, writes: None });
    c.set_defaults(
        TableName::new("public", "invoices"),
        vec![
            ColumnDefault { column: "id".into(), kind: DefaultKind::Sequence, expr: "nextval('invoices_id_seq'::regclass)".into() },
            ColumnDefault { column: "created_at".into(), kind: DefaultKind::Volatile, expr: "now()".into() },
        ],
    );
    c
}

#[test]
fn corpus() {
    let catalog = catalog();
    let path = SearchPath::default();
    corpus::check(CORPUS, |sql| classify(Dialect::Postgres, sql, &path, &catalog));
}

/// Arbitrary input never panics: random bytes, random tokens of SQL, and mutations of the
/// corpus (truncations, duplications, deep nesting). Bounded and seeded; the seed is printed.
#[test]
fn never_panics_on_arbitrary_input() {
    const WORDS: &[&str] = &[
        "SELECT",
        "INSERT",
        "INTO",
        "UPDATE",
        "DELETE",
        "FROM",
        "WHERE",
        "WITH",
        "AS",
        "(",
        ")",
        ",",
        ";",
        "'",
        "\"",
        "$$",
        "$1",
        "t",
        "\"T\"",
        "s.t",
        "nextval('x')",
        "now()",
        "ON CONFLICT",
        "DO",
        "SET",
        "VALUES",
        "RETURNING",
        "*",
        "JOIN",
        "USING",
        "COPY",
        "DROP TABLE",
        "LOCK",
        "VACUUM",
        "PREPARE TRANSACTION",
        "COMMIT PREPARED",
        "--",
        "/*",
        "*/",
        "FOR UPDATE",
        "LIMIT 1",
        "CALL",
        "f(",
        "EXECUTE",
        "E'\\'",
        "U&\"a\"",
        "::regclass",
        ".",
        "`",
        "#",
    ];
    let catalog = catalog();
    let path = SearchPath::default();
    for sql in corpus::arbitrary_inputs(0x5eed_c1a5_51f1, WORDS, CORPUS, 3000) {
        for dialect in [Dialect::Postgres, Dialect::MySql] {
            let _ = classify(dialect, &sql, &path, &catalog);
        }
    }
}
