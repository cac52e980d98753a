-- The compose environment's schema, created on both sites at their first start
-- (replication never creates tables: docs/before-you-replicate.md).
CREATE DATABASE shop;
\connect shop
CREATE TABLE accounts (id int PRIMARY KEY, owner text NOT NULL, balance numeric(12,2) NOT NULL);
CREATE TABLE cart_items (cart_id int, sku text, qty int NOT NULL, PRIMARY KEY (cart_id, sku));
CREATE TABLE page_views (id bigserial PRIMARY KEY, path text NOT NULL, viewed_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE sessions (id text PRIMARY KEY, account_id int, data jsonb);
INSERT INTO accounts VALUES (1, 'alice', 100.00), (2, 'bob', 50.00);
