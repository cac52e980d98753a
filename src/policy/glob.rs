//! Rule patterns: a glob on `schema.table` (MySQL: `database.table`) with `*` (any run of
//! characters) and `?` (one character), each part optionally double-quoted (or, as MySQL
//! users write names, backquoted) to hold dots or wildcard characters literally. Also
//! decides whether one pattern covers another, to find unreachable rules.

/// One element of a glob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tok {
    Lit(char),
    /// `?`
    One,
    /// `*`
    Any,
}

/// A glob on one name part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glob(Vec<Tok>);

impl Glob {
    /// Does `s` match? Iterative with one backtrack point per `*` (linear-ish, no recursion).
    pub fn matches(&self, s: &str) -> bool {
        let p = &self.0;
        let s: Vec<char> = s.chars().collect();
        let (mut pi, mut si) = (0, 0);
        let mut star: Option<(usize, usize)> = None;
        while si < s.len() {
            match p.get(pi) {
                Some(Tok::Any) => {
                    star = Some((pi, si));
                    pi += 1;
                }
                Some(Tok::One) => {
                    pi += 1;
                    si += 1;
                }
                Some(Tok::Lit(c)) if *c == s[si] => {
                    pi += 1;
                    si += 1;
                }
                _ => match star {
                    Some((sp, ss)) => {
                        pi = sp + 1;
                        si = ss + 1;
                        star = Some((sp, ss + 1));
                    }
                    None => return false,
                },
            }
        }
        p[pi.min(p.len())..].iter().all(|t| *t == Tok::Any)
    }

    /// Does every string `other` matches also match `self`? Sound (never says yes wrongly);
    /// may miss exotic cases such as `*?` covering `?*`.
    pub fn covers(&self, other: &Glob) -> bool {
        let (a, b) = (&self.0, &other.0);
        // cov[i][j]: a[i..] covers b[j..]
        let mut cov = vec![vec![false; b.len() + 1]; a.len() + 1];
        cov[a.len()][b.len()] = true;
        for i in (0..a.len()).rev() {
            for j in (0..=b.len()).rev() {
                cov[i][j] = match a[i] {
                    Tok::Any => cov[i + 1][j] || (j < b.len() && cov[i][j + 1]),
                    Tok::One => j < b.len() && b[j] != Tok::Any && cov[i + 1][j + 1],
                    Tok::Lit(c) => j < b.len() && b[j] == Tok::Lit(c) && cov[i + 1][j + 1],
                };
            }
        }
        cov[0][0]
    }

    pub fn has_wildcards(&self) -> bool {
        self.0.iter().any(|t| !matches!(t, Tok::Lit(_)))
    }

    /// The literal text, when there are no wildcards.
    pub fn literal(&self) -> Option<String> {
        self.0
            .iter()
            .map(|t| match t {
                Tok::Lit(c) => Some(*c),
                _ => None,
            })
            .collect()
    }
}

/// A `schema.table` pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    pub schema: Glob,
    pub table: Glob,
}

impl Pattern {
    /// Parse `schema.table`; the error says what is expected.
    pub fn parse(text: &str) -> Result<Pattern, String> {
        let parts = split_parts(text)?;
        match <[Glob; 2]>::try_from(parts) {
            Ok([schema, table]) => Ok(Pattern { schema, table }),
            Err(_) => Err(format!(
                "expected schema.table (MySQL: database.table) with optional * and ? wildcards (e.g. public.orders, public.cart_*, *.audit_log, shop.cart_*), found `{text}`"
            )),
        }
    }

    pub fn matches(&self, schema: &str, table: &str) -> bool {
        self.schema.matches(schema) && self.table.matches(table)
    }

    pub fn covers(&self, other: &Pattern) -> bool {
        self.schema.covers(&other.schema) && self.table.covers(&other.table)
    }
}

