//! Statement classification: a cached lookup (what every repeated statement costs on the
//! relay's path), a cold parse of short OLTP statements (pgbench, sysbench), and a cold
//! parse of a ~5 KB ORM query. Targets: cached < 1 µs, cold OLTP p50 < 30 µs.

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion};

use capgate::classify::{classify, Catalog, Classifier, Dialect, SearchPath};

const OLTP: &[(&str, &str)] = &[
    ("pgbench_select", "SELECT abalance FROM pgbench_accounts WHERE aid = $1"),
    ("pgbench_update", "UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2"),
    ("pgbench_insert", "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES ($1, $2, $3, $4, CURRENT_TIMESTAMP)"),
    ("sysbench_range", "SELECT DISTINCT c FROM sbtest1 WHERE id BETWEEN $1 AND $2 ORDER BY c"),
    ("django_get", "SELECT \"auth_user\".\"id\", \"auth_user\".\"username\" FROM \"auth_user\" WHERE \"auth_user\".\"id\" = $1 LIMIT 21"),
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
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
