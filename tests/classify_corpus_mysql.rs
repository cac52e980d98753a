//! A corpus of real-world MySQL and MariaDB statements with their expected classification:
//! what ORMs send (Django, Rails, Hibernate, Laravel/Eloquent, SQLAlchemy, Prisma), sysbench
//! (prepared and emulated), WordPress, mysqldump; backticks, database-qualified names,
//! ON DUPLICATE KEY UPDATE, REPLACE, multi-table UPDATE/DELETE, INSERT … SELECT, LOAD DATA,
//! CALL of stored procedures, prepared-able transaction control and XA, DDL, SET, USE; and
//! what must come out `unknown`. Plus the `sql_mode` flags that change how text is read.
//!
//! Each record is `kind | writes | reads | nondeterministic | sql` (lists comma-separated,
//! `-` for none), classified with `shop` as the current database and the stored routines in
//! [`catalog`].

use capgate::classify::mysql::{add_routines, Routine, SqlMode};
use capgate::classify::{classify, Catalog, Dialect, Kind, SearchPath, SessionChange, TableName, TxControl};

const CORPUS: &str = r#"
# --- sysbench oltp_*.lua, prepared (--db-ps-mode=auto): COM_STMT_PREPARE texts ---
read | - | shop.sbtest1 | - | SELECT c FROM sbtest1 WHERE id=?
read | - | shop.sbtest1 | - | SELECT c FROM sbtest1 WHERE id BETWEEN ? AND ?
read | - | shop.sbtest1 | - | SELECT SUM(k) FROM sbtest1 WHERE id BETWEEN ? AND ?
read | - | shop.sbtest1 | - | SELECT c FROM sbtest1 WHERE id BETWEEN ? AND ? ORDER BY c
read | - | shop.sbtest1 | - | SELECT DISTINCT c FROM sbtest1 WHERE id BETWEEN ? AND ? ORDER BY c
write | shop.sbtest1 | - | - | UPDATE sbtest1 SET k=k+1 WHERE id=?
write | shop.sbtest1 | - | - | UPDATE sbtest1 SET c=? WHERE id=?
write | shop.sbtest1 | - | - | DELETE FROM sbtest1 WHERE id=?
write | shop.sbtest1 | - | - | INSERT INTO sbtest1 (id, k, c, pad) VALUES (?, ?, ?, ?)
transaction | - | - | - | BEGIN
transaction | - | - | - | COMMIT
# --- sysbench, emulated (--db-ps-mode=disable) and oltp_insert, prepare, cleanup ---
read | - | shop.sbtest1 | - | SELECT c FROM sbtest1 WHERE id=5023
read | - | shop.sbtest1 | - | SELECT c FROM sbtest1 WHERE id BETWEEN 5023 AND 5122
read | - | shop.sbtest1 | - | SELECT SUM(k) FROM sbtest1 WHERE id BETWEEN 5023 AND 5122
read | - | shop.sbtest1 | - | SELECT c FROM sbtest1 WHERE id BETWEEN 5023 AND 5122 ORDER BY c
read | - | shop.sbtest1 | - | SELECT DISTINCT c FROM sbtest1 WHERE id BETWEEN 5023 AND 5122 ORDER BY c
write | shop.sbtest1 | - | - | UPDATE sbtest1 SET k=k+1 WHERE id=5023
write | shop.sbtest1 | - | - | UPDATE sbtest1 SET c='68487932199-96439406143-93774651418-41631865787-96406072701-20604855487-25459966574-28203206787-41238978918-19503783441' WHERE id=5023
write | shop.sbtest1 | - | - | DELETE FROM sbtest1 WHERE id=5023
write | shop.sbtest1 | - | - | INSERT INTO sbtest1 (id, k, c, pad) VALUES (5023, 4991, '22195207048-70116052123-74140395089-76317954521-98694025897-61566476766-45541958718-99012318587-48017271221-81802066839', '67847967377-48000963322-62604785301-91415491898-96926520291')
write | shop.sbtest3 | - | - | INSERT INTO sbtest3 (id, k, c, pad) VALUES (0, 5018, "83868641912-28773972837-60736120486-75162659906-27563526494-20381887404-41576422241-93426793964-56405065102-33518432330", "67847967377-48000963322-62604785301-91415491898-96926520291")
ddl | shop.sbtest1 | - | - | CREATE TABLE sbtest1(id INTEGER NOT NULL AUTO_INCREMENT, k INTEGER DEFAULT '0' NOT NULL, c CHAR(120) DEFAULT '' NOT NULL, pad CHAR(60) DEFAULT '' NOT NULL, PRIMARY KEY (id)) /*! ENGINE = innodb */
write | shop.sbtest1 | - | - | INSERT INTO sbtest1(k, c, pad) VALUES(4991, '1234-5678', '9876-5432'),(5022, '1111-2222', '3333-4444'),(7011, '5555-6666', '7777-8888')
ddl | shop.sbtest1 | - | - | CREATE INDEX k_1 ON sbtest1(k)
ddl | shop.sbtest1 | - | - | DROP TABLE IF EXISTS sbtest1
# --- Django (django.db.backends.mysql) ---
read | - | shop.auth_user | - | SELECT `auth_user`.`id`, `auth_user`.`password`, `auth_user`.`last_login`, `auth_user`.`is_superuser`, `auth_user`.`username` FROM `auth_user` WHERE `auth_user`.`username` = 'bob' LIMIT 21
write | shop.polls_question | - | - | INSERT INTO `polls_question` (`question_text`, `pub_date`) VALUES ('What\'s up?', '2024-01-01 00:00:00.000000')
write | shop.polls_question | - | - | UPDATE `polls_question` SET `question_text` = 'What\'s new?' WHERE `polls_question`.`id` = 1
write | shop.polls_choice | - | - | DELETE FROM `polls_choice` WHERE `polls_choice`.`id` IN (1, 2, 3)
read | - | shop.polls_choice | - | SELECT COUNT(*) AS `__count` FROM `polls_choice` WHERE `polls_choice`.`question_id` = 1
session | - | - | - | SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED
read | - | - | - | SELECT @@SQL_AUTO_IS_NULL
read | - | information_schema.tables | - | SELECT engine FROM information_schema.tables WHERE table_name = 'polls_question' AND table_schema = DATABASE()
transaction | - | - | - | SAVEPOINT `s140241_x1`
transaction | - | - | - | RELEASE SAVEPOINT `s140241_x1`
transaction | - | - | - | ROLLBACK TO SAVEPOINT `s140241_x1`
ddl | shop.django_migrations | - | - | CREATE TABLE `django_migrations` (`id` bigint AUTO_INCREMENT NOT NULL PRIMARY KEY, `app` varchar(255) NOT NULL, `name` varchar(255) NOT NULL, `applied` datetime(6) NOT NULL)
write | shop.django_migrations | - | - | INSERT INTO `django_migrations` (`app`, `name`, `applied`) VALUES ('polls', '0001_initial', '2024-01-01 00:00:00.000000')
ddl | shop.polls_choice | - | - | ALTER TABLE `polls_choice` ADD CONSTRAINT `polls_choice_question_id_c5b4b260_fk_polls_question_id` FOREIGN KEY (`question_id`) REFERENCES `polls_question` (`id`)
ddl | shop.polls_choice | - | - | CREATE INDEX `polls_choice_question_id_c5b4b260` ON `polls_choice` (`question_id`)
read | - | shop.polls_question | - | SELECT `polls_question`.`id`, `polls_question`.`question_text` FROM `polls_question` WHERE `polls_question`.`id` = 1 LIMIT 21 FOR UPDATE
read | - | shop.polls_question | - | SELECT `polls_question`.`id` FROM `polls_question` WHERE `polls_question`.`pub_date` < '2024-01-01 00:00:00' LIMIT 10 FOR UPDATE SKIP LOCKED
write | shop.polls_tag | - | - | INSERT IGNORE INTO `polls_tag` (`name`) VALUES ('a'), ('b')
write | shop.polls_tag | - | - | INSERT INTO `polls_tag` (`name`, `uses`) VALUES ('a', 1) AS `new` ON DUPLICATE KEY UPDATE `uses` = `new`.`uses`
write | shop.polls_tag | - | - | INSERT INTO `polls_tag` (`name`, `uses`) VALUES ('a', 1) ON DUPLICATE KEY UPDATE `uses` = VALUES(`uses`)
write | shop.polls_choice | shop.polls_question | - | DELETE FROM `polls_choice` WHERE `polls_choice`.`question_id` IN (SELECT U0.`id` FROM `polls_question` U0 WHERE U0.`pub_date` < '2020-01-01 00:00:00')
write | shop.polls_choice | - | - | UPDATE `polls_choice` SET `votes` = (`polls_choice`.`votes` + 1) WHERE `polls_choice`.`id` = 3
write | shop.polls_choice | - | - | UPDATE `polls_choice` SET `votes` = 0 WHERE `polls_choice`.`question_id` = 1 ORDER BY `polls_choice`.`id` ASC
read | - | shop.polls_choice, shop.polls_question | - | SELECT `polls_choice`.`id` FROM `polls_choice` INNER JOIN `polls_question` ON (`polls_choice`.`question_id` = `polls_question`.`id`) WHERE `polls_question`.`pub_date` <= '2024-01-01 00:00:00' ORDER BY `polls_question`.`pub_date` DESC LIMIT 5
read | - | shop.django_session | - | SELECT `django_session`.`session_key`, `django_session`.`session_data`, `django_session`.`expire_date` FROM `django_session` WHERE (`django_session`.`expire_date` > '2024-05-01 10:00:00' AND `django_session`.`session_key` = 'x9y8') LIMIT 21
read | - | shop.polls_question | - | SELECT `polls_question`.`id` FROM `polls_question` WHERE `polls_question`.`question_text` LIKE BINARY '%what%'
read | - | shop.auth_user | - | SELECT (1) AS `a` FROM `auth_user` WHERE `auth_user`.`username` = 'bob' LIMIT 1
# --- Rails (mysql2, trilogy) ---
read | - | shop.users | - | SELECT `users`.* FROM `users` WHERE `users`.`email` = 'a@b.c' LIMIT 1
write | shop.users | - | - | INSERT INTO `users` (`email`, `created_at`, `updated_at`) VALUES ('a@b.c', '2024-05-01 10:00:00.123456', '2024-05-01 10:00:00.123456')
write | shop.users | - | - | UPDATE `users` SET `users`.`name` = 'Bob', `users`.`updated_at` = '2024-05-01 10:00:01.000000' WHERE `users`.`id` = 1
write | shop.users | - | - | DELETE FROM `users` WHERE `users`.`id` = 1
transaction | - | - | - | ROLLBACK
transaction | - | - | - | SAVEPOINT active_record_1
transaction | - | - | - | RELEASE SAVEPOINT active_record_1
transaction | - | - | - | ROLLBACK TO SAVEPOINT active_record_1
read | - | - | - | SELECT GET_LOCK('3858218312783', 0)
read | - | - | - | SELECT RELEASE_LOCK('3858218312783')
session | - | - | - | SET @@SESSION.sql_mode = CONCAT(CONCAT(@@sql_mode, ',STRICT_ALL_TABLES'), ',NO_AUTO_VALUE_ON_ZERO'), @@SESSION.sql_auto_is_null = 0, @@SESSION.wait_timeout = 2147483
utility | - | shop.users | - | SHOW FULL FIELDS FROM `users`
utility | - | - | - | SHOW CREATE TABLE `users`
read | - | shop.schema_migrations | - | SELECT `schema_migrations`.`version` FROM `schema_migrations` ORDER BY `schema_migrations`.`version` ASC
write | shop.ar_internal_metadata | - | - | INSERT INTO `ar_internal_metadata` (`key`, `value`, `created_at`, `updated_at`) VALUES ('environment', 'development', '2024-05-01 10:00:00.000000', '2024-05-01 10:00:00.000000')
write | shop.books | - | - | INSERT INTO `books` (`id`,`title`) VALUES (1, 'Rework') AS new ON DUPLICATE KEY UPDATE `title`=new.`title`
write | shop.books | - | - | INSERT INTO `books` (`id`,`title`) VALUES (1, 'Rework') ON DUPLICATE KEY UPDATE `title`=VALUES(`title`)
write | shop.books | - | - | INSERT IGNORE INTO `books` (`id`,`title`) VALUES (1, 'Rework'), (2, 'Getting Real')
write | shop.posts | - | - | UPDATE `posts` SET `posts`.`comments_count` = COALESCE(`posts`.`comments_count`, 0) + 1 WHERE `posts`.`id` = 1
write | shop.comments | shop.posts | - | UPDATE `comments` INNER JOIN `posts` ON `posts`.`id` = `comments`.`post_id` SET `comments`.`approved` = TRUE WHERE `posts`.`author_id` = 7
write | shop.comments | shop.posts | - | DELETE `comments` FROM `comments` INNER JOIN `posts` ON `posts`.`id` = `comments`.`post_id` WHERE `posts`.`author_id` = 7
read | - | shop.orders | - | SELECT COUNT(*) FROM `orders` WHERE `orders`.`user_id` = 1
read | - | shop.users | - | SELECT 1 AS one FROM `users` WHERE `users`.`email` = BINARY 'a@b.c' LIMIT 1
ddl | shop.users | - | - | CREATE TABLE `users` (`id` bigint NOT NULL AUTO_INCREMENT PRIMARY KEY, `email` varchar(255), `created_at` datetime(6) NOT NULL, `updated_at` datetime(6) NOT NULL)
ddl | shop.schema_migrations | - | - | CREATE TABLE `schema_migrations` (`version` varchar(255) NOT NULL PRIMARY KEY)
ddl | shop.users | - | - | ALTER TABLE `users` ADD `name` varchar(255)
ddl | shop.users | - | - | CREATE UNIQUE INDEX `index_users_on_email` ON `users` (`email`)
read | - | shop.users | - | SELECT `users`.* FROM `users` WHERE `users`.`id` = 1 LIMIT 1 FOR UPDATE
read | - | shop.comments | - | SELECT `comments`.* FROM `comments` WHERE `comments`.`post_id` IN (1, 2, 3)
session | - | - | - | SET FOREIGN_KEY_CHECKS = 0
write | shop.users | - | - | DELETE FROM `users`
# --- Hibernate 6 (MySQLDialect) with Connector/J ---
read | - | shop.users | - | select u1_0.id,u1_0.email,u1_0.name from users u1_0 where u1_0.id=?
write | shop.users | - | - | insert into users (email,name,version) values (?,?,?)
write | shop.users | - | - | update users set email=?,name=?,version=? where id=? and version=?
write | shop.users | - | - | delete from users where id=? and version=?
read | - | shop.users_seq | - | select next_val as id_val from users_seq for update
write | shop.users_seq | - | - | update users_seq set next_val= ? where next_val=?
ddl | shop.users_seq | - | - | create table users_seq (next_val bigint) engine=InnoDB
write | shop.users_seq | - | - | insert into users_seq values ( 1 )
ddl | shop.users | - | - | create table users (id bigint not null auto_increment, email varchar(255), version integer not null, primary key (id)) engine=InnoDB
ddl | shop.orders | - | - | alter table orders add constraint FK32ql8ubntj5uh44ph9659tiih foreign key (user_id) references users (id)
read | - | shop.orders, shop.users | - | select o1_0.id,o1_0.total from orders o1_0 join users u1_0 on u1_0.id=o1_0.user_id where u1_0.email=? order by o1_0.id limit ?,?
read | - | shop.users | - | select u1_0.id,u1_0.email from users u1_0 where u1_0.id=? lock in share mode
read | - | shop.users | - | select u1_0.id,u1_0.email from users u1_0 where u1_0.id=? for share
write | shop.order_items | shop.orders | - | delete from order_items where order_id in (select o1_0.id from orders o1_0 where o1_0.customer_id=?)
write | shop.orders | - | - | update orders o1_0 set status=? where o1_0.created<?
session | - | - | - | SET autocommit=0
session | - | - | - | SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ
read | - | - | - | /* mysql-connector-j-8.3.0 (Revision: 805f872a57875f311cb82487efcfb070411a3fa0) */SELECT @@session.auto_increment_increment AS auto_increment_increment, @@character_set_client AS character_set_client, @@character_set_connection AS character_set_connection, @@character_set_results AS character_set_results, @@character_set_server AS character_set_server, @@collation_server AS collation_server, @@collation_connection AS collation_connection, @@init_connect AS init_connect, @@interactive_timeout AS interactive_timeout, @@license AS license, @@lower_case_table_names AS lower_case_table_names, @@max_allowed_packet AS max_allowed_packet, @@net_write_timeout AS net_write_timeout, @@performance_schema AS performance_schema, @@sql_mode AS sql_mode, @@system_time_zone AS system_time_zone, @@time_zone AS time_zone, @@transaction_isolation AS transaction_isolation, @@wait_timeout AS wait_timeout
session | - | - | - | SET NAMES utf8mb4
session | - | - | - | SET character_set_results = NULL
read | - | - | - | SELECT @@session.transaction_read_only
utility | - | - | - | SHOW WARNINGS
# --- Laravel (Eloquent, query builder, migrations, queue, cache, session) ---
read | - | shop.users | - | select * from `users` where `email` = ? limit 1
write | shop.users | - | - | insert into `users` (`name`, `email`, `password`, `updated_at`, `created_at`) values (?, ?, ?, ?, ?)
write | shop.users | - | - | update `users` set `name` = ?, `users`.`updated_at` = ? where `id` = ?
write | shop.users | - | - | delete from `users` where `id` = ?
read | - | shop.users | - | select count(*) as aggregate from `users`
read | - | shop.users | - | select exists(select * from `users` where `email` = ?) as `exists`
write | shop.flights | - | - | insert into `flights` (`departure`, `destination`, `price`) values (?, ?, ?) on duplicate key update `price` = values(`price`)
write | shop.flights | - | - | insert ignore into `flights` (`departure`, `destination`) values (?, ?)
read | - | shop.jobs | - | select * from `jobs` where `queue` = ? and ((`reserved_at` is null and `available_at` <= ?) or (`reserved_at` <= ?)) order by `id` asc limit 1 for update skip locked
write | shop.jobs | - | - | update `jobs` set `reserved_at` = ?, `attempts` = ? where `id` = ?
write | shop.jobs | - | - | delete from `jobs` where `id` = ?
write | shop.cache | - | - | delete from `cache` where `key` in (?)
write | shop.cache | - | - | insert into `cache` (`key`, `value`, `expiration`) values (?, ?, ?) on duplicate key update `value` = values(`value`), `expiration` = values(`expiration`)
read | - | shop.cache | - | select * from `cache` where `key` in (?)
session | - | - | - | set names 'utf8mb4' collate 'utf8mb4_unicode_ci'
session | - | - | - | set session sql_mode='ONLY_FULL_GROUP_BY,STRICT_TRANS_TABLES,NO_ZERO_IN_DATE,NO_ZERO_DATE,ERROR_FOR_DIVISION_BY_ZERO,NO_ENGINE_SUBSTITUTION'
ddl | shop.users | - | - | create table `users` (`id` bigint unsigned not null auto_increment primary key, `name` varchar(255) not null, `email` varchar(255) not null, `remember_token` varchar(100) null, `created_at` timestamp null, `updated_at` timestamp null) default character set utf8mb4 collate 'utf8mb4_unicode_ci'
ddl | shop.users | - | - | alter table `users` add unique `users_email_unique`(`email`)
ddl | shop.migrations | - | - | create table `migrations` (`id` int unsigned not null auto_increment primary key, `migration` varchar(255) not null, `batch` int not null) default character set utf8mb4 collate 'utf8mb4_unicode_ci'
read | - | shop.migrations | - | select max(`batch`) as aggregate from `migrations`
write | shop.migrations | - | - | insert into `migrations` (`migration`, `batch`) values (?, ?)
read | - | information_schema.tables | - | select table_name as `name`, (data_length + index_length) as `size`, table_comment as `comment`, engine as `engine`, table_collation as `collation` from information_schema.tables where table_schema = schema() and table_type in ('BASE TABLE', 'SYSTEM VERSIONED') order by table_name
write | shop.users | - | - | update `users` set `votes` = `votes` + 1, `users`.`updated_at` = ? where `id` = ?
write | shop.users | shop.posts | - | update `users` inner join `posts` on `users`.`id` = `posts`.`user_id` set `users`.`post_count` = `users`.`post_count` + 1 where `posts`.`id` = ?
write | shop.users | shop.bans | - | delete `users` from `users` inner join `bans` on `bans`.`user_id` = `users`.`id` where `bans`.`expires_at` < ?
transaction | - | - | - | savepoint trans2
transaction | - | - | - | release savepoint trans2
transaction | - | - | - | rollback to savepoint trans2
read | - | shop.users | - | select * from `users` where `users`.`id` = ? limit 1 lock in share mode
read | - | shop.sessions | - | select * from `sessions` where `id` = ? limit 1
write | shop.sessions | - | - | insert into `sessions` (`payload`, `last_activity`, `user_id`, `ip_address`, `user_agent`, `id`) values (?, ?, ?, ?, ?, ?)
write | shop.failed_jobs | - | - | truncate table `failed_jobs`
read | - | shop.users | - | select * from `users` where json_unquote(json_extract(`options`, '$."language"')) = ?
# --- SQLAlchemy (PyMySQL, mysqlclient: parameters sent as literals) ---
utility | - | - | - | SHOW VARIABLES LIKE 'sql_mode'
utility | - | - | - | SHOW VARIABLES LIKE 'lower_case_table_names'
read | - | - | - | SELECT DATABASE()
read | - | - | - | SELECT @@transaction_isolation
read | - | - | - | SELECT CAST('test plain returns' AS CHAR(60)) AS anon_1
utility | - | - | - | SHOW COLLATION
read | - | shop.users | - | SELECT users.id, users.name, users.fullname FROM users WHERE users.name = 'spongebob'
write | shop.users | - | - | INSERT INTO users (name, fullname) VALUES ('spongebob', 'Spongebob Squarepants')
write | shop.users | - | - | UPDATE users SET fullname='Sandy Squirrel' WHERE users.name = 'sandy'
write | shop.addresses | - | - | DELETE FROM addresses WHERE addresses.id = 4
write | shop.addresses | shop.users | - | UPDATE users, addresses SET addresses.email_address=users.name WHERE users.id = addresses.user_id AND users.name = 'ed'
write | shop.users | shop.addresses | - | DELETE FROM users USING users, addresses WHERE users.id = addresses.user_id AND addresses.email_address = 'ed@x.org'
write | shop.my_table | - | - | INSERT INTO my_table (id, data) VALUES (1, 'inserted value') AS new ON DUPLICATE KEY UPDATE data = new.data
write | shop.my_table | - | - | INSERT INTO my_table (id, data) VALUES (1, 'inserted value') ON DUPLICATE KEY UPDATE data = VALUES(data), status = 'U'
utility | - | shop.users | - | DESCRIBE `users`
read | - | shop.users | - | SELECT users.id FROM users WHERE users.id IN (1, 2, 3) FOR UPDATE
read | - | shop.users | - | SELECT users.id FROM users WHERE users.id IN (1, 2, 3) LOCK IN SHARE MODE
ddl | shop.users | - | - | CREATE TABLE users (id INTEGER NOT NULL AUTO_INCREMENT, name VARCHAR(30) NOT NULL, fullname VARCHAR(255), PRIMARY KEY (id))
ddl | shop.users | - | - | DROP TABLE users
read | - | shop.users | - | SELECT count(*) AS count_1 FROM (SELECT users.id AS users_id FROM users) AS anon_1
read | - | shop.addresses, shop.users | - | SELECT users.name, count(addresses.id) AS count_1 FROM users LEFT OUTER JOIN addresses ON users.id = addresses.user_id GROUP BY users.name
transaction | - | - | - | XA START 'sa-7f3e'
transaction | - | - | - | XA END 'sa-7f3e'
transaction | - | - | - | XA PREPARE 'sa-7f3e'
transaction | - | - | - | XA COMMIT 'sa-7f3e'
transaction | - | - | - | XA ROLLBACK 'sa-7f3e'
utility | - | - | - | XA RECOVER
# --- Prisma (database-qualified names) ---
read | - | shop."User" | - | SELECT `shop`.`User`.`id`, `shop`.`User`.`email`, `shop`.`User`.`name` FROM `shop`.`User` WHERE `shop`.`User`.`email` = ? LIMIT ? OFFSET ?
write | shop."User" | - | - | INSERT INTO `shop`.`User` (`email`,`name`) VALUES (?,?)
write | shop."User" | - | - | UPDATE `shop`.`User` SET `name` = ? WHERE (`shop`.`User`.`id` IN (?) AND 1=1)
write | shop."Post" | - | - | DELETE FROM `shop`.`Post` WHERE (`shop`.`Post`.`id` IN (?) AND 1=1)
read | - | shop."Post" | - | SELECT `shop`.`Post`.`id`, `shop`.`Post`.`authorId` FROM `shop`.`Post` WHERE `shop`.`Post`.`authorId` IN (?,?) LIMIT ? OFFSET ?
read | - | shop."User" | - | SELECT COUNT(*) AS `_count._all` FROM (SELECT `shop`.`User`.`id` FROM `shop`.`User` WHERE 1=1 LIMIT ? OFFSET ?) AS `sub`
write | shop."User" | - | - | INSERT INTO `shop`.`User` (`email`,`name`) VALUES (?,?) ON DUPLICATE KEY UPDATE `name` = ?
session | - | - | - | SET TRANSACTION ISOLATION LEVEL SERIALIZABLE
read | - | - | - | SELECT 1
read | - | - | - | SELECT @@version
ddl | shop."User" | - | - | CREATE TABLE `User` (`id` INTEGER NOT NULL AUTO_INCREMENT, `email` VARCHAR(191) NOT NULL, `name` VARCHAR(191) NULL, UNIQUE INDEX `User_email_key`(`email`), PRIMARY KEY (`id`)) DEFAULT CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci
ddl | shop."Post" | - | - | ALTER TABLE `Post` ADD CONSTRAINT `Post_authorId_fkey` FOREIGN KEY (`authorId`) REFERENCES `User`(`id`) ON DELETE RESTRICT ON UPDATE CASCADE
read | - | - | - | SELECT GET_LOCK('prisma_migrate', 10)
read | - | cms."Article" | - | SELECT `cms`.`Article`.`id` FROM `cms`.`Article` WHERE `cms`.`Article`.`published` = ?
# --- WordPress ($wpdb) ---
read | - | shop.wp_options | - | SELECT option_name, option_value FROM wp_options WHERE autoload = 'yes'
read | - | shop.wp_options | - | SELECT option_value FROM wp_options WHERE option_name = 'siteurl' LIMIT 1
write | shop.wp_options | - | - | INSERT INTO `wp_options` (`option_name`, `option_value`, `autoload`) VALUES ('_transient_doing_cron', '1700000000.1234', 'yes') ON DUPLICATE KEY UPDATE `option_name` = VALUES(`option_name`), `option_value` = VALUES(`option_value`), `autoload` = VALUES(`autoload`)
write | shop.wp_options | - | - | UPDATE `wp_options` SET `option_value` = 'a:2:{s:4:\"test\";i:1;}' WHERE `option_name` = 'cron'
write | shop.wp_options | - | - | DELETE FROM `wp_options` WHERE `option_name` = '_transient_doing_cron'
read | - | shop.wp_posts | - | SELECT SQL_CALC_FOUND_ROWS wp_posts.ID FROM wp_posts WHERE 1=1 AND wp_posts.post_type = 'post' AND ((wp_posts.post_status = 'publish')) ORDER BY wp_posts.post_date DESC LIMIT 0, 10
read | - | - | found_rows() | SELECT FOUND_ROWS()
read | - | shop.wp_posts | - | SELECT wp_posts.* FROM wp_posts WHERE ID IN (1,2,3)
read | - | shop.wp_term_taxonomy, shop.wp_terms | - | SELECT t.*, tt.* FROM wp_terms AS t INNER JOIN wp_term_taxonomy AS tt ON t.term_id = tt.term_id WHERE tt.taxonomy IN ('category') ORDER BY t.name ASC
read | - | shop.wp_postmeta | - | SELECT post_id, meta_key, meta_value FROM wp_postmeta WHERE post_id IN (1) ORDER BY meta_id ASC
write | shop.wp_postmeta | - | - | INSERT INTO `wp_postmeta` (`post_id`, `meta_key`, `meta_value`) VALUES (1, '_edit_lock', '1700000000:1')
write | shop.wp_options | - | - | DELETE a, b FROM wp_options a, wp_options b WHERE a.option_name LIKE '\_transient\_%' AND a.option_name NOT LIKE '\_transient\_timeout\_%' AND b.option_name = CONCAT('_transient_timeout_', SUBSTRING(a.option_name, 12)) AND b.option_value < 1700000000
utility | - | - | - | SHOW TABLES LIKE 'wp\_users'
read | - | - | - | SELECT @@SESSION.sql_mode
session | - | - | - | SET SESSION sql_mode='NO_ZERO_IN_DATE,ERROR_FOR_DIVISION_BY_ZERO,NO_ENGINE_SUBSTITUTION'
session | - | - | - | SET NAMES 'utf8mb4' COLLATE 'utf8mb4_unicode_520_ci'
read | - | shop.wp_comments | - | SELECT COUNT(*) FROM wp_comments WHERE comment_approved = '0'
write | shop.wp_posts | - | - | UPDATE `wp_posts` SET `comment_count` = 3 WHERE `ID` = 1
read | - | shop.wp_users | - | SELECT * FROM wp_users WHERE user_login = 'admin' LIMIT 1
read | - | shop.wp_usermeta | - | SELECT user_id, meta_key, meta_value FROM wp_usermeta WHERE user_id IN (1) ORDER BY umeta_id ASC
ddl | shop.wp_users | - | - | CREATE TABLE wp_users (ID bigint(20) unsigned NOT NULL auto_increment, user_login varchar(60) NOT NULL default '', user_pass varchar(255) NOT NULL default '', PRIMARY KEY  (ID), KEY user_login_key (user_login)) DEFAULT CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_520_ci
utility | - | shop.wp_users | - | DESCRIBE wp_users
read | - | shop.wp_options | - | SELECT autoload FROM wp_options WHERE option_name = 'active_plugins'
utility | - | shop.wp_options | - | SHOW FULL COLUMNS FROM `wp_options`
read | - | shop.wp_posts, shop.wp_term_relationships | - | SELECT wp_posts.ID FROM wp_posts LEFT JOIN wp_term_relationships ON (wp_posts.ID = wp_term_relationships.object_id) WHERE 1=1 AND (wp_term_relationships.term_taxonomy_id IN (1)) GROUP BY wp_posts.ID ORDER BY wp_posts.menu_order ASC LIMIT 0, 5
# --- mysqldump output and the mariadb client ---
session | - | - | - | /*!40101 SET @OLD_CHARACTER_SET_CLIENT=@@CHARACTER_SET_CLIENT */
session | - | - | - | /*!40101 SET NAMES utf8mb4 */
session | - | - | - | /*!40014 SET @OLD_UNIQUE_CHECKS=@@UNIQUE_CHECKS, UNIQUE_CHECKS=0 */
ddl | shop.t | - | - | DROP TABLE IF EXISTS `t`
ddl | shop.t | - | - | CREATE TABLE `t` (`id` int(11) NOT NULL AUTO_INCREMENT, `name` varchar(64) DEFAULT NULL, PRIMARY KEY (`id`)) ENGINE=InnoDB AUTO_INCREMENT=3 DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_general_ci
utility | - | shop.t | - | LOCK TABLES `t` WRITE
ddl | shop.t | - | - | /*!40000 ALTER TABLE `t` DISABLE KEYS */
write | shop.t | - | - | INSERT INTO `t` VALUES (1,'a'),(2,'b\'c')
utility | - | - | - | UNLOCK TABLES
session | - | - | - | USE `shop`
ddl | - | - | - | CREATE DATABASE /*!32312 IF NOT EXISTS*/ `shop` /*!40100 DEFAULT CHARACTER SET utf8mb4 */
ddl | shop.t | - | - | /*!50003 CREATE*/ /*!50017 DEFINER=`root`@`localhost`*/ /*!50003 TRIGGER trg BEFORE INSERT ON t FOR EACH ROW SET NEW.name = UPPER(NEW.name) */
# --- MySQL's own forms: REPLACE, INSERT … SET / SELECT, LIMIT in writes ---
write | shop.t | - | - | REPLACE INTO t (a) VALUES (1)
write | shop.t | shop.u | - | REPLACE INTO t SELECT * FROM u
write | shop.t | - | - | INSERT INTO t SET a = 1, b = 2
write | shop.t | - | - | INSERT LOW_PRIORITY INTO t (a) VALUES (1)
write | shop.t | shop.u | - | INSERT INTO t (a) SELECT a FROM u ON DUPLICATE KEY UPDATE a = u.a
write | shop.t | shop.t | - | INSERT INTO t SELECT * FROM t
write | archive.orders | shop.orders | - | INSERT INTO archive.orders SELECT * FROM orders WHERE created_at < '2020-01-01'
write | shop.t | - | - | UPDATE LOW_PRIORITY IGNORE t SET a = 1
write | shop.t | - | - | UPDATE IGNORE t SET a = 1
write | shop.t | - | - | DELETE LOW_PRIORITY QUICK IGNORE FROM t WHERE a = 1
write | shop.t | - | - | DELETE IGNORE FROM t WHERE a = 1
write | shop.t | - | - | DELETE QUICK FROM t WHERE a = 1
write | shop.t1 | shop.t2 | - | DELETE IGNORE t1 FROM t1 JOIN t2 ON t1.id = t2.id
write | shop.t | shop.u | - | UPDATE IGNORE t JOIN u ON t.id = u.id SET t.a = u.a
write | shop.t | - | - | DELETE FROM t WHERE a = 1 ORDER BY id LIMIT 10
write | shop.t | - | LIMIT without ORDER BY | DELETE FROM t WHERE a = 1 LIMIT 10
write | shop.t | - | - | UPDATE t SET a = 1 ORDER BY id LIMIT 10
# --- multi-table UPDATE and DELETE ---
write | shop.t1, shop.t2 | - | - | UPDATE t1, t2 SET t1.a = 1, t2.b = 2 WHERE t1.id = t2.id
write | shop.t1 | shop.t2 | - | UPDATE t1 JOIN t2 ON t1.id = t2.id SET t1.a = t2.b
write | shop.t1, shop.t2 | - | - | UPDATE t1 JOIN t2 ON t1.id = t2.id SET a = 1
write | other.t1 | shop.t2 | - | UPDATE other.t1 JOIN t2 USING (id) SET other.t1.a = t2.b
write | shop.t | shop.t | - | UPDATE t AS a JOIN t AS b ON a.parent = b.id SET a.depth = b.depth + 1
write | shop.items | shop.month | - | UPDATE items, (SELECT id, price FROM month WHERE sold > 0) AS discounted SET items.price = discounted.price WHERE items.id = discounted.id
write | shop.t1, shop.t2 | shop.t3 | - | DELETE t1, t2 FROM t1 INNER JOIN t2 INNER JOIN t3 WHERE t1.id=t2.id AND t2.id=t3.id
write | shop.t1, shop.t2 | shop.t3 | - | DELETE FROM t1, t2 USING t1 INNER JOIN t2 INNER JOIN t3 WHERE t1.id=t2.id AND t2.id=t3.id
write | shop.t1 | shop.t2 | - | DELETE t1 FROM t1 LEFT JOIN t2 ON t1.id=t2.id WHERE t2.id IS NULL
write | shop.t1 | shop.t2 | - | DELETE a1 FROM t1 AS a1 INNER JOIN t2 AS a2 WHERE a1.id=a2.id
write | shop.t1 | shop.t2 | - | DELETE FROM a1 USING t1 AS a1 INNER JOIN t2 AS a2 WHERE a1.id=a2.id
write | other.t1 | shop.t2 | - | DELETE other.t1 FROM other.t1 JOIN t2 ON other.t1.id = t2.id
# --- LOAD DATA (sqlparser cannot parse it: found from its words) ---
write | shop.t | - | - | LOAD DATA LOCAL INFILE '/tmp/x.csv' INTO TABLE t FIELDS TERMINATED BY ',' ENCLOSED BY '"' LINES TERMINATED BY '\n' IGNORE 1 LINES (a, b)
write | other.t | - | - | LOAD DATA INFILE '/var/lib/mysql-files/x.csv' REPLACE INTO TABLE other.t
write | shop.t | - | - | LOAD DATA CONCURRENT LOCAL INFILE 'x.csv' IGNORE INTO TABLE `t` CHARACTER SET utf8mb4
write | shop.t | - | - | LOAD XML LOCAL INFILE 'x.xml' INTO TABLE t ROWS IDENTIFIED BY '<row>'
# --- stored procedures and functions (writes read from their bodies; see catalog()) ---
write | shop.customers, shop.orders | - | shop.place_order() | CALL place_order(1, 99.5)
write | shop.customers, shop.orders | - | shop.place_order() | CALL shop.place_order(1, 99.5)
write | shop.customers, shop.orders | - | shop.place_order() | CALL `shop`.`Place_Order`(1, 99.5)
write | archive.orders, shop.orders | - | shop.archive_orders() | CALL archive_orders(30)
write | shop.audit_log, shop.customers, shop.orders | - | shop.checkout() | CALL checkout(1, 2)
write | shop.tree | - | shop.rebuild_tree() | CALL rebuild_tree(1)
read | - | - | - | SELECT order_total(1)
write | shop.counters | - | shop.next_invoice_no() | SELECT next_invoice_no()
write | shop.counters, shop.invoices | - | shop.next_invoice_no() | INSERT INTO invoices (no) VALUES (next_invoice_no())
utility | - | - | - | CALL report_only()
unknown | - | - | shop.run_sql() | CALL run_sql('DELETE FROM orders')
unknown | - | - | shop.hidden() | CALL hidden()
unknown | - | - | - | CALL nosuch()
unknown | - | - | - | CALL now()
# --- transaction control (also prepared: COM_STMT_PREPARE accepts these) ---
transaction | - | - | - | START TRANSACTION
transaction | - | - | - | START TRANSACTION READ ONLY
transaction | - | - | - | START TRANSACTION WITH CONSISTENT SNAPSHOT
transaction | - | - | - | BEGIN WORK
transaction | - | - | - | COMMIT WORK
transaction | - | - | - | COMMIT AND CHAIN
transaction | - | - | - | COMMIT RELEASE
transaction | - | - | - | ROLLBACK AND NO CHAIN
transaction | - | - | - | ROLLBACK NO RELEASE
transaction | - | - | - | ROLLBACK WORK TO SAVEPOINT s1
transaction | - | - | - | ROLLBACK TO s1
transaction | - | - | - | XA BEGIN X'0a0b', 'b', 3 JOIN
transaction | - | - | - | XA END 'x' SUSPEND FOR MIGRATE
transaction | - | - | - | XA COMMIT 'x' ONE PHASE
# --- DDL ---
ddl | shop.t2 | shop.t1 | - | CREATE TABLE t2 AS SELECT * FROM t1
ddl | shop.t2 | shop.t1 | - | CREATE TABLE t2 SELECT * FROM t1
ddl | shop.t2 | shop.t1 | - | CREATE TABLE t2 LIKE t1
ddl | - | - | - | CREATE TEMPORARY TABLE tmp_totals (id int, total decimal(10,2))
ddl | - | shop.orders | - | CREATE TEMPORARY TABLE tmp_totals AS SELECT customer_id, SUM(total) AS total FROM orders GROUP BY customer_id
ddl | - | - | - | DROP TEMPORARY TABLE IF EXISTS tmp_totals
ddl | shop.t | - | - | DROP INDEX i ON t
ddl | shop.a, shop.b, shop.c, shop.d | - | - | RENAME TABLE a TO b, c TO d
ddl | shop.t, shop.u | - | - | ALTER TABLE t RENAME TO u
ddl | shop.t | - | - | ALTER TABLE t ENGINE = InnoDB
ddl | shop.t | - | - | ALTER TABLE t MODIFY COLUMN a bigint
ddl | shop.t | - | - | ALTER TABLE t CHANGE a b int
ddl | shop.t | - | - | ALTER TABLE `t` ADD COLUMN `x` int NOT NULL DEFAULT 0 AFTER `y`, ADD INDEX `ix` (`x`)
ddl | shop.t | - | - | ALTER TABLE t ADD FULLTEXT INDEX ft (a)
ddl | shop.t | - | - | CREATE FULLTEXT INDEX ft ON t (body)
ddl | - | - | - | CREATE DATABASE IF NOT EXISTS shop2
ddl | - | - | - | DROP DATABASE shop2
ddl | - | - | - | CREATE USER 'app'@'%' IDENTIFIED BY 'secret'
ddl | - | - | - | GRANT SELECT, INSERT ON shop.* TO 'app'@'%'
ddl | shop.t | - | - | CREATE TRIGGER trg BEFORE INSERT ON t FOR EACH ROW SET NEW.created = NOW()
ddl | - | - | - | CREATE PROCEDURE p() BEGIN INSERT INTO t VALUES (1); UPDATE u SET a = 1; END
ddl | - | - | - | CREATE DEFINER=`root`@`localhost` PROCEDURE p2(IN x INT) MODIFIES SQL DATA BEGIN DECLARE n INT DEFAULT 0; WHILE n < x DO INSERT INTO t VALUES (n); SET n = n + 1; END WHILE; END
ddl | - | - | - | CREATE FUNCTION f(x INT) RETURNS INT DETERMINISTIC RETURN x + 1
ddl | shop.v | shop.t | - | CREATE VIEW v AS SELECT * FROM t
ddl | - | - | - | DROP PROCEDURE IF EXISTS p
ddl | - | - | - | CREATE EVENT e ON SCHEDULE EVERY 1 HOUR DO DELETE FROM sessions WHERE expires < NOW()
ddl | shop.order_seq | - | - | CREATE SEQUENCE order_seq START WITH 1 INCREMENT BY 1
write | shop.t | - | - | TRUNCATE TABLE t
write | shop.t | - | - | TRUNCATE t
# --- utility, session and DO ---
utility | - | shop.t | - | OPTIMIZE TABLE t
utility | - | shop.t | - | ANALYZE TABLE t
utility | - | shop.a, shop.b | - | CHECK TABLE a, b
utility | - | shop.t | - | REPAIR NO_WRITE_TO_BINLOG TABLE t
utility | - | - | - | FLUSH PRIVILEGES
utility | - | - | - | KILL QUERY 5
utility | - | - | - | KILL 5
utility | - | - | - | SHOW ENGINES
utility | - | - | - | SHOW GRANTS
utility | - | - | - | SHOW INDEX FROM t
utility | - | - | - | SHOW TABLE STATUS LIKE 't'
utility | - | - | - | SHOW MASTER STATUS
utility | - | - | - | SHOW FULL PROCESSLIST
utility | - | - | - | SHOW DATABASES
utility | - | shop.t | - | DESC t
utility | - | shop.t | - | EXPLAIN SELECT * FROM t
utility | - | shop.t | - | EXPLAIN UPDATE t SET a = 1
utility | - | - | - | PREPARE s FROM 'UPDATE t SET a = 1'
unknown | - | - | - | EXECUTE s USING @a
utility | - | - | - | DEALLOCATE PREPARE s
utility | - | shop.t | - | HANDLER t OPEN
read | - | - | - | DO RELEASE_LOCK('x')
read | - | - | - | DO SLEEP(1)
session | - | - | - | SET @x = 1
session | - | shop.t | - | SET @n := (SELECT COUNT(*) FROM t)
session | - | - | - | SET GLOBAL max_connections = 1000
session | - | - | - | SET sql_mode = 'ANSI_QUOTES'
session | - | - | - | SET search_path = other
read | - | information_schema."ROUTINES" | - | SELECT ROUTINE_NAME FROM information_schema.ROUTINES WHERE ROUTINE_SCHEMA = 'shop'
read | - | shop.t | - | SELECT a INTO @x FROM t
read | - | shop.t | - | SELECT * FROM t INTO OUTFILE '/tmp/x' FIELDS TERMINATED BY ','
read | - | shop.t | - | SELECT * INTO OUTFILE '/tmp/x' FROM t WHERE a > 1
read | - | shop.t | - | SELECT * FROM t WHERE MATCH(a) AGAINST('x' IN BOOLEAN MODE)
read | - | shop.t1, shop.t2 | - | SELECT * FROM t1 STRAIGHT_JOIN t2 ON t1.a = t2.a
read | - | shop.t | - | SELECT JSON_EXTRACT(a, '$.x'), a->'$.x', a->>'$.x' FROM t
read | - | shop.t | - | SELECT DATE_FORMAT(created, '%Y-%m'), IFNULL(a, 0), IF(b > 0, 'y', 'n'), GROUP_CONCAT(c SEPARATOR ',') FROM t GROUP BY 1 WITH ROLLUP
read | - | shop.t | - | SELECT * FROM t FORCE INDEX (i) WHERE a = 1
# --- MariaDB sequences and non-deterministic functions ---
write | shop.order_seq | - | nextval() | SELECT NEXTVAL(order_seq)
write | shop.order_seq, shop.orders | - | nextval() | INSERT INTO orders (id) VALUES (NEXTVAL(order_seq))
read | - | - | lastval() | SELECT LASTVAL(order_seq)
write | shop.t | - | now() | INSERT INTO t (created) VALUES (NOW())
write | shop.t | - | rand() | UPDATE t SET r = RAND()
write | shop.t | - | uuid() | INSERT INTO t (id) VALUES (UUID())
write | shop.t | - | sysdate() | UPDATE t SET seen = SYSDATE() WHERE id = 1
write | shop.t | - | current_timestamp | UPDATE t SET u = CURRENT_TIMESTAMP
write | shop.t | - | - | INSERT INTO t (ts) VALUES (UNIX_TIMESTAMP('2024-01-01 00:00:00'))
write | shop.t | - | unix_timestamp() | INSERT INTO t (ts) VALUES (UNIX_TIMESTAMP())
write | shop.t2 | - | last_insert_id() | INSERT INTO t2 (parent) VALUES (LAST_INSERT_ID())
write | shop.t | - | uuid_short(), utc_timestamp() | INSERT INTO t VALUES (UUID_SHORT(), UTC_TIMESTAMP())
# --- quoting and case ---
write | shop."Order Items" | - | - | UPDATE `Order Items` SET qty = 1
write | shop."a.b" | - | - | DELETE FROM `a.b`
write | "my-db".t | - | - | INSERT INTO `my-db`.t VALUES (1)
write | shop."Orders" | - | - | UPDATE Orders SET paid = 1
write | shop."we`ird" | - | - | DELETE FROM `we``ird`
read | - | shop.t | - | SELECT "abc", 'it''s', 'it\'s' FROM t
read | - | shop.t | - | SELECT 1 FROM t # a comment
write | shop.t | - | - | /* comment */ UPDATE t SET a = 1
# --- unknown: the policy's `unknown` decides ---
unknown | - | - | - | SELEC 1
unknown | - | - | - | SELECT my_func(1)
unknown | - | - | - | BEGIN NOT ATOMIC UPDATE t SET a = 1; END
unknown | - | - | - | BINLOG 'Mi9xWw8BAAAA'
unknown | - | - | - | SELECT * FROM t WHERE a = 'unterminated
unknown | - | shop.t | - | SELECT other.f(a) FROM t
"#;

