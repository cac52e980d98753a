//! Generated keys: pre-allocation on the primary, the rewrite with the values, the replica's
//! sequence advance.

use super::*;

fn key(table: TableName, column: &str, kind: DefaultKind, default: &str, rows: Option<usize>) -> GeneratedKey {
    GeneratedKey { statement: 0, table, column: column.into(), kind, default: default.into(), rows }
}

fn serial(rows: usize) -> GeneratedKey {
    key(TableName::new("public", "orders"), "id", DefaultKind::Sequence, "nextval('orders_id_seq'::regclass)", Some(rows))
}

fn identity(rows: usize) -> GeneratedKey {
    key(TableName::new("public", "events"), "id", DefaultKind::Identity, "", Some(rows))
}

fn pg(sql: &str, keys: &[(GeneratedKey, Vec<i64>)]) -> String {
    with_generated_keys(sql, keys, Dialect::Postgres).unwrap_or_else(|e| panic!("{sql}: {e}"))
}

fn pg_err(sql: &str, keys: &[(GeneratedKey, Vec<i64>)]) -> NotDeterministic {
    match with_generated_keys(sql, keys, Dialect::Postgres) {
        Ok(s) => panic!("accepted: {sql} -> {s}"),
        Err(e) => e,
    }
}

// --- preallocate_sql ---

#[test]
fn preallocation_names_the_sequence_of_a_serial_default() {
    assert_eq!(
        preallocate_sql(&serial(3)).unwrap(),
        "SELECT pg_catalog.nextval('orders_id_seq'::pg_catalog.regclass) FROM pg_catalog.generate_series(1, 3) AS capgate_g(i) ORDER BY capgate_g.i"
    );
}

#[test]
fn preallocation_keeps_schema_qualified_and_quoted_sequence_names() {
    for (default, seq) in [
        ("nextval('app.\"Items_id_seq\"'::regclass)", "'app.\"Items_id_seq\"'"),
        ("nextval('public.\"it''s seq\"'::regclass)", "'public.\"it''s seq\"'"),
        ("pg_catalog.nextval('s'::regclass)", "'s'"),
        ("nextval(('old_seq'::text)::regclass)", "'old_seq'"),
        ("(nextval('s'::regclass))::integer", "'s'"),
        ("nextval('a\\b'::regclass)", "E'a\\\\b'"),
    ] {
        let k = key(TableName::new("app", "Items"), "id", DefaultKind::Sequence, default, Some(1));
        let sql = preallocate_sql(&k).unwrap_or_else(|e| panic!("{default}: {e}"));
        assert!(sql.starts_with(&format!("SELECT pg_catalog.nextval({seq}::pg_catalog.regclass) FROM")), "{default}: {sql}");
    }
}

#[test]
fn preallocation_finds_an_identity_sequence_with_pg_get_serial_sequence() {
    let k = key(TableName::new("App", "Order Items"), "ItemId", DefaultKind::Identity, "", Some(2));
    assert_eq!(
        preallocate_sql(&k).unwrap(),
        "SELECT pg_catalog.nextval(pg_catalog.pg_get_serial_sequence('\"App\".\"Order Items\"', 'ItemId')::pg_catalog.regclass) FROM pg_catalog.generate_series(1, 2) AS capgate_g(i) ORDER BY capgate_g.i"
    );
    let k = key(TableName::new("public", "o\"dd"), "it's", DefaultKind::Identity, "", Some(1));
    assert!(preallocate_sql(&k).unwrap().contains("pg_get_serial_sequence('\"public\".\"o\"\"dd\"', 'it''s')"));
}

#[test]
fn preallocation_refuses_insert_select_and_unreadable_defaults() {
    let mut k = identity(1);
    k.rows = None;
    let e = preallocate_sql(&k).unwrap_err();
    assert!(e.function_or_construct.contains("INSERT … SELECT"), "{e}");
    assert_eq!(e.table, Some(TableName::new("public", "events")));
    assert!(e.to_string().contains("public.events"), "{e}");

    let k = key(TableName::new("public", "orders"), "code", DefaultKind::Sequence, "('ORD-'::text || nextval('codes'::regclass))", Some(1));
    let e = preallocate_sql(&k).unwrap_err();
    assert!(e.function_or_construct.contains("not a plain nextval()"), "{e}");
}

// --- with_generated_keys ---

