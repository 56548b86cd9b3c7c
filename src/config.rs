//! What the user typed, turned into settings the commands can trust:
//! connection strings parsed once, the stream key resolved, and a `Debug`
//! that never shows a password.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::error::UsageError;

/// When tables are styled (bold headers): `auto` on a terminal unless
/// `NO_COLOR` is set.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Color {
    #[default]
    Auto,
    Always,
    Never,
}

/// Settings shared by every command.
#[derive(Debug)]
pub struct Settings {
    /// None when no URL was given: only commands that need one say so.
    pub database: Option<DatabaseUrl>,
    /// Redis, or the first seed node of a cluster, or the first sentinel.
    pub redis: RedisUrl,
    /// Where a key's commands go: `redis`, a cluster or a sentinel's master.
    pub redis_nodes: RedisNodes,
    /// The stream a command works on: the first of `streams`.
    pub stream_key: String,
    /// Every `--stream` given, or the key built from the namespace when
    /// neither it nor a pattern is: keys taken literally, whatever
    /// characters they hold.
    pub streams: Vec<String>,
    /// Every `--stream-pattern` (Redis globs, for transfer).
    pub patterns: Vec<String>,
    /// Whole days of raw events kept: day partitions are made inside them.
    pub raw_retention_days: i32,
    pub quiet: bool,
    pub color: Color,
}

/// How Redis is deployed, which decides which server holds a key.
#[derive(Debug, Clone)]
pub enum RedisNodes {
    /// One server: `redis`.
    Server,
    /// A cluster: every seed node (`--redis-cluster`).
    Cluster(Vec<RedisUrl>),
    /// The master that sentinels monitor under a name
    /// (`--redis-sentinel NAME`), asked of every sentinel given.
    Sentinel {
        master: String,
        sentinels: Vec<RedisUrl>,
        /// Which sentinel answered last (asked first next time).
        answered: std::sync::Arc<std::sync::Mutex<Option<usize>>>,
    },
}

impl Settings {
    /// Whether more than one stream is named: `--stream` more than once,
    /// or a pattern.
    pub fn several_streams(&self) -> bool {
        self.streams.len() > 1 || !self.patterns.is_empty()
    }

