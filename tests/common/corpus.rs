//! What both classification corpora (tests/classify_corpus.rs for PostgreSQL,
//! tests/classify_corpus_mysql.rs for MySQL) check of each record: one line
//! `kind | writes | reads | nondeterministic | sql` (lists comma-separated, `-` for none; `#`
//! starts a comment line). Included by each with `#[path]`.

use capgate::classify::{Classification, TableName};

/// The records of `corpus`: `[kind, writes, reads, nondeterministic, sql]`.
pub fn records(corpus: &str) -> impl Iterator<Item = [&str; 5]> {
    corpus.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).map(|line| {
        let fields: Vec<&str> = line.splitn(5, " | ").collect();
        <[&str; 5]>::try_from(fields).unwrap_or_else(|_| panic!("bad corpus line: {line}"))
    })
}

/// Classify every record with `classify` and require exactly one statement with the
/// record's kind, writes and reads (in any order) and non-deterministic parts (in order);
/// at least 200 records; the same for each record's text with other numbers. Lists every
/// misclassified record at once.
pub fn check(corpus: &str, classify: impl Fn(&str) -> Classification) {
    let mut failures = Vec::new();
    let mut count = 0;
    // Each statement, and the same with other numbers: the classification cache files
    // statements under their text with the numbers blanked, so those must classify the same.
    let texts = records(corpus).flat_map(|[kind, writes, reads, nondet, sql]| {
        let other_numbers = match capgate::classify::blank_numbers(sql, "7") {
            std::borrow::Cow::Owned(variant) => Some(variant),
            std::borrow::Cow::Borrowed(_) => None,
        };
        std::iter::once(sql.to_owned()).chain(other_numbers).map(move |text| ([kind, writes, reads, nondet], text))
    });
    for ([kind, writes, reads, nondet], text) in texts {
        let sql = text.as_str();
        count += 1;
        let c = classify(sql);
        let Some(s) = c.statements.first() else {
            failures.push(format!("{sql}\n  no statement"));
            continue;
        };
        let sorted = |mut v: Vec<String>| {
            v.sort();
            v
        };
        let (got_writes, want_writes) = (sorted(names(&s.writes)), sorted(list(writes)));
        let (got_reads, want_reads) = (sorted(names(&s.reads)), sorted(list(reads)));
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

/// A record's list field.
pub fn list(field: &str) -> Vec<String> {
    if field.trim() == "-" {
        return Vec::new();
    }
    split_list(field.trim())
}

/// Split on ", " but not inside parentheses (default expressions hold commas).
fn split_list(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut depth = 0i32;
    let mut cur = String::new();
    let chars: Vec<char> = s.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            _ => {}
        }
        if c == ',' && depth == 0 && chars.get(i + 1) == Some(&' ') {
            out.push(std::mem::take(&mut cur));
            i += 2;
            continue;
        }
        cur.push(c);
        i += 1;
    }
    out.push(cur);
    out
}

/// `n` arbitrary inputs, seeded (`CAPGATE_FUZZ_SEED`, else `default_seed`; printed so a
/// failure can be repeated): random characters, random sequences of `words`, corpus
/// statements cut and reversed, and parentheses nested up to 5,000 deep.
pub fn arbitrary_inputs<'a>(default_seed: u64, words: &'a [&'a str], corpus: &'a str, n: usize) -> impl Iterator<Item = String> + 'a {
    let seed: u64 = std::env::var("CAPGATE_FUZZ_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(default_seed);
    println!("classify fuzz seed: {seed} (set CAPGATE_FUZZ_SEED to repeat)");
    let mut state = seed;
    let mut next = move || {
        // xorshift64*
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        state.wrapping_mul(0x2545_f491_4f6c_dd1d)
    };
    let statements: Vec<&str> = records(corpus).map(|r| r[4]).collect();
    (0..n).map(move |i| match i % 4 {
        0 => (0..(next() % 200)).map(|_| char::from_u32((next() % 0x2FF) as u32).unwrap_or('x')).collect(),
        1 => (0..(next() % 30)).map(|_| words[(next() % words.len() as u64) as usize]).collect::<Vec<_>>().join(" "),
        2 => {
            let base = statements[(next() % statements.len() as u64) as usize];
            let cut = (next() as usize) % (base.len() + 1);
            let cut = (0..=cut).rev().find(|c| base.is_char_boundary(*c)).unwrap_or(0);
            format!("{}{}", &base[..cut], &base[cut..].chars().rev().collect::<String>())
        }
        _ => {
            let depth = (next() % 5000) as usize;
            format!("SELECT {}1{}", "(".repeat(depth), ")".repeat(depth))
        }
    })
}

pub fn names(ts: &[TableName]) -> Vec<String> {
    ts.iter().map(ToString::to_string).collect()
}