#[test]
fn an_omitted_key_column_is_added_with_a_value_per_row() {
    assert_eq!(
        pg("INSERT INTO orders (item, created_at) VALUES ('a', $1), ('b', $2), ('c', $3)", &[(serial(3), vec![101, 102, 103])]),
        "INSERT INTO orders (item, created_at, \"id\") VALUES ('a', $1, 101), ('b', $2, 102), ('c', $3, 103)"
    );
}

#[test]
fn explicit_default_cells_are_replaced_and_given_values_kept() {
    assert_eq!(
        pg("INSERT INTO orders (id, item) VALUES (DEFAULT, 'a'), (7, 'b'), (default, $1)", &[(serial(3), vec![-5, 11, 12])]),
        "INSERT INTO orders (id, item) VALUES (-5, 'a'), (7, 'b'), (12, $1)"
    );
}

#[test]
fn identity_columns_get_overriding_system_value() {
    assert_eq!(
        pg("INSERT INTO events (at) VALUES ($1), ($2)", &[(identity(2), vec![1, 2])]),
        "INSERT INTO events (at, \"id\") OVERRIDING SYSTEM VALUE VALUES ($1, 1), ($2, 2)"
    );
    assert_eq!(
        pg("INSERT INTO events (id, at) OVERRIDING SYSTEM VALUE VALUES (DEFAULT, $1)", &[(identity(1), vec![9])]),
        "INSERT INTO events (id, at) OVERRIDING SYSTEM VALUE VALUES (9, $1)"
    );
}

#[test]
fn overriding_user_value_takes_every_identity_value_from_the_sequence() {
    let d = det("INSERT INTO events (id, at, day) OVERRIDING USER VALUE VALUES (1, $1, $2), (2, $3, $4)");
    assert_eq!(d.generated_keys.len(), 1, "{:?}", d.generated_keys);
    assert_eq!(d.generated_keys[0].rows, Some(2));
    let k = d.generated_keys[0].clone();
    assert_eq!(
        pg(&d.sql, &[(k, vec![40, 41])]),
        "INSERT INTO events (id, at, day) OVERRIDING SYSTEM VALUE VALUES (40, $1, $2), (41, $3, $4)"
    );
}

#[test]
fn generated_always_identity_mixed_with_explicit_values_is_refused() {
    let mut k = identity(2);
    k.default = "generated always as identity".into();
    let e = pg_err("INSERT INTO events (id, at) VALUES (DEFAULT, $1), (5, $2)", &[(k.clone(), vec![1, 2])]);
    assert!(e.function_or_construct.contains("GENERATED ALWAYS"), "{e}");
    // All DEFAULT: fine.
    assert_eq!(
        pg("INSERT INTO events (id, at) VALUES (DEFAULT, $1), (DEFAULT, $2)", &[(k, vec![1, 2])]),
        "INSERT INTO events (id, at) OVERRIDING SYSTEM VALUE VALUES (1, $1), (2, $2)"
    );
}

#[test]
fn on_conflict_and_returning_are_kept() {
    assert_eq!(
        pg(
            "INSERT INTO orders AS o (item) VALUES ($1) ON CONFLICT (item) DO UPDATE SET n = o.n + 1 RETURNING id, item",
            &[(serial(1), vec![77])]
        ),
        "INSERT INTO orders AS o (item, \"id\") VALUES ($1, 77) ON CONFLICT(item) DO UPDATE SET n = o.n + 1 RETURNING id, item"
    );
    assert_eq!(
        pg("insert into events (at) values ($1) on conflict do nothing returning *", &[(identity(1), vec![3])]),
        "INSERT INTO events (at, \"id\") OVERRIDING SYSTEM VALUE VALUES ($1, 3) ON CONFLICT DO NOTHING RETURNING *"
    );
}

#[test]
fn default_values_becomes_a_row_of_the_keys() {
    assert_eq!(pg("INSERT INTO orders DEFAULT VALUES", &[(serial(1), vec![5])]), "INSERT INTO orders (\"id\") VALUES (5)");
    assert_eq!(
        pg("INSERT INTO events DEFAULT VALUES RETURNING id", &[(identity(1), vec![6])]),
        "INSERT INTO events (\"id\") OVERRIDING SYSTEM VALUE VALUES (6) RETURNING id"
    );
}