    /// The database, for commands that need one.
    pub fn database(&self) -> Result<&DatabaseUrl, UsageError> {
        self.database.as_ref().ok_or_else(|| {
            UsageError(
                "no PostgreSQL database given: set DATABASE_URL, pass --database-url, or set libpq's \
                 PGHOST, PGPORT, PGUSER and PGDATABASE"
                    .into(),
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
    /// `target_session_attrs`, taken out of the string for the driver.
    pub session: SessionAttrs,
}

/// How long connecting to one PostgreSQL server may take when the URL
/// sets no `connect_timeout`.
pub const DEFAULT_CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// libpq's `target_session_attrs`: which of the listed servers a session
/// may use. The driver knows only `any`, `read-write` and `read-only`, so
/// the servers are tried one by one and asked (`db::connect`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SessionAttrs {
    #[default]
    Any,
    /// Takes writes: not a standby, `default_transaction_read_only` off.
    ReadWrite,
    ReadOnly,
    /// Not in recovery.
    Primary,
    /// In recovery: a hot standby.
    Standby,
    /// A standby if any listed server is one, else any server.
    PreferStandby,
}

impl SessionAttrs {
    const ALL: [SessionAttrs; 6] = [
        SessionAttrs::Any,
        SessionAttrs::ReadWrite,
        SessionAttrs::ReadOnly,
        SessionAttrs::Primary,
        SessionAttrs::Standby,
        SessionAttrs::PreferStandby,
    ];

    pub fn keyword(self) -> &'static str {
        match self {
            SessionAttrs::Any => "any",
            SessionAttrs::ReadWrite => "read-write",
            SessionAttrs::ReadOnly => "read-only",
            SessionAttrs::Primary => "primary",
            SessionAttrs::Standby => "standby",
            SessionAttrs::PreferStandby => "prefer-standby",
        }
    }

    /// Whether a server in recovery or not, read-only or not, will do
    /// (prefer-standby's second pass is `Any`).
    pub fn accepts(self, in_recovery: bool, read_only: bool) -> bool {
        match self {
            SessionAttrs::Any => true,
            SessionAttrs::ReadWrite => !read_only,
            SessionAttrs::ReadOnly => read_only,
            SessionAttrs::Primary => !in_recovery,
            SessionAttrs::Standby | SessionAttrs::PreferStandby => in_recovery,
        }
    }
}

/// How the connection is secured, as libpq's `sslmode`, `sslrootcert`,
/// `sslcert` and `sslkey` say: the driver knows only disable/prefer/require,
/// so the verifying modes and the files are taken out of the string here.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PgTls {
    pub mode: SslMode,
    /// `sslrootcert`: with it, the only trusted root (as libpq); `system`
    /// for the system's store.
    pub root: Option<PathBuf>,
    /// `sslcert` and `sslkey`: a client certificate (PEM, PKCS#8 key).
    pub client: Option<(PathBuf, PathBuf)>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub enum SslMode {
    /// `sslmode=disable`, and no sslmode at all.
    #[default]
    Off,
    /// `allow`, `prefer` and `require`: encrypted, and verified as
    /// `verify-ca` only when a root certificate is at hand (as libpq).
    Encrypt,
    /// `verify-ca`: the certificate must chain to a trusted root.
    VerifyCa,
    /// `verify-full`: that, and the host name must match.
    VerifyFull,
}

/// libpq's URI percent-decoding (`+` stays a plus, unlike in forms).
fn percent_decode(text: &str) -> String {
    percent_encoding::percent_decode_str(text)
        .decode_utf8_lossy()
        .into_owned()
}

/// The `key=value` tokens of a libpq keyword string, with where each one
/// ends, honouring single quotes and backslash escapes in values.
fn conninfo_tokens(text: &str) -> Vec<(String, String, std::ops::Range<usize>)> {
    let bytes = text.as_bytes();
    let mut tokens = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        while at < bytes.len() && bytes[at].is_ascii_whitespace() {
            at += 1;
        }
        if at >= bytes.len() {
            break;
        }
        let start = at;
        while at < bytes.len() && bytes[at] != b'=' && !bytes[at].is_ascii_whitespace() {
            at += 1;
        }
        let key = text[start..at].to_string();
        while at < bytes.len() && bytes[at].is_ascii_whitespace() {
            at += 1;
        }
        let mut value = String::new();
        if at < bytes.len() && bytes[at] == b'=' {
            at += 1;
            while at < bytes.len() && bytes[at].is_ascii_whitespace() {
                at += 1;
            }
            let quoted = at < bytes.len() && bytes[at] == b'\'';
            if quoted {
                at += 1;
            }
            let mut chars = text[at..].char_indices();
            let mut end = text.len();
            while let Some((offset, c)) = chars.next() {
                match c {
                    '\\' => {
                        if let Some((_, next)) = chars.next() {
                            value.push(next);
                        }
                    }
                    '\'' if quoted => {
                        end = at + offset + 1;
                        break;
                    }
                    c if !quoted && c.is_whitespace() => {
                        end = at + offset;
                        break;
                    }
                    c => value.push(c),
                }
            }
            at = end;
        }
        tokens.push((key, value, start..at));
    }
    tokens
}

/// Takes libpq's TLS options out of a URL or keyword string, leaving every
/// other parameter exactly as written, for the driver to parse as libpq
/// would; returns the string the driver gets and the TLS settings.
fn split_tls(url: &str) -> Result<(String, PgTls, SessionAttrs), UsageError> {
    let bad = |what: &str| {
        UsageError(format!(
            "the PostgreSQL URL (DATABASE_URL / --database-url) has {what}"
        ))
    };
    let mut mode = None;
    let mut root = None;
    let mut cert = None;
    let mut key = None;
    let mut session = None;
    let mut take = |name: &str, value: String| -> bool {
        match name {
            "target_session_attrs" => session = Some(value),
            "sslmode" => mode = Some(value),
            "sslrootcert" => root = Some(PathBuf::from(value)),
            "sslcert" => cert = Some(PathBuf::from(value)),
            "sslkey" => key = Some(PathBuf::from(value)),
            _ => return false,
        }
        true
    };
    let (rest, separator) = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let (base, query) = url.split_once('?').unwrap_or((url, ""));
        let kept: Vec<&str> = query
            .split('&')
            .filter(|piece| !piece.is_empty())
            .filter(|piece| {
                let (name, value) = piece.split_once('=').unwrap_or((piece, ""));
                !take(&percent_decode(name), percent_decode(value))
            })
            .collect();
        if kept.is_empty() {
            (format!("{base}?"), "")
        } else {
            (format!("{base}?{}", kept.join("&")), "&")
        }
    } else {
        let mut kept = String::new();
        for (name, value, span) in conninfo_tokens(url) {
            if !take(&name, value) {
                kept.push_str(&url[span]);
                kept.push(' ');
            }
        }
        (kept, "")
    };
    let (driver_mode, mode) = match mode.as_deref() {
        // A root certificate with no sslmode: TLS wanted, as libpq's
        // default (prefer, verified with that root; verify-full for the
        // system's roots).
        None if root.as_deref().is_some_and(|r| r.as_os_str() == "system") => {
            ("require", SslMode::VerifyFull)
        }
        None if root.is_some() => ("prefer", SslMode::Encrypt),
        // Unlike libpq, no sslmode means no TLS: setting up OpenSSL slows
        // every short run from cron, and an unverified "prefer" protects little.
        None | Some("disable") => ("disable", SslMode::Off),
        // libpq's allow tries without TLS first; both it and prefer take
        // whichever the server offers.
        Some("allow" | "prefer") => ("prefer", SslMode::Encrypt),
        Some("require") => ("require", SslMode::Encrypt),
        Some("verify-ca") => ("require", SslMode::VerifyCa),
        Some("verify-full") => ("require", SslMode::VerifyFull),
        Some(_) => {
            return Err(bad(
                "an sslmode other than disable, allow, prefer, require, verify-ca or verify-full",
            ));
        }
    };
    let client = match (cert, key) {
        (Some(cert), Some(key)) => Some((cert, key)),
        (None, None) => None,
        _ => {
            return Err(bad(
                "only one of sslcert and sslkey; a client certificate needs both",
            ));
        }
    };
    let session = match session.as_deref() {
        None => SessionAttrs::Any,
        Some(text) => SessionAttrs::ALL
            .into_iter()
            .find(|attrs| attrs.keyword() == text)
            .ok_or_else(|| {
                bad(
                    "a target_session_attrs other than any, read-write, read-only, primary, \
                     standby or prefer-standby",
                )
            })?,
    };
    Ok((
        format!("{rest}{separator}sslmode={driver_mode}"),
        PgTls { mode, root, client },
        session,
    ))
}