/// Split on dots outside quotes — double quotes, or MySQL's backticks — where a doubled
/// quote is one quote character and wildcards are literal characters.
fn split_parts(text: &str) -> Result<Vec<Glob>, String> {
    let mut parts = Vec::new();
    let mut cur = Vec::new();
    let mut chars = text.chars().peekable();
    let mut quoted_part = false;
    while let Some(c) = chars.next() {
        match c {
            quote @ ('"' | '`') => {
                quoted_part = true;
                loop {
                    match chars.next() {
                        Some(c) if c == quote && chars.peek() == Some(&quote) => {
                            chars.next();
                            cur.push(Tok::Lit(quote));
                        }
                        Some(c) if c == quote => break,
                        Some(c) => cur.push(Tok::Lit(c)),
                        None => return Err(format!("unterminated {quote} quote in `{text}`")),
                    }
                }
            }
            '.' => {
                if cur.is_empty() && !quoted_part {
                    return Err(format!("empty name part in `{text}`"));
                }
                parts.push(Glob(std::mem::take(&mut cur)));
                quoted_part = false;
            }
            '*' => cur.push(Tok::Any),
            '?' => cur.push(Tok::One),
            c if c.is_whitespace() => return Err(format!("unquoted white space in `{text}`")),
            c => cur.push(Tok::Lit(c)),
        }
    }
    if cur.is_empty() && !quoted_part {
        return Err(format!("empty name part in `{text}`"));
    }
    parts.push(Glob(cur));
    Ok(parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Pattern {
        Pattern::parse(s).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn matching() {
        assert!(p("public.orders").matches("public", "orders"));
        assert!(!p("public.orders").matches("public", "orders2"));
        assert!(p("public.cart_*").matches("public", "cart_"));
        assert!(p("public.cart_*").matches("public", "cart_items"));
        assert!(!p("public.cart_*").matches("public", "carts"));
        assert!(p("*.*").matches("any", "thing"));
        assert!(p("public.t?").matches("public", "t1"));
        assert!(!p("public.t?").matches("public", "t"));
        assert!(!p("public.t?").matches("public", "t12"));
        assert!(p("public.*_log").matches("public", "audit_log"));
        assert!(p("public.*_log").matches("public", "_log"));
        assert!(!p("public.*_log").matches("public", "audit_logs"));
        assert!(p("a.*b*c*").matches("a", "xxbyyczz"));
        assert!(p("public.\"Order.Items\"").matches("public", "Order.Items"));
        assert!(p("public.\"a*\"").matches("public", "a*"));
        assert!(!p("public.\"a*\"").matches("public", "ab"));
        assert!(p("public.ü*").matches("public", "übung"));
        // MySQL: the database in the schema's place, backquoted parts, case kept.
        assert!(p("shop.cart_*").matches("shop", "cart_items"));
        assert!(p("`shop`.`Order Items`").matches("shop", "Order Items"));
        assert!(p("shop.`a``b*`").matches("shop", "a`b*"));
        assert!(!p("shop.`a*`").matches("shop", "ab"));
        assert!(!p("shop.Orders").matches("shop", "orders"));
    }

    #[test]
    fn bad_patterns() {
        for bad in ["orders", "a.b.c", ".x", "x.", "a.\"b", "a.`b", "a b.c", ""] {
            assert!(Pattern::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn covering() {
        assert!(p("public.*").covers(&p("public.orders")));
        assert!(p("public.*").covers(&p("public.cart_*")));
        assert!(p("*.*").covers(&p("x.y?")));
        assert!(p("public.cart_*").covers(&p("public.cart_items")));
        assert!(p("public.t?").covers(&p("public.t1")));
        assert!(p("public.orders").covers(&p("public.orders")));
        assert!(!p("public.orders").covers(&p("public.*")));
        assert!(!p("public.t?").covers(&p("public.t*")));
        assert!(!p("public.cart_*").covers(&p("public.*")));
        assert!(!p("public.*").covers(&p("sales.orders")));
        assert!(p("public.*s").covers(&p("public.order?s")));
    }
}