#[test]
fn quoted_mixed_case_and_schema_qualified_names() {
    let k = key(
        TableName::new("App", "Order Items"),
        "ItemId",
        DefaultKind::Sequence,
        "nextval('\"App\".\"Order Items_ItemId_seq\"'::regclass)",
        Some(1),
    );
    assert_eq!(
        pg("INSERT INTO \"App\".\"Order Items\" (\"Name\") VALUES ('x')", &[(k.clone(), vec![1])]),
        "INSERT INTO \"App\".\"Order Items\" (\"Name\", \"ItemId\") VALUES ('x', 1)"
    );
    // A listed column matches by its folded name.
    assert_eq!(
        pg("INSERT INTO \"Order Items\" (\"ItemId\", itemid) VALUES (DEFAULT, DEFAULT)", &[(k.clone(), vec![2])]),
        "INSERT INTO \"Order Items\" (\"ItemId\", itemid) VALUES (2, DEFAULT)"
    );
    // Another schema's table of the same name is not the key's.
    let e = pg_err("INSERT INTO other.\"Order Items\" (\"Name\") VALUES ('x')", &[(k, vec![1])]);
    assert!(e.function_or_construct.contains("does not insert into"), "{e}");
    let k = key(TableName::new("public", "t"), "we\"ird", DefaultKind::Sequence, "nextval('s'::regclass)", Some(1));
    assert_eq!(pg("INSERT INTO t (a) VALUES (1)", &[(k, vec![1])]), "INSERT INTO t (a, \"we\"\"ird\") VALUES (1, 1)");
}

#[test]
fn several_keys_of_one_statement() {
    let mut other = serial(2);
    other.column = "seq_no".into();
    other.default = "nextval('orders_seq_no_seq'::regclass)".into();
    assert_eq!(
        pg("INSERT INTO orders (item) VALUES ('a'), ('b')", &[(serial(2), vec![1, 2]), (other, vec![10, 20])]),
        "INSERT INTO orders (item, \"id\", \"seq_no\") VALUES ('a', 1, 10), ('b', 2, 20)"
    );
}

#[test]
fn an_insert_in_a_data_modifying_cte_is_found() {
    let sql = "WITH n AS (INSERT INTO orders (item, created_at) VALUES ('a', $1) RETURNING id) SELECT id FROM n";
    let d = det(sql);
    assert_eq!(d.generated_keys.len(), 1, "{:?}", d.generated_keys);
    let out = pg(&d.sql, &[(d.generated_keys[0].clone(), vec![8])]);
    assert_eq!(out, "WITH n AS (INSERT INTO orders (item, created_at, \"id\") VALUES ('a', $1, 8) RETURNING id) SELECT id FROM n");
}

#[test]
fn what_cannot_be_given_its_keys_is_refused() {
    let e = pg_err("INSERT INTO orders VALUES (DEFAULT, 'pen', $1)", &[(serial(1), vec![1])]);
    assert!(e.function_or_construct.contains("without a column list"), "{e}");
    assert_eq!(e.table, Some(TableName::new("public", "orders")));
    let e = pg_err("INSERT INTO orders (item) SELECT note FROM plain", &[(serial(1), vec![1])]);
    assert!(e.function_or_construct.contains("INSERT … SELECT"), "{e}");
    let e = pg_err("INSERT INTO orders (item) VALUES ('a'), ('b')", &[(serial(2), vec![1])]);
    assert!(e.function_or_construct.contains("given 1 values for 2 rows"), "{e}");
    let e = pg_err("INSERT INTO plain (item) VALUES ('a')", &[(serial(1), vec![1])]);
    assert!(e.function_or_construct.contains("does not insert into public.orders"), "{e}");
    let e = pg_err("INSERT INTO orders (item VALUES", &[(serial(1), vec![1])]);
    assert!(e.function_or_construct.contains("cannot parse"), "{e}");
    let e = pg_err("INSERT INTO orders (item, note) VALUES ('a')", &[(serial(1), vec![1])]);
    assert!(e.function_or_construct.contains("1 values for 2 columns"), "{e}");
}

#[test]
fn no_keys_leaves_the_statement_alone() {
    let sql = "insert  into orders (id) values (1)";
    assert_eq!(pg(sql, &[]), sql);
}