impl DatabaseUrl {
    pub fn parse(url: &str) -> Result<Self, UsageError> {
        let (url, tls, session) = split_tls(url)?;
        let mut config = postgres::Config::from_str(&url).map_err(|err| {
            UsageError(format!(
                "the PostgreSQL URL (DATABASE_URL / --database-url) is not valid: {err}"
            ))
        })?;
        // A password with an unencoded '@' leaves part of it in the host,
        // where every message would show it.
        if config
            .get_hosts()
            .iter()
            .any(|host| matches!(host, postgres::config::Host::Tcp(name) if name.contains('@')))
        {
            return Err(UsageError(
                "the PostgreSQL URL (DATABASE_URL / --database-url) has an '@' after the one that ends \
                 the user and password: percent-encode an '@' in the password as %40"
                    .into(),
            ));
        }
        // As libpq: one port for every host or one each, and as many
        // addresses as hosts when any is given.
        let (hosts, ports, addrs) = (
            config.get_hosts().len(),
            config.get_ports().len(),
            config.get_hostaddrs().len(),
        );
        if ports > 1 && ports != hosts {
            return Err(UsageError(format!(
                "the PostgreSQL URL (DATABASE_URL / --database-url) has {ports} port numbers for \
                 {hosts} hosts: give one port for all, or one for each host"
            )));
        }
        if addrs > 0 && hosts > 0 && addrs != hosts {
            return Err(UsageError(format!(
                "the PostgreSQL URL (DATABASE_URL / --database-url) has {addrs} hostaddr values for \
                 {hosts} hosts: give one for each host"
            )));
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(DEFAULT_CONNECT_TIMEOUT);
        }
        if config.get_application_name().is_none() {
            config.application_name("genalytics");
        }
        // A server gone silent (a network partition, not a closed
        // connection) is noticed within about a minute, not hours: a
        // follower must reconnect rather than hang.
        if config.get_tcp_user_timeout().is_none() {
            config.tcp_user_timeout(std::time::Duration::from_secs(60));
        }
        if config.get_keepalives_idle() == std::time::Duration::from_secs(2 * 60 * 60) {
            config.keepalives_idle(std::time::Duration::from_secs(30));
        }
        Ok(DatabaseUrl {
            config,
            tls,
            session,
        })
    }