/// The stored routines of `shop`, as `information_schema.ROUTINES` lists them.
fn routines() -> Vec<Routine> {
    let r = |name: &str, deterministic: bool, body: Option<&str>| Routine {
        schema: "shop".into(),
        name: name.into(),
        deterministic,
        body: body.map(Into::into),
        sql_mode: "STRICT_TRANS_TABLES,NO_ENGINE_SUBSTITUTION".into(),
    };
    vec![
        r(
            "place_order",
            false,
            Some("BEGIN INSERT INTO orders (customer_id, total) VALUES (p_customer, p_total); UPDATE customers SET order_count = order_count + 1 WHERE id = p_customer; END"),
        ),
        r(
            "archive_orders",
            false,
            Some("BEGIN DECLARE n INT DEFAULT 0; IF p_days > 0 THEN INSERT INTO archive.orders SELECT * FROM orders WHERE created_at < NOW() - INTERVAL p_days DAY; DELETE FROM orders WHERE created_at < NOW() - INTERVAL p_days DAY; END IF; END"),
        ),
        // Calls two others; listed before them (order does not matter).
        r("checkout", false, Some("BEGIN CALL place_order(p_customer, 0); CALL log_event('checkout'); END")),
        r("log_event", false, Some("INSERT INTO audit_log (event, at) VALUES (p_event, NOW())")),
        r(
            "rebuild_tree",
            false,
            Some("BEGIN DECLARE CONTINUE HANDLER FOR NOT FOUND SET @done = 1; INSERT INTO tree (parent) VALUES (p_id) ON DUPLICATE KEY UPDATE parent = p_id; IF p_id > 1 THEN CALL rebuild_tree(p_id - 1); END IF; END"),
        ),
        r("run_sql", false, Some("BEGIN SET @s = p_sql; PREPARE st FROM @s; EXECUTE st; DEALLOCATE PREPARE st; END")),
        r("order_total", true, Some("RETURN (SELECT SUM(total) FROM orders WHERE customer_id = p_id)")),
        r(
            "next_invoice_no",
            false,
            Some("BEGIN UPDATE counters SET n = LAST_INSERT_ID(n + 1) WHERE name = 'invoice'; RETURN LAST_INSERT_ID(); END"),
        ),
        r("report_only", true, Some("BEGIN SELECT customer_id, SUM(total) FROM orders GROUP BY customer_id FOR UPDATE; END")),
        r("hidden", false, None),
    ]
}

