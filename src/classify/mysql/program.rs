//! Where a stored program's definition ends, so that the statements after it in a
//! multi-statement query are classified like any other (issue 15).
//!
//! `CREATE PROCEDURE p() BEGIN …; …; END; UPDATE accounts …` is one COM_QUERY holding two
//! statements: MariaDB reads the definition up to the `END` that closes its body and runs the
//! `UPDATE` after it on its own. Cutting the text at every `;` instead reads the body's
//! statements as statements of the query (they only run when `p` is called), and taking the
//! definition to run to the end of the text hides the `UPDATE`. So the body is followed as the
//! server's grammar reads it: a routine's, trigger's or event's body is one statement, and
//! when it is a compound one (`BEGIN … END`, `IF … END IF`, `CASE … END CASE`, `LOOP … END
//! LOOP`, `REPEAT … UNTIL … END REPEAT`, `WHILE … DO … END WHILE`, MariaDB's `FOR … DO … END
//! FOR`, each with an optional label, and a handler's statement in `DECLARE … HANDLER FOR`)
//! its statements and their semicolons are inside it. A body that is a single simple
//! statement (`CREATE FUNCTION f() RETURNS INT RETURN 1`, `CREATE TRIGGER … FOR EACH ROW SET
//! NEW.a = 1`, `CREATE EVENT … DO DELETE …`) ends at its first `;` like any statement.
//!
//! Works on the tokenizer's tokens (strings, comments, backticks and `sql_mode` already
//! accounted for), white space and comments removed. Not followed: MariaDB's `sql_mode =
//! ORACLE` syntax (`CREATE PROCEDURE p AS BEGIN … END`, `WHILE … LOOP`), which capgate cannot
//! tell from the status flags it follows; a body it cannot follow is taken, as before, to run
//! to the end of the text.

use sqlparser::tokenizer::Token;

use super::fallback::object_position;
use crate::classify::fallback::word;

/// How deeply compound statements may nest before capgate stops following them (the text
/// is then taken to end with the definition): bounds the recursion on hostile input.
const MAX_DEPTH: usize = 64;

/// Words that can start a statement: in a routine's header, the first of them (at the
/// outermost level) starts the body. None of them can appear in a header's parameter types
/// or characteristics (`SET` only as `CHARACTER SET` or the type `SET(…)`, handled apart).
const STATEMENT_WORDS: &[&str] = &[
    "ALTER",
    "ANALYZE",
    "BINLOG",
    "CACHE",
    "CALL",
    "CHANGE",
    "CHECK",
    "CHECKSUM",
    "CLOSE",
    "COMMIT",
    "CREATE",
    "DEALLOCATE",
    "DECLARE",
    "DELETE",
    "DESC",
    "DESCRIBE",
    "DO",
    "DROP",
    "EXECUTE",
    "EXPLAIN",
    "FETCH",
    "FLUSH",
    "GET",
    "GRANT",
    "HANDLER",
    "HELP",
    "INSERT",
    "INSTALL",
    "ITERATE",
    "KILL",
    "LEAVE",
    "LOAD",
    "LOCK",
    "OPEN",
    "OPTIMIZE",
    "PREPARE",
    "PURGE",
    "RELEASE",
    "RENAME",
    "REPAIR",
    "REPLACE",
    "RESET",
    "RESIGNAL",
    "RETURN",
    "REVOKE",
    "ROLLBACK",
    "SAVEPOINT",
    "SELECT",
    "SET",
    "SHOW",
    "SHUTDOWN",
    "SIGNAL",
    "START",
    "STOP",
    "TABLE",
    "TRUNCATE",
    "UNINSTALL",
    "UNLOCK",
    "UPDATE",
    "USE",
    "VALUES",
    "WITH",
    "XA",
];

/// Words that start a compound statement (one whose statements end with `;` inside it).
const COMPOUND_WORDS: &[&str] = &["BEGIN", "IF", "CASE", "LOOP", "REPEAT", "WHILE", "FOR"];

/// Where the statement starting at `tokens[0]` ends, when it defines a stored program (or is
/// MariaDB's anonymous `BEGIN NOT ATOMIC … END` block) whose body is a compound statement: the
/// index of the `;` that follows the body, or `tokens.len()` when none does. `None` for any
/// other statement: it ends at its first `;`. `tokens` holds no white space or comments.
pub(in crate::classify) fn definition_end(tokens: &[Token]) -> Option<usize> {
    definition_end_at(tokens, 0)
}

