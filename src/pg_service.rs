//! libpq's connection service file: `PGSERVICE=prod` (or `service=prod` in
//! the connection string) names a section of `~/.pg_service.conf`
//! (`PGSERVICEFILE`) or of the system's `pg_service.conf` (`PGSYSCONFDIR`,
//! else Debian's `/etc/postgresql-common`), whose `keyword=value` lines
//! describe the connection. As in libpq, what the connection string says
//! wins, then the service, then the `PG*` variables; the user's file is
//! searched before the system's.

use std::path::{Path, PathBuf};

use crate::error::UsageError;

/// Where Debian's libpq looks for the system-wide file.
const SYSTEM_DIR: &str = "/etc/postgresql-common";

/// The keywords a service may set, and the variable each stands in for.
const KEYWORDS: [(&str, &str); 14] = [
    ("host", "PGHOST"),
    ("hostaddr", "PGHOSTADDR"),
    ("port", "PGPORT"),
    ("dbname", "PGDATABASE"),
    ("user", "PGUSER"),
    ("password", "PGPASSWORD"),
    ("passfile", "PGPASSFILE"),
    ("sslmode", "PGSSLMODE"),
    ("sslrootcert", "PGSSLROOTCERT"),
    ("sslcert", "PGSSLCERT"),
    ("sslkey", "PGSSLKEY"),
    ("application_name", "PGAPPNAME"),
    ("connect_timeout", "PGCONNECT_TIMEOUT"),
    ("target_session_attrs", "PGTARGETSESSIONATTRS"),
];

/// One service's settings, as the variables they stand in for.
#[derive(Debug, Default)]
pub struct Service {
    values: Vec<(&'static str, String)>,
}

impl Service {
    /// The service's value for a libpq variable (`PGHOST` …), if it sets it.
    pub fn variable(&self, name: &str) -> Option<String> {
        self.values
            .iter()
            .find(|(variable, _)| *variable == name)
            .map(|(_, value)| value.clone())
    }
}

/// The connection string without its `service` parameter, and the service
/// it named (a URL's `?service=`, or a conninfo's `service=`).
pub fn take_service_param(url: &str) -> (String, Option<String>) {
    let url = url.trim();
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let Some((base, query)) = url.split_once('?') else {
            return (url.to_string(), None);
        };
        let mut service = None;
        let kept: Vec<&str> = query
            .split('&')
            .filter(|pair| match pair.strip_prefix("service=") {
                Some(name) => {
                    service = Some(name.to_string());
                    false
                }
                None => true,
            })
            .collect();
        let url = if kept.is_empty() {
            base.to_string()
        } else {
            format!("{base}?{}", kept.join("&"))
        };
        (url, service)
    } else {
        let mut service = None;
        let kept: Vec<&str> = url
            .split_whitespace()
            .filter(|pair| match pair.strip_prefix("service=") {
                Some(name) => {
                    service = Some(name.trim_matches('\'').to_string());
                    false
                }
                None => true,
            })
            .collect();
        (kept.join(" "), service)
    }
}

/// The files searched, in order: the user's, then the system's.
fn files(env: &dyn Fn(&str) -> Option<String>, home: Option<PathBuf>) -> Vec<PathBuf> {
    let set = |name: &str| env(name).filter(|value| !value.is_empty());
    let user = set("PGSERVICEFILE")
        .map(PathBuf::from)
        .or_else(|| home.map(|home| home.join(".pg_service.conf")));
    let system = PathBuf::from(set("PGSYSCONFDIR").unwrap_or_else(|| SYSTEM_DIR.to_string()))
        .join("pg_service.conf");
    user.into_iter().chain(std::iter::once(system)).collect()
}

