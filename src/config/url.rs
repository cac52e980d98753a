//! Connection URLs for the primary and the replicas: `postgres://user:password@host:port/db?k=v`,
//! or `mysql://` / `mariadb://` with the same parts and the same TLS parameters.
//!
//! Only what capgate acts on is accepted; an unknown parameter is an error rather than being
//! silently ignored, so a DBA who writes `sslmode=verify_full` finds out at load time. The
//! password never appears in `Debug` or `Display` output.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How the proxy secures its own connection to a database, with libpq's meanings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum SslMode {
    /// Never TLS.
    Disable,
    /// TLS if the server offers it, without verifying the certificate (libpq's default).
    Prefer,
    /// TLS or fail; no certificate verification.
    Require,
    /// TLS with the chain verified against `sslrootcert`, any host name.
    VerifyCa,
    /// TLS with the chain and the host name verified.
    VerifyFull,
}

impl SslMode {
    fn parse(s: &str) -> Option<SslMode> {
        Some(match s {
            "disable" => SslMode::Disable,
            "allow" | "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            _ => return None,
        })
    }

    pub fn verifies(self) -> bool {
        matches!(self, SslMode::VerifyCa | SslMode::VerifyFull)
    }
}

/// Which wire protocol a database speaks: chosen by the URL's scheme, it picks the front end
/// `capgate run` starts and the SQL dialect statements are classified in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// `postgres://` or `postgresql://`
    Postgres,
    /// `mysql://` or `mariadb://`
    MySql,
}

impl Scheme {
    /// The default port of the protocol.
    pub fn default_port(self) -> u16 {
        match self {
            Scheme::Postgres => 5432,
            Scheme::MySql => 3306,
        }
    }

    /// The scheme as written in URLs capgate prints.
    pub fn name(self) -> &'static str {
        match self {
            Scheme::Postgres => "postgres",
            Scheme::MySql => "mysql",
        }
    }
}

/// Where the root certificates for verification come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootCert {
    File(PathBuf),
    /// The operating system's bundle (`sslrootcert=system`, as in libpq 16+).
    System,
}

/// A parsed database URL.
#[derive(Clone, PartialEq, Eq)]
pub struct DbUrl {
    pub scheme: Scheme,
    pub user: Option<String>,
    pub password: Option<String>,
    pub host: String,
    pub port: u16,
    pub dbname: Option<String>,
    pub sslmode: SslMode,
    pub sslrootcert: Option<RootCert>,
    pub sslcert: Option<PathBuf>,
    pub sslkey: Option<PathBuf>,
    pub connect_timeout: Duration,
    /// The sslmode was not written in the URL but implied by capgate's default for links
    /// between sites (`verify-full`): error messages must not claim the URL says it.
    pub sslmode_implied: bool,
}