fn definition_end_at(tokens: &[Token], depth: usize) -> Option<usize> {
    let body = compound_body(tokens)?;
    let mut scan = Scan { tokens, at: body };
    if scan.statement(depth).is_none() {
        // A body capgate cannot follow: the definition runs to the end of the text.
        return Some(tokens.len());
    }
    let rest = tokens.get(scan.at..).unwrap_or(&[]);
    Some(rest.iter().position(|t| *t == Token::SemiColon).map_or(tokens.len(), |p| scan.at + p))
}

/// The index of a definition's body, when the statement is a definition and its body a
/// compound statement.
fn compound_body(tokens: &[Token]) -> Option<usize> {
    let w = |i: usize| word(tokens.get(i)).unwrap_or_default();
    if w(0) == "BEGIN" && w(1) == "NOT" && w(2) == "ATOMIC" {
        return Some(0);
    }
    let first = w(0);
    if first != "CREATE" && first != "ALTER" {
        return None;
    }
    let at = object_position(tokens);
    let body = match (first.as_str(), w(at).as_str()) {
        ("CREATE", "PROCEDURE" | "FUNCTION") => routine_body(tokens, at + 1)?,
        ("CREATE", "TRIGGER") => trigger_body(tokens, at + 1)?,
        ("CREATE" | "ALTER", "EVENT") => event_body(tokens, at + 1)?,
        _ => return None,
    };
    is_compound(tokens, body).then_some(body)
}

/// `name (params) [RETURNS type] [characteristics] body`, from the name at `at`: the body's
/// index. `None` without a parameter list (a loadable function: `RETURNS STRING SONAME …`).
fn routine_body(tokens: &[Token], mut at: usize) -> Option<usize> {
    at = past_if_not_exists(tokens, at);
    at = past_name(tokens, at)?;
    if tokens.get(at) != Some(&Token::LParen) {
        return None;
    }
    let w = |i: usize| word(tokens.get(i));
    loop {
        let token = tokens.get(at)?;
        match token {
            Token::SemiColon => return None,
            Token::LParen => at = past_parentheses(tokens, at)?,
            Token::Word(_) if tokens.get(at + 1) == Some(&Token::Colon) => return Some(at),
            Token::Word(_) => match w(at).as_deref() {
                // A value follows: `COMMENT 'text'`, `CHARSET utf8mb4`, `COLLATE utf8mb4_bin`.
                Some("COMMENT" | "CHARSET" | "COLLATE") => at += 2,
                Some("CHARACTER" | "CHAR") if w(at + 1).as_deref() == Some("SET") => at += 3,
                // The type `SET('a', 'b')`.
                Some("SET") if tokens.get(at + 1) == Some(&Token::LParen) => at += 1,
                Some(word) if STATEMENT_WORDS.contains(&word) || COMPOUND_WORDS.contains(&word) => return Some(at),
                // A type, a characteristic (`DETERMINISTIC`, `SQL SECURITY INVOKER` …).
                _ => at += 1,
            },
            _ => at += 1,
        }
    }
}

/// `name {BEFORE|AFTER} event ON table FOR EACH ROW [{FOLLOWS|PRECEDES} other] body`.
fn trigger_body(tokens: &[Token], at: usize) -> Option<usize> {
    let w = |i: usize| word(tokens.get(i)).unwrap_or_default();
    let mut k = at;
    while !(w(k) == "FOR" && w(k + 1) == "EACH" && w(k + 2) == "ROW") {
        if matches!(tokens.get(k), None | Some(Token::SemiColon)) {
            return None;
        }
        k += 1;
    }
    k += 3;
    if w(k) == "FOLLOWS" || w(k) == "PRECEDES" {
        k = past_name(tokens, k + 1)?;
    }
    Some(k)
}

/// `name ON SCHEDULE … [ON COMPLETION …] [ENABLE | DISABLE …] [COMMENT '…'] DO body`: the
/// body follows the first `DO` outside parentheses.
fn event_body(tokens: &[Token], mut at: usize) -> Option<usize> {
    loop {
        match tokens.get(at)? {
            Token::SemiColon => return None,
            Token::LParen => at = past_parentheses(tokens, at)?,
            t if word(Some(t)).as_deref() == Some("DO") => return Some(at + 1),
            _ => at += 1,
        }
    }
}

