//! What the user typed, turned into settings the commands can trust:
//! connection strings parsed once, the stream key resolved, and a `Debug`
//! that never shows a password.

use std::fmt;
use std::str::FromStr;

use crate::cli::GlobalArgs;
use crate::error::UsageError;

/// Settings shared by every command.
#[derive(Debug)]
pub struct Settings {
    database: Option<DatabaseUrl>,
    pub redis: RedisUrl,
    pub stream_key: String,
    pub quiet: bool,
}

impl Settings {
    pub fn from_args(args: &GlobalArgs) -> Result<Self, UsageError> {
        let database = args
            .database_url
            .as_deref()
            .filter(|url| !url.trim().is_empty())
            .map(DatabaseUrl::parse)
            .transpose()?;
        let redis = RedisUrl::parse(&args.redis_url)?;
        let stream_key = match &args.stream {
            Some(key) if !key.is_empty() => key.clone(),
            Some(_) => return Err(UsageError("--stream must not be empty".into())),
            None if args.redis_ns.is_empty() => {
                return Err(UsageError(
                    "the stream namespace (--redis-ns / GENALYTICS_REDIS_NS) must not be empty"
                        .into(),
                ));
            }
            None => stream_key_for(&args.redis_ns),
        };
        Ok(Settings {
            database,
            redis,
            stream_key,
            quiet: args.quiet,
        })
    }

    /// The database, for commands that need one.
    pub fn database(&self) -> Result<&DatabaseUrl, UsageError> {
        self.database.as_ref().ok_or_else(|| {
            UsageError(
                "no PostgreSQL database given: set DATABASE_URL or pass --database-url".into(),
            )
        })
    }
}

/// The stream the service's producer writes to.
pub fn stream_key_for(namespace: &str) -> String {
    format!("{namespace}:generation_events:stream")
}

/// A parsed PostgreSQL connection string. Keeps the parsed form so errors
/// can name host and port without ever echoing the string itself.
#[derive(Clone)]
pub struct DatabaseUrl {
    pub config: postgres::Config,
    pub tls: PgTls,
}

/// How the connection is secured, as libpq's `sslmode` and `sslrootcert`
/// say: the driver knows only disable/prefer/require, so the verifying
/// modes and the root certificate are taken out of the string here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PgTls {
    /// `sslmode=disable`, and no sslmode at all.
    Off,
    /// `prefer` and `require`: encrypted, not verified.
    Encrypt,
    /// `verify-ca`: the certificate must chain to a trusted root.
    VerifyCa(Option<std::path::PathBuf>),
    /// `verify-full`: that, and the host name must match.
    VerifyFull(Option<std::path::PathBuf>),
}

/// Splits libpq TLS options the driver does not know out of a URL or a
/// `key=value` string; returns the string the driver gets and the TLS mode.
fn split_tls(url: &str) -> Result<(String, PgTls), UsageError> {
    let bad = |what: &str| {
        UsageError(format!(
            "the PostgreSQL URL (DATABASE_URL / --database-url) has {what}"
        ))
    };
    let mut mode = None;
    let mut root = None;
    let mut take = |key: &str, value: &str| -> Result<bool, UsageError> {
        match key {
            "sslmode" => {
                mode = Some(value.to_string());
                Ok(true)
            }
            "sslrootcert" => {
                root = Some(std::path::PathBuf::from(value));
                Ok(true)
            }
            _ => Ok(false),
        }
    };
    let mut rest = Vec::new();
    let rebuilt = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let (base, query) = url.split_once('?').unwrap_or((url, ""));
        for (key, value) in url::form_urlencoded::parse(query.as_bytes()) {
            if !take(&key, &value)? {
                rest.push((key.into_owned(), value.into_owned()));
            }
        }
        let mut query = url::form_urlencoded::Serializer::new(String::new());
        for (key, value) in &rest {
            query.append_pair(key, value);
        }
        (base.to_string(), query.finish(), '?', '&')
    } else {
        for token in url.split_whitespace() {
            match token.split_once('=') {
                Some((key, value)) if take(key, value)? => {}
                _ => rest.push((token.to_string(), String::new())),
            }
        }
        (
            String::new(),
            rest.iter()
                .map(|(t, _)| t.as_str())
                .collect::<Vec<_>>()
                .join(" "),
            ' ',
            ' ',
        )
    };
    let (base, query, first, next) = rebuilt;
    let (driver_mode, tls) = match mode.as_deref() {
        // Unlike libpq, no sslmode means no TLS: setting up OpenSSL costs
        // ~70 ms a run, and an unverified "prefer" protects little.
        None | Some("disable") => ("disable", PgTls::Off),
        Some("prefer") => ("prefer", PgTls::Encrypt),
        Some("allow" | "require") => ("require", PgTls::Encrypt),
        Some("verify-ca") => ("require", PgTls::VerifyCa(root)),
        Some("verify-full") => ("require", PgTls::VerifyFull(root)),
        Some(_) => {
            return Err(bad(
                "an sslmode other than disable, prefer, require, verify-ca or verify-full",
            ));
        }
    };
    let joined = if query.is_empty() {
        format!("{base}{first}sslmode={driver_mode}")
    } else {
        format!("{base}{first}{query}{next}sslmode={driver_mode}")
    };
    Ok((joined.trim().to_string(), tls))
}