impl DbUrl {
    /// Parse `s`; relative certificate paths are resolved against `base` (the directory of
    /// the configuration file). The error says what was expected.
    pub fn parse(s: &str, base: &Path) -> Result<DbUrl, String> {
        let (scheme, rest) = if let Some(rest) = s.strip_prefix("postgres://").or_else(|| s.strip_prefix("postgresql://")) {
            (Scheme::Postgres, rest)
        } else if let Some(rest) = s.strip_prefix("mysql://").or_else(|| s.strip_prefix("mariadb://")) {
            (Scheme::MySql, rest)
        } else {
            return Err("expected a URL starting with postgres://, postgresql://, mysql:// or mariadb://".into());
        };
        let (before_query, query) = match rest.split_once('?') {
            Some((a, q)) => (a, Some(q)),
            None => (rest, None),
        };
        let (authority, path) = match before_query.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (before_query, None),
        };
        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        let (user, password) = match userinfo {
            Some(u) => match u.split_once(':') {
                Some((n, p)) => (Some(decode(n)?), Some(decode(p)?)),
                None => (Some(decode(u)?), None),
            },
            None => (None, None),
        };
        if hostport.contains(',') {
            return Err("several hosts in one URL are not supported: give one host".into());
        }
        let (host, port) = split_host_port(hostport, scheme.default_port())?;
        if host.is_empty() {
            return Err(match scheme {
                Scheme::Postgres => "the URL has no host: give HOST:PORT, or a Unix socket directory as %2Fvar%2Frun%2Fpostgresql",
                Scheme::MySql => "the URL has no host: give HOST:PORT, or a Unix socket file as %2Frun%2Fmysqld%2Fmysqld.sock",
            }
            .into());
        }
        let dbname = path.filter(|p| !p.is_empty()).map(decode).transpose()?;
        let mut url = DbUrl {
            scheme,
            user: user.filter(|u| !u.is_empty()),
            password,
            host,
            port,
            dbname,
            sslmode: SslMode::Prefer,
            sslrootcert: None,
            sslcert: None,
            sslkey: None,
            connect_timeout: Duration::from_secs(5),
            sslmode_implied: false,
        };
        for pair in query.unwrap_or_default().split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').ok_or_else(|| format!("parameter `{pair}` has no value"))?;
            let v = decode(v)?;
            match k {
                "sslmode" => {
                    url.sslmode = SslMode::parse(&v)
                        .ok_or_else(|| format!("sslmode `{v}`: expected disable, prefer, require, verify-ca or verify-full"))?
                }
                "sslrootcert" if v == "system" => url.sslrootcert = Some(RootCert::System),
                "sslrootcert" => url.sslrootcert = Some(RootCert::File(base.join(v))),
                "sslcert" => url.sslcert = Some(base.join(v)),
                "sslkey" => url.sslkey = Some(base.join(v)),
                "host" if v.starts_with('/') => url.host = v,
                "connect_timeout" => {
                    let secs: u64 = v.parse().map_err(|_| format!("connect_timeout `{v}`: expected a whole number of seconds"))?;
                    url.connect_timeout = Duration::from_secs(secs.max(1));
                }
                other => {
                    return Err(format!(
                    "unknown URL parameter `{other}` (supported: sslmode, sslrootcert, sslcert, sslkey, connect_timeout, host=/socket/dir)"
                ))
                }
            }
        }
        if url.unix_socket().is_some() && url.sslmode > SslMode::Prefer {
            return Err("TLS over a Unix socket is not supported: use sslmode=disable or prefer with a socket directory".into());
        }
        if url.sslmode.verifies() && url.sslrootcert.is_none() {
            return Err("sslmode=verify-ca/verify-full needs sslrootcert=FILE (or sslrootcert=system)".into());
        }
        if url.sslcert.is_some() != url.sslkey.is_some() {
            return Err("sslcert and sslkey go together".into());
        }
        Ok(url)
    }

    /// The Unix socket path when the host starts with `/`: for PostgreSQL the host is the
    /// socket's directory (libpq's convention), e.g. `/var/run/postgresql/.s.PGSQL.5432`; for
    /// MySQL it is the socket file itself, e.g. `/run/mysqld/mysqld.sock`.
    pub fn unix_socket(&self) -> Option<PathBuf> {
        if !self.host.starts_with('/') {
            return None;
        }
        Some(match self.scheme {
            Scheme::Postgres => Path::new(&self.host).join(format!(".s.PGSQL.{}", self.port)),
            Scheme::MySql => PathBuf::from(&self.host),
        })
    }

    /// `host:port` (or the socket path), for connecting and for messages.
    pub fn address(&self) -> String {
        if let Some(path) = self.unix_socket() {
            path.display().to_string()
        } else if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

fn split_host_port(hostport: &str, default_port: u16) -> Result<(String, u16), String> {
    let (host, port) = if let Some(rest) = hostport.strip_prefix('[') {
        let (h, after) = rest.split_once(']').ok_or("unclosed [ in IPv6 host")?;
        (h.to_owned(), after.strip_prefix(':'))
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (h.to_owned(), Some(p)),
            None => (hostport.to_owned(), None),
        }
    };
    let port = match port {
        Some(p) => p.parse().map_err(|_| format!("port `{p}`: expected a number from 1 to 65535"))?,
        None => default_port,
    };
    Ok((decode(&host)?, port))
}