/// The service `name` from the first file that defines it.
pub fn lookup(
    name: &str,
    env: &dyn Fn(&str) -> Option<String>,
    home: Option<PathBuf>,
) -> Result<Service, UsageError> {
    let searched = files(env, home);
    for file in &searched {
        let Ok(bytes) = std::fs::read(file) else {
            continue;
        };
        let text = String::from_utf8(bytes).map_err(|_| {
            UsageError(format!(
                "the service file {} is not UTF-8 text",
                file.display()
            ))
        })?;
        if let Some(service) = section(&text, name, file)? {
            return Ok(service);
        }
    }
    let shown: Vec<String> = searched
        .iter()
        .map(|file| file.display().to_string())
        .collect();
    Err(UsageError(format!(
        "the PostgreSQL service {} (PGSERVICE or service=) is defined in no service file (searched {})",
        crate::text::quoted(name),
        shown.join(", ")
    )))
}

/// The section `[name]` of a service file, if it has one.
fn section(text: &str, name: &str, file: &Path) -> Result<Option<Service>, UsageError> {
    let mut found: Option<Service> = None;
    let mut inside = false;
    for (index, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(header) = line.strip_prefix('[') {
            if found.is_some() && inside {
                break;
            }
            inside = header.strip_suffix(']') == Some(name);
            if inside {
                found = Some(Service::default());
            }
            continue;
        }
        if !inside {
            continue;
        }
        let place = format!("{}:{}", file.display(), index + 1);
        let Some((key, value)) = line.split_once('=') else {
            return Err(UsageError(format!(
                "{place}: a service file line is keyword=value"
            )));
        };
        let key = key.trim();
        let Some((_, variable)) = KEYWORDS.iter().find(|(keyword, _)| *keyword == key) else {
            return Err(UsageError(format!(
                "{place}: {} is not a connection setting genalytics takes from a service",
                crate::text::quoted(key)
            )));
        };
        if let Some(service) = found.as_mut() {
            service.values.push((variable, value.trim().to_string()));
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_service_parameter_is_taken_out_of_a_url_or_a_conninfo() {
        assert_eq!(
            take_service_param("postgres://u@h/db?service=prod&sslmode=require"),
            (
                "postgres://u@h/db?sslmode=require".to_string(),
                Some("prod".to_string())
            )
        );
        assert_eq!(
            take_service_param("postgres:///db?service=prod"),
            ("postgres:///db".to_string(), Some("prod".to_string()))
        );
        assert_eq!(
            take_service_param("service=prod"),
            (String::new(), Some("prod".to_string()))
        );
        assert_eq!(
            take_service_param("host=h dbname=d"),
            ("host=h dbname=d".to_string(), None)
        );
    }

    #[test]
    fn a_service_is_read_from_the_users_file_before_the_systems() {
        let dir = tempfile::tempdir().unwrap();
        let user = dir.path().join("user.conf");
        std::fs::write(
            &user,
            "# mine\n[other]\nhost=elsewhere\n\n[prod]\nhost = db.example\nport=6432\n dbname=analytics\n",
        )
        .unwrap();
        let system_dir = dir.path().join("etc");
        std::fs::create_dir(&system_dir).unwrap();
        std::fs::write(
            system_dir.join("pg_service.conf"),
            "[prod]\nhost=system\n[only-system]\nuser=sys\n",
        )
        .unwrap();
        let env = |name: &str| match name {
            "PGSERVICEFILE" => Some(user.display().to_string()),
            "PGSYSCONFDIR" => Some(system_dir.display().to_string()),
            _ => None,
        };
        let prod = lookup("prod", &env, None).unwrap();
        assert_eq!(prod.variable("PGHOST").as_deref(), Some("db.example"));
        assert_eq!(prod.variable("PGPORT").as_deref(), Some("6432"));
        assert_eq!(prod.variable("PGDATABASE").as_deref(), Some("analytics"));
        assert_eq!(prod.variable("PGUSER"), None);
        let system = lookup("only-system", &env, None).unwrap();
        assert_eq!(system.variable("PGUSER").as_deref(), Some("sys"));
        let missing = lookup("nope", &env, None).unwrap_err().0;
        assert!(
            missing.contains("'nope'") && missing.contains("user.conf"),
            "{missing}"
        );
        std::fs::write(&user, "[prod]\nhots=x\n").unwrap();
        let typo = lookup("prod", &env, None).unwrap_err().0;
        assert!(
            typo.contains("user.conf:2") && typo.contains("'hots'"),
            "{typo}"
        );
    }
}