    /// One URL per listed server, in order (shuffled with
    /// `load_balance_hosts=random`), each with everything else this one
    /// says: for trying them one by one.
    pub fn each_host(&self) -> Vec<DatabaseUrl> {
        let c = &self.config;
        let hosts = c.get_hosts();
        if hosts.is_empty() {
            return vec![DatabaseUrl {
                config: c.clone(),
                tls: self.tls.clone(),
                session: SessionAttrs::Any,
            }];
        }
        let mut each = (0..hosts.len())
            .map(|i| {
                let mut one = postgres::Config::new();
                match &hosts[i] {
                    postgres::config::Host::Tcp(host) => one.host(host),
                    postgres::config::Host::Unix(path) => one.host_path(path),
                };
                if let Some(addr) = c.get_hostaddrs().get(i) {
                    one.hostaddr(*addr);
                }
                // One port for every host, or one each.
                if let Some(port) = c.get_ports().get(i).or(c.get_ports().first()) {
                    one.port(*port);
                }
                if let Some(user) = c.get_user() {
                    one.user(user);
                }
                if let Some(password) = c.get_password() {
                    one.password(password);
                }
                if let Some(dbname) = c.get_dbname() {
                    one.dbname(dbname);
                }
                if let Some(options) = c.get_options() {
                    one.options(options);
                }
                if let Some(name) = c.get_application_name() {
                    one.application_name(name);
                }
                if let Some(timeout) = c.get_connect_timeout() {
                    one.connect_timeout(*timeout);
                }
                if let Some(timeout) = c.get_tcp_user_timeout() {
                    one.tcp_user_timeout(*timeout);
                }
                if let Some(interval) = c.get_keepalives_interval() {
                    one.keepalives_interval(interval);
                }
                if let Some(retries) = c.get_keepalives_retries() {
                    one.keepalives_retries(retries);
                }
                one.ssl_mode(c.get_ssl_mode())
                    .ssl_negotiation(c.get_ssl_negotiation())
                    .keepalives(c.get_keepalives())
                    .keepalives_idle(c.get_keepalives_idle())
                    .channel_binding(c.get_channel_binding());
                DatabaseUrl {
                    config: one,
                    tls: self.tls.clone(),
                    session: SessionAttrs::Any,
                }
            })
            .collect::<Vec<_>>();
        if c.get_load_balance_hosts() == postgres::config::LoadBalanceHosts::Random {
            use rand::seq::SliceRandom;
            each.shuffle(&mut rand::rng());
        }
        each
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

    /// A URL with libpq's TLS variables (`PGSSLMODE`, `PGSSLROOTCERT`,
    /// `PGSSLCERT`, `PGSSLKEY`) added for what it does not say itself, as
    /// libpq applies them: a URL without `sslmode` would otherwise connect
    /// in the clear whatever `PGSSLMODE` asks.
    pub fn with_tls_env(url: &str, env: &dyn Fn(&str) -> Option<String>) -> String {
        let mut url = url.trim().to_string();
        let is_uri = url.starts_with("postgres://") || url.starts_with("postgresql://");
        for (variable, key) in [
            ("PGSSLMODE", "sslmode"),
            ("PGSSLROOTCERT", "sslrootcert"),
            ("PGSSLCERT", "sslcert"),
            ("PGSSLKEY", "sslkey"),
        ] {
            let Some(value) = env(variable).filter(|value| !value.is_empty()) else {
                continue;
            };
            let said = conninfo_tokens(&url).iter().any(|(name, _, _)| name == key)
                || url
                    .split(['?', '&'])
                    .skip(1)
                    .any(|pair| pair.split('=').next() == Some(key));
            if said {
                continue;
            }
            if is_uri {
                let encoded: String = value
                    .bytes()
                    .map(|b| match b {
                        b'A'..=b'Z'
                        | b'a'..=b'z'
                        | b'0'..=b'9'
                        | b'-'
                        | b'.'
                        | b'_'
                        | b'~'
                        | b'/' => char::from(b).to_string(),
                        _ => format!("%{b:02X}"),
                    })
                    .collect();
                let separator = if url.contains('?') { '&' } else { '?' };
                url = format!("{url}{separator}{key}={encoded}");
            } else {
                url = format!("{url} {key}={}", conninfo_quoted(&value));
            }
        }
        url
    }

    /// The connection libpq's variables describe (`PGHOST`, `PGHOSTADDR`,
    /// `PGPORT`, `PGUSER`, `PGDATABASE`, `PGSSLMODE`, `PGSSLROOTCERT`,
    /// `PGSSLCERT`, `PGSSLKEY`, `PGAPPNAME`, `PGCONNECT_TIMEOUT`,
    /// `PGTARGETSESSIONATTRS`), for a run given no URL: none when none of
    /// them is set.
    pub fn from_libpq_env(
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Option<Result<Self, UsageError>> {
        const VARIABLES: [(&str, &str); 12] = [
            ("PGHOST", "host"),
            ("PGHOSTADDR", "hostaddr"),
            ("PGPORT", "port"),
            ("PGUSER", "user"),
            ("PGDATABASE", "dbname"),
            ("PGSSLMODE", "sslmode"),
            ("PGSSLROOTCERT", "sslrootcert"),
            ("PGSSLCERT", "sslcert"),
            ("PGSSLKEY", "sslkey"),
            ("PGAPPNAME", "application_name"),
            ("PGCONNECT_TIMEOUT", "connect_timeout"),
            ("PGTARGETSESSIONATTRS", "target_session_attrs"),
        ];
        let pairs: Vec<String> = VARIABLES
            .iter()
            .filter_map(|(variable, key)| {
                let value = env(variable).filter(|value| !value.is_empty())?;
                Some(format!("{key}={}", conninfo_quoted(&value)))
            })
            .collect();
        if pairs.is_empty() {
            return None;
        }
        Some(Self::parse(&pairs.join(" ")).map_err(|UsageError(why)| {
            UsageError(why.replace(
                "the PostgreSQL URL (DATABASE_URL / --database-url)",
                "the connection libpq's PG* variables describe",
            ))
        }))
    }

    /// Fills in what the connection leaves out as libpq does: the user from
    /// `PGUSER` (else the system user), the database from `PGDATABASE` (else
    /// the user's name), and the password from
    /// `PGPASSWORD` or else the password file (`PGPASSFILE`, or
    /// `~/.pgpass`). `warn` is told of a password file others may read,
    /// which libpq ignores too.
    #[must_use]
    pub fn completed(
        mut self,
        env: &dyn Fn(&str) -> Option<String>,
        warn: &mut dyn FnMut(String),
    ) -> Self {
        let set = |name: &str| env(name).filter(|value| !value.is_empty());
        // A URL without a host (`postgres:///analytics`) takes PGHOST, else
        // libpq's default: Debian's socket directory when there is one.
        if self.config.get_hosts().is_empty() {
            let hosts = set("PGHOST").or_else(|| {
                Path::new(SOCKET_DIR)
                    .is_dir()
                    .then(|| SOCKET_DIR.to_string())
            });
            for host in hosts.iter().flat_map(|hosts| hosts.split(',')) {
                if host.starts_with('/') {
                    self.config.host_path(host);
                } else {
                    self.config.host(host);
                }
            }
        }
        // And without a port, PGPORT (one for every host, or one each).
        if self.config.get_ports().is_empty()
            && let Some(ports) = set("PGPORT")
        {
            for port in ports
                .split(',')
                .filter_map(|p| p.trim().parse::<u16>().ok())
            {
                self.config.port(port);
            }
        }
        if self.config.get_user().is_none()
            && let Some(user) = set("PGUSER").or_else(system_user)
        {
            self.config.user(&user);
        }
        if self.config.get_dbname().is_none()
            && let Some(db) =
                set("PGDATABASE").or_else(|| self.config.get_user().map(str::to_string))
        {
            self.config.dbname(&db);
        }
        if self.config.get_password().is_none() {
            let password = set("PGPASSWORD").or_else(|| {
                let file = set("PGPASSFILE")
                    .map(PathBuf::from)
                    .or_else(|| home(env).map(|home| home.join(".pgpass")))?;
                self.password_in_file(&file, warn)
            });
            if let Some(password) = password {
                self.config.password(password);
            }
        }
        self
    }

    /// The password file's password for this connection: the first line
    /// whose host, port, database and user match (`*` matches any; `\:`
    /// and `\\` escape), as libpq reads it. A file others may read is
    /// ignored with a warning, as libpq ignores it.
    fn password_in_file(&self, file: &Path, warn: &mut dyn FnMut(String)) -> Option<String> {
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(file)
            .ok()
            .filter(std::fs::Metadata::is_file)?;
        if meta.permissions().mode() & 0o077 != 0 {
            warn(format!(
                "password file {} has group or world access and is ignored (as libpq ignores it); \
                 permissions should be u=rw (0600) or less",
                file.display()
            ));
            return None;
        }
        let text = std::fs::read_to_string(file).ok()?;
        let host = match self.config.get_hosts().first() {
            Some(postgres::config::Host::Tcp(host)) => host.clone(),
            // A socket connection is "localhost" to the password file.
            Some(postgres::config::Host::Unix(_)) | None => "localhost".to_string(),
        };
        let port = self
            .config
            .get_ports()
            .first()
            .copied()
            .unwrap_or(5432)
            .to_string();
        let wanted = [
            host.as_str(),
            port.as_str(),
            self.config.get_dbname().unwrap_or_default(),
            self.config.get_user().unwrap_or_default(),
        ];
        text.lines()
            .filter(|line| !line.starts_with('#'))
            .find_map(|line| {
                let fields = password_file_fields(line);
                let [host, port, db, user, password] = fields.as_slice() else {
                    return None;
                };
                // An empty password is none, as libpq reads it.
                [host, port, db, user]
                    .iter()
                    .zip(wanted)
                    .all(|(field, wanted)| *field == "*" || *field == wanted)
                    .then(|| password.clone())
                    .filter(|password| !password.is_empty())
            })
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
            .field("session", &self.session)
            .finish_non_exhaustive()
    }
}

/// A value in a keyword connection string: single-quoted, its quotes and
/// backslashes escaped.
fn conninfo_quoted(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// A password file line's fields: split at unescaped colons, `\:` and
/// `\\` unescaped; the last field takes the rest of the line.
fn password_file_fields(line: &str) -> Vec<String> {
    let mut fields = vec![String::new()];
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(next) = chars.next() {
                    fields.last_mut().expect("one field at least").push(next);
                }
            }
            ':' if fields.len() < 5 => fields.push(String::new()),
            c => fields.last_mut().expect("one field at least").push(c),
        }
    }
    fields
}