impl DatabaseUrl {
    pub fn parse(url: &str) -> Result<Self, UsageError> {
        let (url, tls) = split_tls(url)?;
        let mut config = postgres::Config::from_str(&url).map_err(|err| {
            UsageError(format!(
                "the PostgreSQL URL (DATABASE_URL / --database-url) is not valid: {err}"
            ))
        })?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(std::time::Duration::from_secs(10));
        }
        if config.get_application_name().is_none() {
            config.application_name("genalytics");
        }
        Ok(DatabaseUrl { config, tls })
    }

    /// `host:port` (or the socket directory) for messages.
    pub fn target(&self) -> String {
        let host = match self.config.get_hosts().first() {
            Some(postgres::config::Host::Tcp(host)) => host.clone(),
            Some(postgres::config::Host::Unix(path)) => path.display().to_string(),
            None => "localhost".to_string(),
        };
        let port = self.config.get_ports().first().copied().unwrap_or(5432);
        format!("{host}:{port}")
    }

    pub fn user(&self) -> Option<&str> {
        self.config.get_user()
    }

    pub fn dbname(&self) -> Option<&str> {
        self.config.get_dbname()
    }
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DatabaseUrl")
            .field("target", &self.target())
            .field("user", &self.user())
            .field("dbname", &self.dbname())
            .field(
                "password",
                &self.config.get_password().map(|_| "<redacted>"),
            )
            .field("tls", &self.tls)
            .finish_non_exhaustive()
    }
}

/// A parsed Redis URL.
#[derive(Clone)]
pub struct RedisUrl {
    pub info: redis::ConnectionInfo,
}

impl RedisUrl {
    pub fn parse(url: &str) -> Result<Self, UsageError> {
        use redis::IntoConnectionInfo;
        let info = url.into_connection_info().map_err(|err| {
            UsageError(format!(
                "the Redis URL (REDIS_URL / --redis-url) is not valid: {}",
                err.detail()
                    .unwrap_or("expected redis://host:port or rediss://host:port")
            ))
        })?;
        Ok(RedisUrl { info })
    }

    /// `host:port` (or the socket path) for messages.
    pub fn target(&self) -> String {
        match self.info.addr() {
            redis::ConnectionAddr::Tcp(host, port)
            | redis::ConnectionAddr::TcpTls { host, port, .. } => format!("{host}:{port}"),
            redis::ConnectionAddr::Unix(path) => path.display().to_string(),
            other => format!("{other:?}"),
        }
    }
}

impl fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisUrl")
            .field("target", &self.target())
            .field(
                "password",
                &self.info.redis_settings().password().map(|_| "<redacted>"),
            )
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_never_contains_the_password() {
        let db = DatabaseUrl::parse("postgres://alice:s3cr3t-pw@db.example:6543/app").unwrap();
        let redis = RedisUrl::parse("redis://:s3cr3t-pw@cache.example:6380/0").unwrap();
        let shown = format!("{db:?} {redis:?}");
        assert!(!shown.contains("s3cr3t-pw"), "{shown}");
        assert!(shown.contains("db.example:6543"), "{shown}");
        assert!(shown.contains("cache.example:6380"), "{shown}");
    }

    #[test]
    fn invalid_urls_are_usage_errors_without_the_password() {
        let err = DatabaseUrl::parse("postgres://alice:s3cr3t-pw@db.example:notaport/app")
            .unwrap_err()
            .to_string();
        assert!(err.contains("DATABASE_URL"), "{err}");
        assert!(!err.contains("s3cr3t-pw"), "{err}");
        let err = RedisUrl::parse("http://:s3cr3t-pw@cache.example")
            .unwrap_err()
            .to_string();
        assert!(err.contains("REDIS_URL"), "{err}");
        assert!(!err.contains("s3cr3t-pw"), "{err}");
    }

    #[test]
    fn libpq_tls_options_are_understood() {
        let url = |text: &str| DatabaseUrl::parse(text).unwrap();
        assert_eq!(url("postgres://h/db").tls, PgTls::Off);
        assert_eq!(url("postgres://h/db?sslmode=prefer").tls, PgTls::Encrypt);
        assert_eq!(url("postgres://h/db?sslmode=disable").tls, PgTls::Off);
        assert_eq!(
            url("postgres://u:p@h:5433/db?sslmode=verify-full&sslrootcert=/etc/ca%20root.pem&connect_timeout=3").tls,
            PgTls::VerifyFull(Some("/etc/ca root.pem".into()))
        );
        let parsed = url("postgres://u:p@h:5433/db?sslmode=verify-ca&connect_timeout=3");
        assert_eq!(parsed.tls, PgTls::VerifyCa(None));
        assert_eq!(
            parsed.config.get_ssl_mode(),
            postgres::config::SslMode::Require
        );
        assert_eq!(
            parsed.config.get_connect_timeout(),
            Some(&std::time::Duration::from_secs(3))
        );
        assert_eq!(parsed.target(), "h:5433");
        let keyword = url("host=h port=5433 dbname=db sslmode=verify-full sslrootcert=/ca.pem");
        assert_eq!(keyword.tls, PgTls::VerifyFull(Some("/ca.pem".into())));
        assert!(DatabaseUrl::parse("postgres://h/db?sslmode=sometimes").is_err());
    }

    #[test]
    fn stream_key_follows_the_producer_layout() {
        assert_eq!(
            stream_key_for("genonaut"),
            "genonaut:generation_events:stream"
        );
    }
}