fn catalog() -> Catalog {
    let mut c = Catalog::new();
    add_routines(&mut c, &routines());
    c
}

fn shop() -> SearchPath {
    SearchPath::database(Some("shop"))
}

fn list(field: &str) -> Vec<String> {
    if field.trim() == "-" {
        return Vec::new();
    }
    field.trim().split(", ").map(str::to_owned).collect()
}

fn names(ts: &[TableName]) -> Vec<String> {
    ts.iter().map(ToString::to_string).collect()
}

fn records() -> impl Iterator<Item = [&'static str; 5]> {
    CORPUS.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).map(|line| {
        let fields: Vec<&str> = line.splitn(5, " | ").collect();
        <[&str; 5]>::try_from(fields).unwrap_or_else(|_| panic!("bad corpus line: {line}"))
    })
}

#[test]
fn corpus() {
    let catalog = catalog();
    let path = shop();
    let mut failures = Vec::new();
    let mut count = 0;
    for [kind, writes, reads, nondet, sql] in records() {
        count += 1;
        let c = classify(Dialect::MySql, sql, &path, &catalog);
        let Some(s) = c.statements.first() else {
            failures.push(format!("{sql}\n  no statement"));
            continue;
        };
        let (mut got_writes, mut want_writes) = (names(&s.writes), list(writes));
        got_writes.sort();
        want_writes.sort();
        let (mut got_reads, mut want_reads) = (names(&s.reads), list(reads));
        got_reads.sort();
        want_reads.sort();
        let ok = c.statements.len() == 1
            && s.kind.name() == kind.trim()
            && got_writes == want_writes
            && got_reads == want_reads
            && s.nondeterministic == list(nondet);
        if !ok {
            failures.push(format!(
                "{sql}\n  want {kind} | {want_writes:?} | {want_reads:?} | {:?}\n  got  {} | {got_writes:?} | {got_reads:?} | {:?} ({} statements) {:?}",
                list(nondet),
                s.kind.name(),
                s.nondeterministic,
                c.statements.len(),
                s.kind
            ));
        }
    }
    assert!(count >= 200, "the corpus has {count} statements; keep at least 200");
    assert!(failures.is_empty(), "{} of {count} statements misclassified:\n{}", failures.len(), failures.join("\n"));
}