/// Percent-decoding (RFC 3986), strict: a bad escape is an error.
fn decode(s: &str) -> Result<String, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3).ok_or_else(|| format!("bad percent-escape in `{s}`"))?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| format!("bad percent-escape in `{s}`"))?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("`{s}` does not decode to UTF-8"))
}

impl fmt::Display for DbUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://", self.scheme.name())?;
        if let Some(u) = &self.user {
            write!(f, "{u}")?;
            if self.password.is_some() {
                write!(f, ":***")?;
            }
            write!(f, "@")?;
        }
        write!(f, "{}/{}", self.address(), self.dbname.as_deref().unwrap_or(""))
    }
}

impl fmt::Debug for DbUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DbUrl({self}, sslmode={:?})", self.sslmode)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_url() {
        let u =
            DbUrl::parse("postgres://repl:s%40cret@10.0.0.2:5433/app?sslmode=verify-full&sslrootcert=ca.pem", Path::new("/etc/capgate"))
                .unwrap();
        assert_eq!(u.user.as_deref(), Some("repl"));
        assert_eq!(u.password.as_deref(), Some("s@cret"));
        assert_eq!((u.host.as_str(), u.port), ("10.0.0.2", 5433));
        assert_eq!(u.dbname.as_deref(), Some("app"));
        assert_eq!(u.sslmode, SslMode::VerifyFull);
        assert_eq!(u.sslrootcert, Some(RootCert::File("/etc/capgate/ca.pem".into())));
        assert!(!format!("{u} {u:?}").contains("cret"));
    }

    #[test]
    fn defaults_and_errors() {
        let u = DbUrl::parse("postgresql://[::1]/db", Path::new(".")).unwrap();
        assert_eq!((u.host.as_str(), u.port, u.sslmode), ("::1", 5432, SslMode::Prefer));
        assert!(DbUrl::parse("mysqlx://x@h/db", Path::new(".")).is_err());
        assert!(DbUrl::parse("postgres://h/db?sslmode=verify-full", Path::new(".")).unwrap_err().contains("sslrootcert"));
        assert!(DbUrl::parse("postgres://h/db?bogus=1", Path::new(".")).unwrap_err().contains("bogus"));
        assert!(DbUrl::parse("postgres://h:99999/db", Path::new(".")).is_err());
        let u = DbUrl::parse("postgres://app@%2Fvar%2Frun%2Fpostgresql:5433/db", Path::new(".")).unwrap();
        assert_eq!(u.unix_socket(), Some(PathBuf::from("/var/run/postgresql/.s.PGSQL.5433")));
        let u = DbUrl::parse("postgres://app@localhost/db?host=/tmp", Path::new(".")).unwrap();
        assert_eq!(u.address(), "/tmp/.s.PGSQL.5432");
    }

    #[test]
    fn mysql_urls_take_the_same_parameters() {
        let u = DbUrl::parse("mariadb://app:pw@db1/shop?sslmode=verify-ca&sslrootcert=ca.pem", Path::new("/etc/capgate")).unwrap();
        assert_eq!((u.scheme, u.host.as_str(), u.port), (Scheme::MySql, "db1", 3306));
        assert_eq!((u.dbname.as_deref(), u.sslmode), (Some("shop"), SslMode::VerifyCa));
        assert_eq!(u.to_string(), "mysql://app:***@db1:3306/shop");
        let u = DbUrl::parse("mysql://app@%2Frun%2Fmysqld%2Fmysqld.sock/shop?sslmode=disable", Path::new(".")).unwrap();
        assert_eq!(u.unix_socket(), Some(PathBuf::from("/run/mysqld/mysqld.sock")));
        assert!(DbUrl::parse("mysql://h/db?sslmode=verify_full", Path::new(".")).unwrap_err().contains("verify_full"));
        assert_eq!(DbUrl::parse("postgres://h/db", Path::new(".")).unwrap().scheme, Scheme::Postgres);
    }
}
