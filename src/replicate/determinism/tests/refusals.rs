//! Determinism tests, continued: every refusal names the function (or construct) and the
//! table; what the policy allows is kept and reported; MySQL pins time with SET TIMESTAMP.

use super::*;

// --- refusals ---

#[test]
fn random_is_refused_with_the_function_the_table_and_the_remedy() {
    let e = refused("UPDATE plain SET x = random() WHERE id = 1");
    assert_eq!(e.function_or_construct, "random()");
    assert_eq!(e.table, Some(TableName::new("public", "plain")));
    let msg = e.to_string();
    assert!(msg.contains("random()") && msg.contains("public.plain"), "{msg}");
    assert!(msg.contains("nondeterministic = \"allow\"") && msg.contains("parameter"), "{msg}");
}

#[test]
fn gen_random_uuid_is_refused() {
    assert_eq!(refused("INSERT INTO plain (id) VALUES (gen_random_uuid())").function_or_construct, "gen_random_uuid()");
}

#[test]
fn uuid_generate_in_any_schema_is_refused() {
    assert_eq!(refused("INSERT INTO plain (id) VALUES (uuid_generate_v4())").function_or_construct, "uuid_generate_v4()");
    assert_eq!(refused("INSERT INTO plain (id) VALUES (ext.uuid_generate_v1())").function_or_construct, "ext.uuid_generate_v1()");
}

#[test]
fn volatile_user_functions_are_refused_and_stable_ones_kept() {
    let e = refused("UPDATE plain SET code = next_code() WHERE id = 1");
    assert_eq!(e.function_or_construct, "public.next_code()");
    let sql = "UPDATE plain SET price = price_of(id)";
    assert_eq!(det(sql).sql, sql);
}

#[test]
fn transaction_ids_and_backend_facts_are_refused() {
    assert_eq!(refused("INSERT INTO plain (x) VALUES (txid_current())").function_or_construct, "txid_current()");
    assert_eq!(refused("INSERT INTO plain (x) VALUES (pg_backend_pid())").function_or_construct, "pg_backend_pid()");
}

#[test]
fn explicit_sequence_calls_are_refused() {
    assert_eq!(refused("INSERT INTO plain (id) VALUES (nextval('plain_id_seq'))").function_or_construct, "nextval()");
    let e = refused("SELECT setval('plain_id_seq', 10)");
    assert_eq!(e.function_or_construct, "setval()");
    assert_eq!(e.table, Some(TableName::new("public", "plain_id_seq")));
}

#[test]
fn limit_without_order_by_in_a_write_is_refused() {
    let e = refused("DELETE FROM plain WHERE id IN (SELECT id FROM plain LIMIT 10)");
    assert_eq!(e.function_or_construct, "LIMIT without ORDER BY in a write");
    assert!(e.to_string().contains("public.plain"));
}

#[test]
fn mysql_update_limit_without_order_by_is_refused() {
    let r = run_with("UPDATE plain SET x = 1 LIMIT 5", Dialect::MySql, &Pins::at(instant()), &|_| false);
    let e = r.err().unwrap_or_else(|| panic!("accepted"));
    assert_eq!(e.function_or_construct, "UPDATE … LIMIT without ORDER BY");
}

#[test]
fn a_volatile_default_that_is_not_a_time_function_is_refused() {
    let e = refused("INSERT INTO tokens (owner) VALUES ('ann')");
    assert_eq!(e.function_or_construct, "gen_random_uuid() (the default of public.tokens.token)");
    assert_eq!(e.table, Some(TableName::new("public", "tokens")));
}

#[test]
fn merge_into_a_table_with_generated_defaults_is_refused() {
    let e = refused("MERGE INTO orders o USING plain p ON o.id = p.id WHEN NOT MATCHED THEN INSERT (id) VALUES (p.id)");
    assert!(e.function_or_construct.starts_with("MERGE into a table"), "{e}");
}

#[test]
fn current_user_is_pinned_when_given_and_refused_otherwise() {
    let e = refused("UPDATE plain SET by = current_user");
    assert_eq!(e.function_or_construct, "current_user");
    let pins = Pins { timestamp: instant(), user: Some("ann".into()) };
    let d = run_with("UPDATE plain SET by = current_user", Dialect::Postgres, &pins, &|_| false).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(d.sql, "UPDATE plain SET by = 'ann'::name");
}

#[test]
fn allowed_tables_keep_the_construct_and_report_it() {
    let allow = |t: &TableName| t.name == "plain";
    let d = run_with("UPDATE plain SET x = random(), t = now()", Dialect::Postgres, &Pins::at(instant()), &allow)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(d.sql, format!("UPDATE plain SET x = random(), t = {}", tz()));
    assert_eq!(d.allowed.len(), 1);
    assert_eq!(d.allowed[0].function_or_construct, "random()");
    // Another table is still refused.
    let r = run_with("UPDATE orders SET x = random()", Dialect::Postgres, &Pins::at(instant()), &allow);
    assert!(r.is_err());
}

#[test]
fn mysql_time_functions_ask_for_set_timestamp() {
    let sql = "UPDATE plain SET t = NOW(), d = CURDATE() WHERE id = 1";
    let d = run_with(sql, Dialect::MySql, &Pins::at(instant()), &|_| false).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(d.sql, sql);
    assert!(d.set_timestamp);
    assert_eq!(unix_seconds(instant()), "1795593600.123456");
    let r = run_with("UPDATE plain SET x = RAND()", Dialect::MySql, &Pins::at(instant()), &|_| false);
    assert_eq!(r.err().map(|e| e.function_or_construct), Some("rand()".to_owned()));
}

#[test]
fn unparsed_statements_are_left_to_the_policys_unknown() {
    // sqlparser cannot parse WHERE CURRENT OF: classification says `unknown`, and the
    // policy's `unknown` (relay or refuse) decides; the text is not touched.
    for sql in ["UPDATE plain SET x = random() WHERE CURRENT OF c", "DO $$ BEGIN PERFORM 1; END $$"] {
        assert_eq!(det(sql).sql, sql);
    }
}
