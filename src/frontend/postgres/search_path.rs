//! The session's search_path as PostgreSQL reads it: from the startup packet (a
//! `search_path` parameter or `-c search_path=…` in `options`) and from SET, with `$user`
//! substituted. Classification resolves unqualified table names with it.

use crate::classify::SearchPath;

/// `schemas` with `$user` replaced by the session's user.
pub fn substitute_user(schemas: &[String], user: &str) -> SearchPath {
    SearchPath::new(schemas.iter().map(|s| if s == "$user" { user.to_owned() } else { s.clone() }))
}

/// A search_path setting as PostgreSQL reads it: comma-separated, `"quoted"` names exact,
/// unquoted ones folded to lower case.
pub fn parse_search_path(value: &str, user: &str) -> SearchPath {
    let schemas: Vec<String> = value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| match s.strip_prefix('"').and_then(|s| s.strip_suffix('"')) {
            Some(q) => q.replace("\"\"", "\""),
            None => s.to_lowercase(),
        })
        .collect();
    substitute_user(&schemas, user)
}

/// `search_path` from a startup `options` value (`-c search_path=a,b` or `--search_path=a,b`).
pub fn search_path_option(options: &str) -> Option<String> {
    let mut words = options.split_whitespace().peekable();
    let mut found = None;
    while let Some(w) = words.next() {
        let setting = if w == "-c" { words.next() } else { w.strip_prefix("--").or_else(|| w.strip_prefix("-c")) };
        if let Some(v) = setting.and_then(|s| s.strip_prefix("search_path=")) {
            found = Some(v.replace("\\ ", " "));
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn search_paths_fold_and_substitute() {
        assert_eq!(parse_search_path("\"$user\", Public, \"Mixed\"", "alice").schemas(), ["alice", "public", "Mixed"]);
        assert_eq!(search_path_option("-c search_path=app,public -c work_mem=4MB").as_deref(), Some("app,public"));
        assert_eq!(search_path_option("--search_path=x").as_deref(), Some("x"));
        assert_eq!(search_path_option("-cstatement_timeout=5"), None);
    }
}
