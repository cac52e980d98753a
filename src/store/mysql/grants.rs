//! The privileges of capgate's account on a MySQL / MariaDB server, as `information_schema`
//! lists them: global, per database (a name or a `LIKE` pattern such as `shop%`) and per
//! table. Read by the start's privilege checks on the primary and by `check-config` on every
//! server. A privilege granted only through a role is not listed there, and is reported
//! missing.

use mysql_async::prelude::Queryable;

/// Why a grant list: one account's privileges, to tell which are missing before the server
/// refuses a statement halfway through replication.
pub struct Grants {
    /// `'user'@'host'`, as GRANT statements name it.
    pub grantee: String,
    global: Vec<String>,
    /// (database name or pattern, privilege)
    per_db: Vec<(String, String)>,
    /// (database, table, privilege)
    per_table: Vec<(String, String, String)>,
}

impl Grants {
    /// The privileges of the connection's own account.
    pub async fn read(conn: &mut mysql_async::Conn) -> Result<Grants, mysql_async::Error> {
        let account: String = conn.query_first("SELECT CURRENT_USER()").await?.unwrap_or_default();
        let grantee = match account.rsplit_once('@') {
            Some((user, host)) => format!("'{user}'@'{host}'"),
            None => account.clone(),
        };
        let global: Vec<String> =
            conn.exec("SELECT PRIVILEGE_TYPE FROM information_schema.USER_PRIVILEGES WHERE GRANTEE = ?", (grantee.clone(),)).await?;
        let per_db: Vec<(String, String)> = conn
            .exec("SELECT TABLE_SCHEMA, PRIVILEGE_TYPE FROM information_schema.SCHEMA_PRIVILEGES WHERE GRANTEE = ?", (grantee.clone(),))
            .await?;
        let per_table: Vec<(String, String, String)> = conn
            .exec(
                "SELECT TABLE_SCHEMA, TABLE_NAME, PRIVILEGE_TYPE FROM information_schema.TABLE_PRIVILEGES WHERE GRANTEE = ?",
                (grantee.clone(),),
            )
            .await?;
        Ok(Grants { grantee, global, per_db, per_table })
    }

    /// Whether the account holds `privilege` globally or on every table of database `schema`.
    pub fn has(&self, privilege: &str, schema: &str) -> bool {
        self.has_global(privilege) || self.per_db.iter().any(|(s, p)| p == privilege && like(s, schema))
    }

    /// Whether the account holds `privilege` on table `schema`.`table` (globally, on its
    /// database, or on the table itself).
    pub fn has_on_table(&self, privilege: &str, schema: &str, table: &str) -> bool {
        self.has(privilege, schema) || self.per_table.iter().any(|(s, t, p)| p == privilege && s == schema && t == table)
    }

    /// Whether the account holds `privilege` globally (`ON *.*`).
    pub fn has_global(&self, privilege: &str) -> bool {
        self.global.iter().any(|p| p == privilege)
    }
}

/// Whether database name `name` matches the grant's database `pattern`, as the server
/// matches it: `%` any run, `_` any one character, `\` escaping either.
fn like(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    fn go(p: &[char], n: &[char]) -> bool {
        match p.first() {
            None => n.is_empty(),
            Some('%') => (0..=n.len()).any(|i| go(&p[1..], &n[i..])),
            Some('_') => !n.is_empty() && go(&p[1..], &n[1..]),
            Some('\\') if p.len() > 1 => n.first() == Some(&p[1]) && go(&p[2..], &n[1..]),
            Some(c) => n.first() == Some(c) && go(&p[1..], &n[1..]),
        }
    }
    go(&p, &n)
}

#[cfg(test)]
mod tests {
    use super::like;

    #[test]
    fn database_patterns_match_as_the_server_matches_them() {
        assert!(like("shop", "shop") && !like("shop", "shops"));
        assert!(like("shop%", "shop") && like("shop%", "shop_eu") && !like("shop%", "workshop"));
        assert!(like("shop_", "shop1") && !like("shop_", "shop"));
        assert!(like("my\\_db", "my_db") && !like("my\\_db", "myXdb"));
        assert!(like("%", "anything"));
    }
}