/// The home directory, as libpq finds `~/.pgpass`: `HOME`, else the
/// account's.
pub fn home(env: &dyn Fn(&str) -> Option<String>) -> Option<PathBuf> {
    env("HOME")
        .filter(|home| !home.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            nix::unistd::User::from_uid(nix::unistd::geteuid())
                .ok()
                .flatten()
                .map(|user| user.dir)
        })
}

/// Where Debian's libpq looks for the server's socket when no host is given.
const SOCKET_DIR: &str = "/var/run/postgresql";

/// The system user's name, libpq's default user.
fn system_user() -> Option<String> {
    nix::unistd::User::from_uid(nix::unistd::geteuid())
        .ok()
        .flatten()
        .map(|user| user.name)
}

/// A parsed Redis URL.
#[derive(Clone)]
pub struct RedisUrl {
    pub info: redis::ConnectionInfo,
}

impl RedisUrl {
    /// The same credentials and TLS settings for another node (a cluster's
    /// nodes share them).
    #[must_use]
    pub fn with_node(&self, host: &str, port: u16) -> RedisUrl {
        let addr = match self.info.addr() {
            redis::ConnectionAddr::TcpTls {
                insecure,
                tls_params,
                ..
            } => redis::ConnectionAddr::TcpTls {
                host: host.to_string(),
                port,
                insecure: *insecure,
                tls_params: tls_params.clone(),
            },
            _ => redis::ConnectionAddr::Tcp(host.to_string(), port),
        };
        RedisUrl {
            info: self.info.clone().set_addr(addr),
        }
    }

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
    fn host_port_and_address_counts_must_match_as_libpq_says() {
        for bad in [
            "host=a,b,c port=1,2 dbname=d",
            "postgres://a:1,b:2,c/d?port=5,6",
            "host=a,b,c hostaddr=10.0.0.1,10.0.0.2 dbname=d",
        ] {
            let err = DatabaseUrl::parse(bad).unwrap_err();
            assert!(err.0.contains("for 3 hosts"), "{bad}: {err}");
        }
        for good in [
            "host=a,b,c port=1 dbname=d",
            "host=a,b port=1,2 hostaddr=10.0.0.1,10.0.0.2 dbname=d",
            "postgres://a:1,b:2/d",
        ] {
            DatabaseUrl::parse(good).unwrap_or_else(|err| panic!("{good}: {err}"));
        }
    }

