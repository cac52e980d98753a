//! What a policy may not ask of a MySQL / MariaDB site yet, refused at start and at every
//! reload like a malformed file (the old policy stays), and by `check-config`: the keys
//! built for PostgreSQL only. Accepting them silently would promise what the site does not
//! do — a `quorum` commit would still wait for every replica, and `latest` between two
//! writing sites would act as `overwrite` at each, leaving them with different rows.

use crate::config::Config;
use crate::policy::{Mode, OnConflict, Policy, PolicyProblem, SiteCheck};

/// The problems of `policy` on a MySQL / MariaDB site configured by `config`.
pub fn problems(policy: &Policy, config: &Config) -> Vec<PolicyProblem> {
    let writers: Vec<&str> = config.replicas.iter().filter(|r| r.takes_writes).map(|r| r.name.as_str()).collect();
    let mut out = Vec::new();
    for (i, rule) in policy.rules.iter().enumerate() {
        let at = |key: &str, message: String| PolicyProblem { line: Some(rule.line), key: format!("table[{}].{key}", i + 1), message };
        let on_conflict = match &rule.mode {
            Mode::Sync { quorum: Some(q), .. } => {
                out.push(at(
                    "quorum",
                    format!(
                        "quorum = {q} for \"{}\": quorum sync commits are PostgreSQL-only so far — on a MySQL/MariaDB site \
                         every replica prepares each sync commit (decision 0017); remove quorum (or make the table async)",
                        rule.pattern_text
                    ),
                ));
                continue;
            }
            Mode::Async { on_conflict } | Mode::Bounded { on_conflict, .. } => on_conflict,
            _ => continue,
        };
        if *on_conflict == OnConflict::Latest && !writers.is_empty() {
            out.push(at(
                "on_conflict",
                format!(
                    "on_conflict = \"latest\" for \"{}\" with replica(s) that take writes ({}): between MySQL/MariaDB sites \
                     that all take writes `latest` is not built yet — it would act as `overwrite` at each site and leave them \
                     with different rows; use \"halt\" or \"skip\" (conflicts logged, `capgate resume` after a repair)",
                    rule.pattern_text,
                    writers.join(", ")
                ),
            ));
        }
    }
    out
}

/// [`problems`] as the policy handle's check.
pub fn site_check(config: &Config) -> SiteCheck {
    let config = config.clone();
    SiteCheck(Box::new(move |policy| problems(policy, &config)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(takes_writes: bool) -> Config {
        let text = format!(
            "site = \"west\"\n[primary]\nurl = \"mysql://p/\"\n[[replicas]]\nname = \"east\"\nurl = \"mysql://e/\"\ntakes_writes = {takes_writes}\n"
        );
        Config::parse(&text, std::path::Path::new("c.toml")).unwrap()
    }

    fn policy(text: &str) -> Policy {
        Policy::parse(text, std::path::Path::new("p.toml")).unwrap()
    }

    #[test]
    fn a_quorum_is_refused_and_latest_only_between_writing_sites() {
        let p = policy(
            "[[table]]\nmatch = \"shop.orders\"\nmode = \"sync\"\nquorum = 1\n\n\
             [[table]]\nmatch = \"shop.carts\"\nmode = \"async\"\non_conflict = \"latest\"\n\n\
             [[table]]\nmatch = \"shop.*\"\nmode = \"sync\"\n",
        );
        let one_writer = problems(&p, &config(false));
        assert_eq!(one_writer.len(), 1, "{one_writer:?}");
        assert_eq!((one_writer[0].line, one_writer[0].key.as_str()), (Some(1), "table[1].quorum"));
        assert!(one_writer[0].message.contains("quorum = 1 for \"shop.orders\""), "{}", one_writer[0].message);
        let two_writers = problems(&p, &config(true));
        assert_eq!(two_writers.len(), 2, "{two_writers:?}");
        assert_eq!((two_writers[1].line, two_writers[1].key.as_str()), (Some(6), "table[2].on_conflict"));
        assert!(two_writers[1].message.contains("(east)"), "{}", two_writers[1].message);
        assert!(problems(&policy("[[table]]\nmatch = \"shop.*\"\nmode = \"sync\"\n"), &config(true)).is_empty());
    }
}