#[test]
fn mysql_rows_and_set_form() {
    let k = key(TableName::new("shop", "orders"), "id", DefaultKind::Sequence, "auto_increment", Some(2));
    assert_eq!(
        with_generated_keys("INSERT INTO orders (item) VALUES ('a'), ('b')", &[(k.clone(), vec![1, 2])], Dialect::MySql).unwrap(),
        "INSERT INTO orders (item, `id`) VALUES ('a', 1), ('b', 2)"
    );
    let k = GeneratedKey { rows: Some(1), ..k };
    assert_eq!(
        with_generated_keys("INSERT INTO orders SET item = 'a'", &[(k, vec![3])], Dialect::MySql).unwrap(),
        "INSERT INTO orders SET item = 'a', `id` = 3"
    );
}

// --- whole texts ---

#[test]
fn statement_text_picks_a_statement() {
    let sql = "SELECT 1; -- c\n INSERT INTO orders (item) VALUES ('a;b') ;";
    assert_eq!(statement_text(sql, Dialect::Postgres, 0), Some("SELECT 1"));
    assert_eq!(statement_text(sql, Dialect::Postgres, 1), Some("INSERT INTO orders (item) VALUES ('a;b')"));
    assert_eq!(statement_text(sql, Dialect::Postgres, 2), None);
}

#[test]
fn from_make_deterministic_to_the_text_for_both_sides() {
    let sql = "select  1 ;\nINSERT INTO orders (item) VALUES ('a'), ('b');  insert into events (at) values ($1)";
    let d = det(sql);
    assert_eq!(d.generated_keys.len(), 2, "{:?}", d.generated_keys);
    let mut keys = Vec::new();
    let mut next = 100;
    for k in &d.generated_keys {
        let n = k.rows.unwrap();
        preallocate_sql(k).unwrap();
        keys.push((k.clone(), (next..next + n as i64).collect::<Vec<_>>()));
        next += n as i64;
    }
    let text = statement_text(&d.sql, Dialect::Postgres, keys[0].0.statement).unwrap();
    assert!(text.starts_with("INSERT INTO orders"), "{text}");
    let out = apply_generated_keys(&d.sql, &keys, Dialect::Postgres).unwrap();
    let tz = tz();
    assert!(
        out.starts_with(&format!("select  1 ;\nINSERT INTO orders (item, \"created_at\", \"id\") VALUES ('a', {tz}, 100), ('b', {tz}, 101);  INSERT INTO events (at, \"day\", \"id\") OVERRIDING SYSTEM VALUE VALUES ($1, ")),
        "{out}"
    );
    assert!(out.ends_with(", 102)"), "{out}");
    let mut wrong = keys[0].clone();
    wrong.0.statement = 7;
    assert!(apply_generated_keys(&d.sql, &[wrong], Dialect::Postgres).is_err());
}

// --- advance_sequence_sql ---

#[test]
fn the_replica_sequence_only_moves_forward() {
    let cond = "WHERE CASE WHEN q.inc > 0 THEN CASE WHEN q.last IS NULL THEN 42 >= q.start ELSE 42 > q.last END ELSE CASE WHEN q.last IS NULL THEN 42 <= q.start ELSE 42 < q.last END END";
    assert_eq!(
        advance_sequence_sql(&serial(1), 42),
        format!("SELECT pg_catalog.setval(q.seq, 42) FROM (SELECT s.seqrelid::pg_catalog.regclass AS seq, s.seqincrement AS inc, s.seqstart AS start, pg_catalog.pg_sequence_last_value(s.seqrelid) AS last FROM pg_catalog.pg_sequence s WHERE s.seqrelid = 'orders_id_seq'::pg_catalog.regclass) q {cond}")
    );
    let k = key(TableName::new("App", "Events"), "Id", DefaultKind::Identity, "", None);
    let sql = advance_sequence_sql(&k, -3);
    assert!(
        sql.contains("WHERE s.seqrelid = pg_catalog.pg_get_serial_sequence('\"App\".\"Events\"', 'Id')::pg_catalog.regclass) q"),
        "{sql}"
    );
    assert!(sql.starts_with("SELECT pg_catalog.setval(q.seq, -3) FROM"), "{sql}");
    // A default that names no sequence: the column's owned sequence.
    let k = key(TableName::new("public", "t"), "n", DefaultKind::Sequence, "f(nextval('s'))", Some(1));
    assert!(advance_sequence_sql(&k, 1).contains("pg_get_serial_sequence('\"public\".\"t\"', 'n')"));
}