/// Whether a compound statement (or a labelled one) starts at `at`.
fn is_compound(tokens: &[Token], at: usize) -> bool {
    let labelled = matches!(tokens.get(at), Some(Token::Word(_))) && tokens.get(at + 1) == Some(&Token::Colon);
    labelled || word(tokens.get(at)).is_some_and(|w| COMPOUND_WORDS.contains(&w.as_str()))
}

fn past_if_not_exists(tokens: &[Token], at: usize) -> usize {
    let w = |i: usize| word(tokens.get(i)).unwrap_or_default();
    if w(at) == "IF" && w(at + 1) == "NOT" && w(at + 2) == "EXISTS" {
        at + 3
    } else {
        at
    }
}

/// Past a name, `name` or `db.name` (quoted or not).
fn past_name(tokens: &[Token], at: usize) -> Option<usize> {
    matches!(tokens.get(at), Some(Token::Word(_))).then_some(())?;
    if tokens.get(at + 1) == Some(&Token::Period) && matches!(tokens.get(at + 2), Some(Token::Word(_))) {
        Some(at + 3)
    } else {
        Some(at + 1)
    }
}

/// Past the parentheses opening at `at` (and what they hold).
fn past_parentheses(tokens: &[Token], at: usize) -> Option<usize> {
    let mut depth = 0usize;
    for (k, t) in tokens.iter().enumerate().skip(at) {
        match t {
            Token::LParen => depth += 1,
            Token::RParen => {
                depth = depth.checked_sub(1)?;
                if depth == 0 {
                    return Some(k + 1);
                }
            }
            Token::SemiColon => return None,
            _ => {}
        }
    }
    None
}

/// A cursor over a body, following the grammar of compound statements just far enough to
/// find where each ends. Every step returns `None` where the text does not read as the
/// grammar says (the caller then stops following it).
struct Scan<'a> {
    tokens: &'a [Token],
    at: usize,
}

