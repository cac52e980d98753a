//! Statement classification: a cached lookup (what every repeated statement costs on the
//! relay's path), a cold parse of short OLTP statements (pgbench, sysbench), a cold parse of
//! a ~5 KB ORM query, and MySQL statements (sysbench's, ORM's, and ones only the fallback
//! classifies). Targets: cached < 1 µs, cold OLTP p50 < 30 µs.

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion};

use capgate::classify::{classify, Catalog, Classifier, Dialect, SearchPath, SqlMode};

const OLTP: &[(&str, &str)] = &[
    ("pgbench_select", "SELECT abalance FROM pgbench_accounts WHERE aid = $1"),
    ("pgbench_update", "UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2"),
    ("pgbench_insert", "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES ($1, $2, $3, $4, CURRENT_TIMESTAMP)"),
    ("sysbench_range", "SELECT DISTINCT c FROM sbtest1 WHERE id BETWEEN $1 AND $2 ORDER BY c"),
    ("django_get", "SELECT \"auth_user\".\"id\", \"auth_user\".\"username\" FROM \"auth_user\" WHERE \"auth_user\".\"id\" = $1 LIMIT 21"),
];

/// MySQL: sysbench's prepared statements, an ORM's backticks, a multi-table UPDATE, and two
/// statements sqlparser rejects (the comma join and LOAD DATA, classified by the fallback:
/// a failed parse, the tokenizer, a rewrite or the statement's words).
const MYSQL: &[(&str, &str)] = &[
    ("sysbench_point_select", "SELECT c FROM sbtest1 WHERE id=?"),
    ("sysbench_index_update", "UPDATE sbtest1 SET k=k+1 WHERE id=?"),
    ("sysbench_insert", "INSERT INTO sbtest1 (id, k, c, pad) VALUES (?, ?, ?, ?)"),
    ("django_get", "SELECT `auth_user`.`id`, `auth_user`.`username` FROM `auth_user` WHERE `auth_user`.`id` = 1 LIMIT 21"),
    ("upsert", "INSERT INTO `cache` (`key`, `value`) VALUES (?, ?) ON DUPLICATE KEY UPDATE `value` = VALUES(`value`)"),
    ("join_update", "UPDATE `comments` INNER JOIN `posts` ON `posts`.`id` = `comments`.`post_id` SET `comments`.`approved` = 1 WHERE `posts`.`author_id` = ?"),
    ("comma_update_fallback", "UPDATE users, addresses SET addresses.email = users.name WHERE users.id = addresses.user_id"),
    ("load_data_fallback", "LOAD DATA LOCAL INFILE '/tmp/x.csv' INTO TABLE t FIELDS TERMINATED BY ','"),
];

/// A Hibernate/Django-style query of about 5 KB: many qualified columns, joins, a subquery.
fn orm_query() -> String {
    let tables = ["orders", "customers", "order_items", "products", "addresses", "payments"];
    let mut cols = Vec::new();
    for (i, t) in tables.iter().enumerate() {
        for c in [
            "id",
            "created_at",
            "updated_at",
            "status",
            "name",
            "amount",
            "reference",
            "note",
            "owner_id",
            "version",
            "currency",
            "deleted_at",
            "external_id",
            "tenant_id",
            "position",
        ] {
            cols.push(format!("\"{t}\".\"{c}\" AS \"{t}_{c}_{i}\""));
        }
    }
    let mut sql = format!("SELECT {} FROM \"orders\"", cols.join(", "));
    for t in &tables[1..] {
        sql.push_str(&format!(" LEFT OUTER JOIN \"{t}\" ON (\"{t}\".\"owner_id\" = \"orders\".\"id\")"));
    }
    sql.push_str(" WHERE \"orders\".\"status\" IN ($1, $2, $3) AND \"orders\".\"customer_id\" IN (SELECT U0.\"id\" FROM \"customers\" U0 WHERE U0.\"name\" LIKE $4)");
    sql.push_str(" ORDER BY \"orders\".\"created_at\" DESC LIMIT 100");
    sql
}

fn bench(c: &mut Criterion) {
    let path = SearchPath::default();
    let catalog = Catalog::new();

    let classifier = Classifier::new(Dialect::Postgres, 10_000);
    let hot = OLTP[1].1;
    classifier.classify(hot, &path, &catalog);
    c.bench_function("cached_lookup/pgbench_update", |b| b.iter(|| classifier.classify(black_box(hot), &path, &catalog)));
    let orm = orm_query();
    classifier.classify(&orm, &path, &catalog);
    c.bench_function(&format!("cached_lookup/orm_{}_bytes", orm.len()), |b| {
        b.iter(|| classifier.classify(black_box(&orm), &path, &catalog))
    });

    let mut group = c.benchmark_group("cold_parse");
    for (name, sql) in OLTP {
        group.bench_with_input(BenchmarkId::new("oltp", name), sql, |b, sql| {
            b.iter(|| classify(Dialect::Postgres, black_box(sql), &path, &catalog))
        });
    }
    group.bench_function(format!("orm_{}_bytes", orm.len()), |b| b.iter(|| classify(Dialect::Postgres, black_box(&orm), &path, &catalog)));
    let shop = SearchPath::database(Some("shop"));
    for (name, sql) in MYSQL {
        group.bench_with_input(BenchmarkId::new("mysql", name), sql, |b, sql| {
            b.iter(|| classify(Dialect::MySql, black_box(sql), &shop, &catalog))
        });
    }
    // ANSI_QUOTES and NO_BACKSLASH_ESCAPES: sqlparser's MySQL dialect behind capgate's wrapper.
    let ansi = SearchPath::database(Some("shop")).with_sql_mode(SqlMode { ansi_quotes: true, no_backslash_escapes: true });
    group.bench_function("mysql/sysbench_index_update_ansi_mode", |b| {
        b.iter(|| classify(Dialect::MySql, black_box(MYSQL[1].1), &ansi, &catalog))
    });
    group.finish();

    let mysql = Classifier::new(Dialect::MySql, 10_000);
    mysql.classify(MYSQL[1].1, &shop, &catalog);
    c.bench_function("cached_lookup/mysql_sysbench_index_update", |b| b.iter(|| mysql.classify(black_box(MYSQL[1].1), &shop, &catalog)));
}

criterion_group!(benches, bench);
criterion_main!(benches);