fn one(sql: &str, path: &SearchPath) -> capgate::classify::StatementClass {
    let c = classify(Dialect::MySql, sql, path, &catalog());
    assert_eq!(c.statements.len(), 1, "{sql}: {c:?}");
    c.statements.into_iter().next().unwrap_or_else(|| panic!("{sql}"))
}

/// The same text is cut into other statements under NO_BACKSLASH_ESCAPES, and `"…"` names a
/// table under ANSI_QUOTES: the classifier reads it as the server does.
#[test]
fn sql_mode_changes_what_the_text_says() {
    let sql = r"INSERT INTO log VALUES ('C:\'); DELETE FROM accounts; SELECT 1 -- ')";
    let kinds = |mode: SqlMode| -> Vec<(String, Vec<String>)> {
        classify(Dialect::MySql, sql, &shop().with_sql_mode(mode), &catalog())
            .statements
            .iter()
            .map(|s| (s.kind.name().to_owned(), names(&s.writes)))
            .collect()
    };
    // Backslash escapes (the default): one INSERT whose string runs to the last quote.
    assert_eq!(kinds(SqlMode::default()), [("write".to_owned(), vec!["shop.log".to_owned()])]);
    let plain = SqlMode { no_backslash_escapes: true, ..SqlMode::default() };
    assert_eq!(
        kinds(plain),
        [
            ("write".to_owned(), vec!["shop.log".to_owned()]),
            ("write".to_owned(), vec!["shop.accounts".to_owned()]),
            ("read".to_owned(), vec![]),
        ]
    );

    let ansi = SqlMode::from_sql_mode("ANSI");
    let s = one(r#"UPDATE "orders" SET "paid" = 1 WHERE "id" = 7"#, &shop().with_sql_mode(ansi));
    assert_eq!((s.kind, names(&s.writes)), (Kind::Write, vec!["shop.orders".to_owned()]));
    let s = one(r#"SELECT * FROM "Cart Items" JOIN `Orders` USING (id)"#, &shop().with_sql_mode(ansi));
    assert_eq!(names(&s.reads), [r#"shop."Cart Items""#, r#"shop."Orders""#]);
    // Without ANSI_QUOTES `"…"` is a string.
    let s = one(r#"SELECT "orders" FROM t"#, &shop());
    assert_eq!(names(&s.reads), ["shop.t"]);
    // Both at once, and the corpus under ANSI_QUOTES where it has no double quotes.
    let both = SqlMode { ansi_quotes: true, no_backslash_escapes: true };
    let s = one(r#"INSERT INTO "t" VALUES ('a\')"#, &shop().with_sql_mode(both));
    assert_eq!(names(&s.writes), ["shop.t"]);
    for [kind, writes, _, _, sql] in records().filter(|r| !r[4].contains('"') && !r[4].contains('\\')) {
        let c = classify(Dialect::MySql, sql, &shop().with_sql_mode(both), &catalog());
        let mut got = names(&c.statements[0].writes);
        let mut want = list(writes);
        got.sort();
        want.sort();
        assert_eq!((c.statements[0].kind.name(), got), (kind, want), "{sql}");
    }
}

/// The current database is what unqualified names resolve to; without one they cannot be
/// resolved (the server answers error 1046), qualified ones still are.
#[test]
fn current_database_resolves_unqualified_names() {
    let s = one("UPDATE orders SET paid = 1", &SearchPath::database(Some("Shop_EU")));
    assert_eq!(s.writes, [TableName::new("Shop_EU", "orders")]);
    let none = SearchPath::database(None);
    let s = one("UPDATE orders SET paid = 1", &none);
    let Kind::Unknown(reason) = &s.kind else { panic!("{s:?}") };
    assert!(reason.contains("no database selected") && reason.contains("orders"), "{reason}");
    let s = one("UPDATE shop.orders JOIN shop.customers c ON c.id = orders.customer_id SET orders.paid = 1", &none);
    assert_eq!((s.kind, names(&s.writes), names(&s.reads)), (Kind::Write, vec!["shop.orders".into()], vec!["shop.customers".into()]));
    // USE reports the new database for the front end to follow.
    assert_eq!(
        one("USE `Shop_EU`", &none).kind,
        Kind::Session(SessionChange::SearchPath { schemas: vec!["Shop_EU".into()], local: false })
    );
}

/// The transaction control a front end tracks, with what it needs of each: savepoint names
/// and XA ids.
#[test]
fn transaction_control_details() {
    let tx = |sql: &str| one(sql, &shop()).kind;
    assert_eq!(tx("BEGIN"), Kind::Transaction(TxControl::Begin));
    assert_eq!(tx("START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY"), Kind::Transaction(TxControl::Begin));
    assert_eq!(tx("COMMIT AND NO CHAIN NO RELEASE"), Kind::Transaction(TxControl::Commit));
    assert_eq!(tx("SAVEPOINT `Sp 1`"), Kind::Transaction(TxControl::Savepoint("Sp 1".into())));
    assert_eq!(tx("ROLLBACK WORK TO SAVEPOINT sp2"), Kind::Transaction(TxControl::RollbackTo("sp2".into())));
    assert_eq!(tx("XA START 'g1'"), Kind::Transaction(TxControl::XaStart("'g1'".into())));
    assert_eq!(tx("xa begin 'g1','b1'"), Kind::Transaction(TxControl::XaStart("'g1','b1'".into())));
    assert_eq!(tx("XA END 'g1'"), Kind::Transaction(TxControl::XaEnd("'g1'".into())));
    assert_eq!(tx("XA PREPARE X'6731',X'',1"), Kind::Transaction(TxControl::PrepareTransaction("X'6731',X'',1".into())));
    assert_eq!(tx("XA COMMIT 'it''s'"), Kind::Transaction(TxControl::CommitPrepared("'it''s'".into())));
    assert_eq!(tx("XA COMMIT 'g1' ONE PHASE"), Kind::Transaction(TxControl::Commit));
    assert_eq!(tx("XA ROLLBACK 'g1'"), Kind::Transaction(TxControl::RollbackPrepared("'g1'".into())));
    assert!(matches!(tx("XA START"), Kind::Unknown(_)));
}

/// A multi-statement COM_QUERY: each statement classified, a stored program's body kept whole.
#[test]
fn several_statements_and_compound_bodies() {
    let c = classify(
        Dialect::MySql,
        "SET autocommit=0; UPDATE t1, t2 SET t2.a = t1.a WHERE t1.id = t2.id; LOAD DATA LOCAL INFILE 'f' INTO TABLE t3; XA START 'g'; COMMIT",
        &shop(),
        &catalog(),
    );
    let got: Vec<(&str, Vec<String>)> = c.statements.iter().map(|s| (s.kind.name(), names(&s.writes))).collect();
    assert_eq!(
        got,
        [
            ("session", vec![]),
            ("write", vec!["shop.t2".to_owned()]),
            ("write", vec!["shop.t3".to_owned()]),
            ("transaction", vec![]),
            ("transaction", vec![]),
        ]
    );
    let c = classify(
        Dialect::MySql,
        "CREATE TRIGGER audit AFTER UPDATE ON accounts FOR EACH ROW BEGIN INSERT INTO audit VALUES (OLD.id); IF NEW.x > 0 THEN DELETE FROM q; END IF; END",
        &shop(),
        &catalog(),
    );
    assert_eq!(c.statements.len(), 1, "{c:?}");
    assert_eq!((c.statements[0].kind.name(), names(&c.statements[0].writes)), ("ddl", vec!["shop.accounts".to_owned()]));
}

/// What an unknown CALL or function says, so a DBA knows what to put in the policy.
#[test]
fn unknown_routines_say_what_to_do() {
    let reason = |sql: &str| match one(sql, &shop()).kind {
        Kind::Unknown(r) => r,
        k => panic!("{sql}: {k:?}"),
    };
    let r = reason("CALL nosuch(1)");
    assert!(r.contains("shop.nosuch()") && r.contains("[[function]]"), "{r}");
    let r = reason("CALL run_sql('x')");
    assert!(r.contains("procedure shop.run_sql()") && r.contains("may write any table"), "{r}");
    let r = reason("SELECT my_func(1)");
    assert!(r.contains("my_func()") && r.contains("not a known built-in"), "{r}");
    // A complete catalog (every routine of the primary loaded): unlisted names do not exist.
    let mut complete = catalog();
    complete.set_complete(true);
    let c = classify(Dialect::MySql, "SELECT my_func(1)", &shop(), &complete);
    assert_eq!(c.statements[0].kind, Kind::Read);
}

/// Arbitrary input never panics in any sql_mode: random bytes, random MySQL tokens, and
/// mutations of the corpus. Bounded and seeded; the seed is printed.
#[test]
fn never_panics_on_arbitrary_input() {
    let seed: u64 = std::env::var("CAPGATE_FUZZ_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0x3c1a_55e5_a11d);
    println!("classify fuzz seed: {seed} (set CAPGATE_FUZZ_SEED to repeat)");
    let mut state = seed;
    let mut next = move || {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        state.wrapping_mul(0x2545_f491_4f6c_dd1d)
    };
    const WORDS: &[&str] = &[
        "SELECT",
        "INSERT",
        "REPLACE",
        "INTO",
        "UPDATE",
        "DELETE",
        "FROM",
        "USING",
        "JOIN",
        "SET",
        "VALUES",
        "ON DUPLICATE KEY UPDATE",
        "(",
        ")",
        ",",
        ";",
        "'",
        "\"",
        "`",
        "\\",
        "?",
        "t",
        "`T`",
        "db.t",
        "a",
        "LOAD DATA",
        "INFILE",
        "INTO TABLE",
        "XA",
        "START",
        "COMMIT",
        "CALL",
        "p(",
        "DO",
        "BEGIN",
        "END",
        "IF",
        "THEN",
        "LOCK IN SHARE MODE",
        "INTO OUTFILE",
        "/*!",
        "*/",
        "#",
        "-- ",
        "CREATE",
        "TRIGGER",
        "PROCEDURE",
        "ON",
        "NEXTVAL(",
        "LIMIT 1",
        "X'",
        "@",
        "@@",
    ];
    let corpus: Vec<&str> = records().map(|r| r[4]).collect();
    let catalog = catalog();
    let modes = [SqlMode::default(), SqlMode { ansi_quotes: true, no_backslash_escapes: true }];
    for i in 0..2000 {
        let sql: String = match i % 3 {
            0 => (0..(next() % 200)).map(|_| char::from_u32((next() % 0x2FF) as u32).unwrap_or('x')).collect(),
            1 => (0..(next() % 30)).map(|_| WORDS[(next() % WORDS.len() as u64) as usize]).collect::<Vec<_>>().join(" "),
            _ => {
                let base = corpus[(next() % corpus.len() as u64) as usize];
                let cut = (next() as usize) % (base.len() + 1);
                let cut = (0..=cut).rev().find(|c| base.is_char_boundary(*c)).unwrap_or(0);
                format!("{}{}", &base[..cut], &base[cut..].chars().rev().collect::<String>())
            }
        };
        for mode in modes {
            let _ = classify(Dialect::MySql, &sql, &shop().with_sql_mode(mode), &catalog);
        }
    }
}