impl Scan<'_> {
    fn word(&self) -> Option<String> {
        word(self.tokens.get(self.at))
    }

    fn is(&self, w: &str) -> bool {
        self.word().is_some_and(|x| x == w)
    }

    /// Consume the word `w`.
    fn expect(&mut self, w: &str) -> Option<()> {
        self.is(w).then(|| self.at += 1)
    }

    /// One statement from `at`, up to (not including) the `;` that ends it.
    fn statement(&mut self, depth: usize) -> Option<()> {
        if depth > MAX_DEPTH {
            return None;
        }
        let labelled = matches!(self.tokens.get(self.at), Some(Token::Word(_))) && self.tokens.get(self.at + 1) == Some(&Token::Colon);
        if labelled {
            self.at += 2;
        }
        let inner = depth + 1;
        match self.word().as_deref() {
            Some("BEGIN") => {
                self.at += 1;
                if self.is("NOT") {
                    self.at += 1;
                    self.expect("ATOMIC")?;
                }
                self.list(&["END"], inner)?;
                self.at += 1;
                self.end_label();
            }
            Some("IF") => {
                self.at += 1;
                self.until("THEN")?;
                self.at += 1;
                loop {
                    self.list(&["ELSEIF", "ELSE", "END"], inner)?;
                    match self.word().as_deref() {
                        Some("ELSEIF") => {
                            self.at += 1;
                            self.until("THEN")?;
                            self.at += 1;
                        }
                        Some("ELSE") => self.at += 1,
                        _ => break,
                    }
                }
                self.at += 1;
                self.expect("IF")?;
            }
            Some("CASE") => {
                self.at += 1;
                if !self.is("WHEN") {
                    self.until("WHEN")?;
                }
                loop {
                    match self.word().as_deref() {
                        Some("WHEN") => {
                            self.at += 1;
                            self.until("THEN")?;
                            self.at += 1;
                            self.list(&["WHEN", "ELSE", "END"], inner)?;
                        }
                        Some("ELSE") => {
                            self.at += 1;
                            self.list(&["END"], inner)?;
                        }
                        Some("END") => break,
                        _ => return None,
                    }
                }
                self.at += 1;
                self.expect("CASE")?;
            }
            Some("LOOP") => {
                self.at += 1;
                self.list(&["END"], inner)?;
                self.at += 1;
                self.expect("LOOP")?;
                self.end_label();
            }
            Some("REPEAT") => {
                self.at += 1;
                self.list(&["UNTIL"], inner)?;
                self.at += 1;
                self.until("END")?;
                self.at += 1;
                self.expect("REPEAT")?;
                self.end_label();
            }
            Some(kind @ ("WHILE" | "FOR")) => {
                let kind = kind.to_owned();
                self.at += 1;
                self.until("DO")?;
                self.at += 1;
                self.list(&["END"], inner)?;
                self.at += 1;
                self.expect(&kind)?;
                self.end_label();
            }
            _ if labelled => return None,
            Some("DECLARE") => self.declare(inner)?,
            Some("CREATE" | "ALTER") => match definition_end_at(&self.tokens[self.at..], inner) {
                // A definition inside a body (an event created by a procedure).
                Some(end) => self.at += end,
                None => self.simple(),
            },
            _ => self.simple(),
        }
        Some(())
    }

    /// Statements, each ended by `;`, until a word of `stops` in a statement's place.
    fn list(&mut self, stops: &[&str], depth: usize) -> Option<()> {
        loop {
            match self.tokens.get(self.at)? {
                Token::SemiColon => self.at += 1,
                t if word(Some(t)).is_some_and(|w| stops.contains(&w.as_str())) => return Some(()),
                _ => {
                    self.statement(depth)?;
                    (self.tokens.get(self.at) == Some(&Token::SemiColon)).then_some(())?;
                    self.at += 1;
                }
            }
        }
    }

    /// `DECLARE …;`, or `DECLARE {CONTINUE|EXIT|UNDO} HANDLER FOR condition, … statement`
    /// whose statement may be compound.
    fn declare(&mut self, depth: usize) -> Option<()> {
        let end = self.tokens[self.at..].iter().position(|t| *t == Token::SemiColon).map_or(self.tokens.len(), |p| self.at + p);
        let handler = (self.at..end).find(|&k| word(self.tokens.get(k)).as_deref() == Some("HANDLER"));
        let Some(handler) = handler.filter(|&k| word(self.tokens.get(k + 1)).as_deref() == Some("FOR")) else {
            self.simple();
            return Some(());
        };
        self.at = handler + 2;
        // Conditions: SQLSTATE [VALUE] '…', SQLWARNING, NOT FOUND, SQLEXCEPTION, a code, a name.
        loop {
            match self.word().as_deref() {
                Some("SQLSTATE") => {
                    self.at += 1;
                    if self.is("VALUE") {
                        self.at += 1;
                    }
                    self.at += 1;
                }
                Some("NOT") => self.at += 2,
                _ => self.at += 1,
            }
            if self.tokens.get(self.at) != Some(&Token::Comma) {
                break;
            }
            self.at += 1;
        }
        self.statement(depth)
    }

    /// An optional label after `END [LOOP|WHILE|…]`, when the statement ends right after it.
    fn end_label(&mut self) {
        let follows_end = matches!(self.tokens.get(self.at + 1), None | Some(Token::SemiColon));
        if matches!(self.tokens.get(self.at), Some(Token::Word(_))) && follows_end {
            self.at += 1;
        }
    }

    /// A simple statement: up to the `;` outside parentheses (or the end).
    fn simple(&mut self) {
        let mut depth = 0usize;
        while let Some(t) = self.tokens.get(self.at) {
            match t {
                Token::LParen => depth += 1,
                Token::RParen => depth = depth.saturating_sub(1),
                Token::SemiColon if depth == 0 => return,
                _ => {}
            }
            self.at += 1;
        }
    }

    /// An expression up to the word `stop` outside parentheses and `CASE … END` (whose
    /// `THEN` and `END` are its own).
    fn until(&mut self, stop: &str) -> Option<()> {
        let (mut parens, mut cases) = (0usize, 0usize);
        loop {
            let t = self.tokens.get(self.at)?;
            match t {
                Token::LParen => parens += 1,
                Token::RParen => parens = parens.saturating_sub(1),
                Token::SemiColon if parens == 0 => return None,
                _ => match word(Some(t)).as_deref() {
                    Some(w) if w == stop && parens == 0 && cases == 0 => return Some(()),
                    Some("CASE") => cases += 1,
                    Some("END") if cases > 0 => cases -= 1,
                    _ => {}
                },
            }
            self.at += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use sqlparser::dialect::MySqlDialect;
    use sqlparser::tokenizer::Tokenizer;

    use super::*;

    /// The text of the definition at the start of `sql`, as capgate cuts it (None: not a
    /// definition with a compound body).
    fn definition(sql: &str) -> Option<String> {
        let tokens: Vec<Token> = Tokenizer::new(&MySqlDialect {}, sql)
            .tokenize()
            .expect("tokenize")
            .into_iter()
            .filter(|t| !matches!(t, Token::Whitespace(_) | Token::EOF))
            .collect();
        let end = definition_end(&tokens)?;
        Some(tokens[..end].iter().map(ToString::to_string).collect::<Vec<_>>().join(" "))
    }

    fn ends_with(sql: &str, last: &str) {
        let text = definition(sql).unwrap_or_else(|| panic!("not a compound definition: {sql}"));
        assert!(text.ends_with(last), "{sql}\n  cut as: {text}\n  expected it to end with: {last}");
    }

    #[test]
    fn compound_bodies_end_at_their_matching_end() {
        let after = "; UPDATE accounts SET bal = 0";
        // Nested blocks, labels, IF with ELSEIF/ELSE, CASE statements and expressions,
        // loops, handlers with compound statements, strings and comments holding END and `;`.
        ends_with(&format!("CREATE PROCEDURE p() BEGIN SELECT 1; BEGIN SELECT 2; END; END{after}"), "END ; END");
        ends_with(
            &format!(
                "CREATE DEFINER=`root`@`localhost` PROCEDURE shop.p(IN a INT, OUT b VARCHAR(20)) MODIFIES SQL DATA COMMENT 'x; END'
                 outer_block: BEGIN
                   DECLARE done INT DEFAULT 0;
                   DECLARE c CURSOR FOR SELECT id FROM t WHERE note = 'END;';
                   DECLARE CONTINUE HANDLER FOR SQLSTATE VALUE '02000', NOT FOUND BEGIN SET done = 1; END;
                   DECLARE EXIT HANDLER FOR SQLEXCEPTION ROLLBACK;
                   IF a > 0 THEN SET b = 'pos'; ELSEIF a < 0 THEN SET b = 'neg'; ELSE BEGIN SET b = 'zero'; END; END IF;
                   IF CASE WHEN a THEN 1 ELSE 0 END = 1 THEN SELECT 1; END IF;
                   CASE a WHEN 1 THEN SELECT 1; WHEN 2 THEN BEGIN SELECT 2; END; ELSE SELECT CASE a WHEN 3 THEN 'x' END; END CASE;
                   CASE WHEN a > 1 THEN SELECT 1; END CASE;
                   l1: LOOP FETCH c INTO a; IF done THEN LEAVE l1; END IF; END LOOP l1;
                   REPEAT SET a = a - 1; UNTIL CASE WHEN a > 0 THEN 0 ELSE 1 END END REPEAT;
                   w: WHILE a < 10 DO SET a = a + 1; END WHILE w;
                   FOR i IN 1 .. 3 DO SELECT i; END FOR;
                   SELECT `end`, 'END IF; END' FROM t /* END; */;
                 END outer_block{after}"
            ),
            "END outer_block",
        );
        // Bodies that are compound without BEGIN.
        ends_with(&format!("CREATE PROCEDURE p() IF 1 THEN SELECT 1; END IF{after}"), "END IF");
        ends_with(&format!("CREATE PROCEDURE p() lbl: LOOP LEAVE lbl; END LOOP lbl{after}"), "END LOOP lbl");
        // Functions, aggregate functions, types with parentheses and character sets.
        ends_with(
            &format!(
                "CREATE OR REPLACE AGGREGATE FUNCTION IF NOT EXISTS f(x DECIMAL(10,2)) RETURNS VARCHAR(20) CHARACTER SET utf8mb4 \
                 COLLATE utf8mb4_bin DETERMINISTIC SQL SECURITY INVOKER BEGIN DECLARE s INT DEFAULT 0; \
                 DECLARE CONTINUE HANDLER FOR NOT FOUND RETURN s; LOOP FETCH GROUP NEXT ROW; SET s = s + x; END LOOP; END{after}"
            ),
            "END LOOP ; END",
        );
        ends_with(&format!("CREATE FUNCTION f() RETURNS SET('a','b') BEGIN RETURN 'a'; END{after}"), "RETURN 'a' ; END");
        // Triggers (also as mysqldump writes them) and events; an event created in a body.
        ends_with(
            &format!("CREATE TRIGGER t1 BEFORE INSERT ON t FOR EACH ROW FOLLOWS t0 BEGIN SET NEW.a = 1; END{after}"),
            "SET NEW . a = 1 ; END",
        );
        ends_with(
            &format!(
                "/*!50003 CREATE*/ /*!50017 DEFINER=`root`@`localhost`*/ /*!50003 TRIGGER t2 AFTER UPDATE ON t FOR EACH ROW \
                 IF NEW.a <> OLD.a THEN INSERT INTO log VALUES (NEW.a); END IF */{after}"
            ),
            "END IF",
        );
        ends_with(
            &format!("CREATE EVENT e ON SCHEDULE EVERY 1 DAY STARTS (NOW() + INTERVAL 1 HOUR) DO BEGIN DELETE FROM s; END{after}"),
            "DELETE FROM s ; END",
        );
        ends_with(&format!("ALTER EVENT e DO BEGIN DELETE FROM s; END{after}"), "DELETE FROM s ; END");
        ends_with(
            &format!("CREATE PROCEDURE p() BEGIN CREATE EVENT e ON SCHEDULE AT NOW() DO BEGIN DELETE FROM s; END; END{after}"),
            "END ; END",
        );
        ends_with(&format!("BEGIN NOT ATOMIC DECLARE x INT; SET x = 1; END{after}"), "SET x = 1 ; END");
        // The definition alone: to the end of the text.
        assert_eq!(definition("CREATE PROCEDURE p() BEGIN SELECT 1; END").as_deref(), Some("CREATE PROCEDURE p ( ) BEGIN SELECT 1 ; END"));
    }

    #[test]
    fn simple_bodies_and_other_statements_end_at_their_first_semicolon() {
        for sql in [
            "CREATE FUNCTION f() RETURNS INT RETURN 1; UPDATE t SET a = 1",
            "CREATE FUNCTION f(x INT) RETURNS INT DETERMINISTIC RETURN CASE WHEN x > 0 THEN 1 ELSE IF(x < 0, -1, 0) END",
            "CREATE PROCEDURE p() UPDATE t SET a = IF(a, 1, 0); UPDATE t SET a = 1",
            "CREATE PROCEDURE begin() SELECT 1",
            "CREATE TRIGGER t1 BEFORE INSERT ON t FOR EACH ROW SET NEW.a = 1; UPDATE t SET a = 1",
            "CREATE EVENT e ON SCHEDULE EVERY 1 HOUR DO DELETE FROM s WHERE a < NOW(); UPDATE t SET a = 1",
            "CREATE FUNCTION f RETURNS STRING SONAME 'lib.so'",
            "CREATE TABLE events (event VARCHAR(10), begin DATETIME); UPDATE t SET a = 1",
            "BEGIN; UPDATE t SET a = 1; COMMIT",
            "ALTER PROCEDURE p COMMENT 'x'",
            "SELECT 1",
        ] {
            assert_eq!(definition(sql), None, "{sql}");
        }
    }

    #[test]
    fn bodies_that_cannot_be_followed_run_to_the_end() {
        for sql in [
            // Unbalanced: the server rejects these; capgate keeps the definition whole.
            "CREATE PROCEDURE p() BEGIN SELECT 1; UPDATE t SET a = 1",
            "CREATE PROCEDURE p() IF 1 THEN SELECT 1; END LOOP; UPDATE t SET a = 1",
            // sql_mode = ORACLE syntax.
            "CREATE PROCEDURE p() BEGIN WHILE 1 LOOP SELECT 1; END LOOP; END; UPDATE t SET a = 1",
        ] {
            let text = definition(sql).unwrap_or_else(|| panic!("{sql}"));
            assert!(text.ends_with("UPDATE t SET a = 1"), "{sql}: {text}");
        }
        // Hostile nesting is bounded.
        let deep = format!("CREATE PROCEDURE p() {} SELECT 1; {}; SELECT 2", "BEGIN ".repeat(500), "END; ".repeat(499) + "END");
        assert!(definition(&deep).is_some());
    }
}