    #[test]
    fn load_balance_hosts_random_shuffles_the_order_tried() {
        let url = DatabaseUrl::parse("postgres://a,b,c/d?load_balance_hosts=random").unwrap();
        let firsts: std::collections::BTreeSet<String> =
            (0..200).map(|_| url.each_host()[0].target()).collect();
        assert_eq!(firsts.len(), 3, "{firsts:?}");
        let fixed = DatabaseUrl::parse("postgres://a,b,c/d").unwrap();
        assert!((0..50).all(|_| fixed.each_host()[0].target() == "a:5432"));
    }

    #[test]
    fn the_password_file_is_read_as_libpq_reads_it() {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            password_file_fields(r"db\:host:5432:*:alice:pa\:ss\\w:or:d"),
            ["db:host", "5432", "*", "alice", r"pa:ss\w:or:d"]
        );
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pgpass");
        std::fs::write(
            &file,
            "# a comment\nother:5432:*:*:wrong\n127.0.0.1:6543:*:alice:right\n*:*:*:*:fallback\n",
        )
        .unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        let url = DatabaseUrl::parse("postgres://alice@127.0.0.1:6543/db").unwrap();
        let mut warnings = Vec::new();
        assert_eq!(
            url.password_in_file(&file, &mut |w| warnings.push(w)),
            Some("right".to_string())
        );
        let other = DatabaseUrl::parse("postgres://bob@127.0.0.1:6543/db").unwrap();
        assert_eq!(
            other.password_in_file(&file, &mut |w| warnings.push(w)),
            Some("fallback".to_string())
        );
        assert!(warnings.is_empty());
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(url.password_in_file(&file, &mut |w| warnings.push(w)), None);
        assert!(
            warnings[0].contains("group or world access"),
            "{warnings:?}"
        );
    }

    #[test]
    fn libpqs_tls_variables_apply_to_what_a_url_leaves_out() {
        let env = |name: &str| match name {
            "PGSSLMODE" => Some("verify-full".to_string()),
            "PGSSLROOTCERT" => Some("/etc/ssl/my root.crt".to_string()),
            _ => None,
        };
        let url = DatabaseUrl::with_tls_env("postgres://u@h/db", &env);
        assert_eq!(
            url,
            "postgres://u@h/db?sslmode=verify-full&sslrootcert=/etc/ssl/my%20root.crt"
        );
        assert_eq!(
            DatabaseUrl::parse(&url).unwrap().tls.mode,
            SslMode::VerifyFull
        );
        // What the URL says stands.
        assert_eq!(
            DatabaseUrl::with_tls_env("postgres://u@h/db?sslmode=disable", &env),
            "postgres://u@h/db?sslmode=disable&sslrootcert=/etc/ssl/my%20root.crt"
        );
        assert_eq!(
            DatabaseUrl::with_tls_env("host=h sslmode=require", &env),
            "host=h sslmode=require sslrootcert='/etc/ssl/my root.crt'"
        );
    }

    #[test]
    fn libpqs_variables_describe_a_connection_and_fill_in_what_a_url_leaves_out() {
        let vars = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(key, _)| *key == name)
                    .map(|(_, value)| (*value).to_string())
            }
        };
        assert!(DatabaseUrl::from_libpq_env(&vars(&[])).is_none());
        let env = vars(&[
            ("PGHOST", "db.example"),
            ("PGPORT", "6543"),
            ("PGUSER", "o'brien"),
            ("PGDATABASE", "analytics"),
            ("PGPASSWORD", "s3cret"),
        ]);
        let url = DatabaseUrl::from_libpq_env(&env)
            .unwrap()
            .unwrap()
            .completed(&env, &mut |_| {});
        assert_eq!(url.target(), "db.example:6543");
        assert_eq!(url.user(), Some("o'brien"));
        assert_eq!(url.dbname(), Some("analytics"));
        assert_eq!(url.config.get_password(), Some(&b"s3cret"[..]));
        assert!(!format!("{url:?}").contains("s3cret"));
        // What the URL says wins; the variables fill in only what it leaves out.
        let url = DatabaseUrl::parse("postgres://alice:mine@h/own")
            .unwrap()
            .completed(&env, &mut |_| {});
        assert_eq!((url.user(), url.dbname()), (Some("alice"), Some("own")));
        assert_eq!(url.config.get_password(), Some(&b"mine"[..]));
        let url = DatabaseUrl::parse("postgres://h")
            .unwrap()
            .completed(&env, &mut |_| {});
        assert_eq!(
            (url.user(), url.dbname()),
            (Some("o'brien"), Some("analytics"))
        );
        assert_eq!(url.config.get_password(), Some(&b"s3cret"[..]));
    }

    #[test]
    fn an_unencoded_at_in_a_password_is_refused_without_showing_it() {
        let Err(err) = DatabaseUrl::parse("postgres://alice:p@ssw0rd@127.0.0.1:1/db") else {
            panic!("a host with an '@' was accepted");
        };
        let err = err.to_string();
        assert!(err.contains("%40"), "{err}");
        assert!(!err.contains("ssw0rd"), "{err}");
    }

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
    fn target_session_attrs_takes_libpqs_six_values_and_each_host_keeps_the_rest() {
        for (text, want) in [
            ("any", SessionAttrs::Any),
            ("read-write", SessionAttrs::ReadWrite),
            ("read-only", SessionAttrs::ReadOnly),
            ("primary", SessionAttrs::Primary),
            ("standby", SessionAttrs::Standby),
            ("prefer-standby", SessionAttrs::PreferStandby),
        ] {
            let url = DatabaseUrl::parse(&format!(
                "postgres://u:pw@a:5433,b/db?target_session_attrs={text}&application_name=x"
            ))
            .unwrap();
            assert_eq!(url.session, want, "{text}");
            let keyword = DatabaseUrl::parse(&format!(
                "host=a,b port=5433,5434 dbname=db target_session_attrs={text}"
            ))
            .unwrap();
            assert_eq!(keyword.session, want, "{text}");
        }
        assert_eq!(
            DatabaseUrl::parse("postgres://a/db").unwrap().session,
            SessionAttrs::Any
        );
        for bad in ["READ-WRITE", "readwrite", "", "standby\u{1b}"] {
            let err = DatabaseUrl::parse(&format!("postgres://a/db?target_session_attrs={bad}"))
                .unwrap_err();
            assert!(err.0.contains("target_session_attrs other than"), "{err}");
        }

        // One port for all hosts, or one each; the rest kept for each.
        let url = DatabaseUrl::parse(
            "postgres://u:pw@a,b:6000,c:6001/db?application_name=x&connect_timeout=3&sslmode=require",
        )
        .unwrap();
        let each = url.each_host();
        let targets: Vec<String> = each.iter().map(DatabaseUrl::target).collect();
        assert_eq!(targets, ["a:5432", "b:6000", "c:6001"]);
        for one in &each {
            assert_eq!(one.config.get_user(), Some("u"));
            assert_eq!(one.config.get_password(), Some(&b"pw"[..]));
            assert_eq!(one.config.get_dbname(), Some("db"));
            assert_eq!(one.config.get_application_name(), Some("x"));
            assert_eq!(
                one.config.get_connect_timeout(),
                Some(&std::time::Duration::from_secs(3))
            );
            assert_eq!(one.tls.mode, SslMode::Encrypt);
            assert_eq!(one.session, SessionAttrs::Any);
        }
        let shared = DatabaseUrl::parse("host=a,b port=7000 dbname=db").unwrap();
        let targets: Vec<String> = shared.each_host().iter().map(DatabaseUrl::target).collect();
        assert_eq!(targets, ["a:7000", "b:7000"]);
    }

    #[test]
    fn libpq_tls_options_are_understood() {
        let url = |text: &str| DatabaseUrl::parse(text).unwrap();
        assert_eq!(url("postgres://h/db").tls.mode, SslMode::Off);
        assert_eq!(
            url("postgres://h/db?sslmode=prefer").tls.mode,
            SslMode::Encrypt
        );
        assert_eq!(
            url("postgres://h/db?sslmode=disable").tls.mode,
            SslMode::Off
        );
        let full = url(
            "postgres://u:p@h:5433/db?sslmode=verify-full&sslrootcert=/etc/ca%20root.pem&connect_timeout=3",
        );
        assert_eq!(full.tls.mode, SslMode::VerifyFull);
        assert_eq!(full.tls.root, Some("/etc/ca root.pem".into()));
        let parsed = url("postgres://u:p@h:5433/db?sslmode=verify-ca&connect_timeout=3");
        assert_eq!(parsed.tls.mode, SslMode::VerifyCa);
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
        assert_eq!(keyword.tls.mode, SslMode::VerifyFull);
        assert_eq!(keyword.tls.root, Some("/ca.pem".into()));
        let client = url("postgres://h/db?sslmode=require&sslcert=/c.pem&sslkey=/k.pem");
        assert_eq!(client.tls.client, Some(("/c.pem".into(), "/k.pem".into())));
        assert!(DatabaseUrl::parse("postgres://h/db?sslmode=sometimes").is_err());
        assert!(DatabaseUrl::parse("postgres://h/db?sslcert=/c.pem").is_err());
    }

    #[test]
    fn other_parameters_reach_the_driver_as_written() {
        let url = DatabaseUrl::parse(
            "postgres://u:p@h/db?options=-c%20statement_timeout%3D5000&application_name=nightly+etl&sslmode=require",
        )
        .unwrap();
        assert_eq!(url.config.get_options(), Some("-c statement_timeout=5000"));
        // libpq URIs are percent-decoded, not form-decoded: a plus is a plus.
        assert_eq!(url.config.get_application_name(), Some("nightly+etl"));
        let keyword = DatabaseUrl::parse(
            "host=h dbname=db options='-c statement_timeout=5000 -c search_path=\\'a b\\'' sslmode = disable application_name=x",
        )
        .unwrap();
        assert_eq!(
            keyword.config.get_options(),
            Some("-c statement_timeout=5000 -c search_path='a b'")
        );
        assert_eq!(keyword.config.get_application_name(), Some("x"));
        assert_eq!(keyword.tls.mode, SslMode::Off);
    }

    #[test]
    fn stream_key_follows_the_producer_layout() {
        assert_eq!(
            stream_key_for("genonaut"),
            "genonaut:generation_events:stream"
        );
    }
}
