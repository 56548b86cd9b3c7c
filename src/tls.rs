//! Naming why a TLS connection failed, for PostgreSQL and Redis alike: a
//! certificate for another host (with both names), an issuer nobody
//! trusts, an expired certificate, a server that does not speak TLS. The
//! TLS library reports these as one handshake error with the reason deep in
//! its text; an operator at 3 a.m. needs the reason first.
//!
//! For a host name mismatch the certificate's own names are read with a
//! second handshake that verifies nothing and sends nothing after it.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

/// Why a handshake failed, as far as the error's text tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    HostMismatch,
    UnknownIssuer,
    Expired,
    NotYetValid,
    NoTls,
}

/// Reads the cause out of an error chain's text.
pub fn cause(text: &str) -> Option<Cause> {
    let text = text.to_lowercase();
    if text.contains("hostname mismatch") || text.contains("ip address mismatch") {
        Some(Cause::HostMismatch)
    } else if text.contains("certificate has expired") {
        Some(Cause::Expired)
    } else if text.contains("certificate is not yet valid") {
        Some(Cause::NotYetValid)
    } else if text.contains("unable to get local issuer")
        || text.contains("self-signed certificate")
        || text.contains("self signed certificate")
        || text.contains("unable to verify the first certificate")
        || text.contains("unable to get issuer certificate")
    {
        Some(Cause::UnknownIssuer)
    } else if text.contains("server does not support tls")
        || text.contains("wrong version number")
        || text.contains("packet length too long")
        || text.contains("unexpected eof")
        || text.contains("record layer failure")
    {
        Some(Cause::NoTls)
    } else {
        None
    }
}

/// One clause saying what is wrong, naming the certificate's names when
/// they could be read.
pub fn explain(cause: Cause, host: &str, names: Option<&[String]>) -> String {
    match cause {
        Cause::HostMismatch => match names {
            Some(names) if !names.is_empty() => format!(
                "the server's certificate is for {}, not for {host} (host name mismatch)",
                names.join(", ")
            ),
            _ => format!("the server's certificate is not for {host} (host name mismatch)"),
        },
        Cause::UnknownIssuer => {
            "the server's certificate is not signed by a trusted authority (unknown issuer)".into()
        }
        Cause::Expired => "the server's certificate has expired".into(),
        Cause::NotYetValid => "the server's certificate is not valid yet".into(),
        Cause::NoTls => "the server does not speak TLS on that port".into(),
    }
}

/// The whole error chain as one string, for [`cause`].
pub fn chain_text(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(inner) = source {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    text
}

const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// What a TLS handshake with nothing verified found.
#[derive(Debug)]
pub enum Probe {
    /// The server spoke TLS; these are the names in its certificate
    /// (subject alternative names, else the common name).
    Names(Vec<String>),
    /// It did not complete a handshake in time, or answered with something
    /// else: no TLS on that port.
    NoTls,
    /// It could not be reached at all: the real connection says why.
    Unreachable,
}

/// Shakes hands with a server, verifying nothing and sending nothing
/// after it, within a few seconds; `postgres` speaks PostgreSQL's
/// `SSLRequest` first. Used to name a certificate's hosts, and to find a
/// plain Redis behind a `rediss://` URL before the client waits forever
/// for a handshake that never comes.
pub fn probe(host: &str, port: u16, postgres: bool) -> Probe {
    let Some(address) = (host, port)
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
    else {
        return Probe::Unreachable;
    };
    let Ok(mut tcp) = TcpStream::connect_timeout(&address, PROBE_TIMEOUT) else {
        return Probe::Unreachable;
    };
    if tcp.set_read_timeout(Some(PROBE_TIMEOUT)).is_err()
        || tcp.set_write_timeout(Some(PROBE_TIMEOUT)).is_err()
    {
        return Probe::Unreachable;
    }
    if postgres {
        // Length 8, then the SSLRequest code 80877103; the server answers S.
        let mut answer = [0u8; 1];
        let asked = tcp
            .write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f])
            .and_then(|()| tcp.read_exact(&mut answer));
        if asked.is_err() || answer[0] != b'S' {
            return Probe::NoTls;
        }
    }
    let Ok(connector) = native_tls::TlsConnector::builder()
        .danger_accept_invalid_certs(true)
        .danger_accept_invalid_hostnames(true)
        .disable_built_in_roots(true)
        .build()
    else {
        return Probe::Unreachable;
    };
    match connector.connect(host, tcp) {
        Ok(stream) => Probe::Names(
            stream
                .peer_certificate()
                .ok()
                .flatten()
                .and_then(|cert| cert.to_der().ok())
                .map(|der| certificate_names(&der))
                .unwrap_or_default(),
        ),
        Err(_) => Probe::NoTls,
    }
}

/// The certificate's names, escaped for a sentence.
fn certificate_names(der: &[u8]) -> Vec<String> {
    let Ok(certificate) = openssl::x509::X509::from_der(der) else {
        return Vec::new();
    };
    let ip = |bytes: &[u8]| match bytes.len() {
        4 => Some(std::net::Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]).to_string()),
        16 => <[u8; 16]>::try_from(bytes)
            .ok()
            .map(|b| std::net::Ipv6Addr::from(b).to_string()),
        _ => None,
    };
    let mut names: Vec<String> = certificate
        .subject_alt_names()
        .map(|alt| {
            alt.iter()
                .filter_map(|name| {
                    name.dnsname()
                        .map(str::to_string)
                        .or_else(|| name.ipaddress().and_then(ip))
                })
                .collect()
        })
        .unwrap_or_default();
    if names.is_empty() {
        names = certificate
            .subject_name()
            .entries_by_nid(openssl::nid::Nid::COMMONNAME)
            .map(|entry| String::from_utf8_lossy(entry.data().as_slice()).into_owned())
            .collect();
    }
    names
        .into_iter()
        .map(|n| crate::text::escape_controls(&n).into_owned())
        .collect()
}

/// The names in a server's certificate, if it can be read.
pub fn peer_names(host: &str, port: u16, postgres: bool) -> Option<Vec<String>> {
    match probe(host, port, postgres) {
        Probe::Names(names) => Some(names),
        Probe::NoTls | Probe::Unreachable => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn causes_are_read_from_what_openssl_says() {
        let said = "error performing TLS handshake: error:0A000086:SSL routines:tls_post_process_server_certificate:certificate verify failed:../ssl/statem/statem_clnt.c:1889: (hostname mismatch)";
        assert_eq!(cause(said), Some(Cause::HostMismatch));
        assert_eq!(
            cause("certificate verify failed (unable to get local issuer certificate)"),
            Some(Cause::UnknownIssuer)
        );
        assert_eq!(
            cause("(self-signed certificate)"),
            Some(Cause::UnknownIssuer)
        );
        assert_eq!(cause("(certificate has expired)"), Some(Cause::Expired));
        assert_eq!(
            cause("error performing TLS handshake: server does not support TLS"),
            Some(Cause::NoTls)
        );
        assert_eq!(cause("connection refused"), None);
        assert_eq!(
            explain(
                Cause::HostMismatch,
                "127.0.0.1",
                Some(&["wrong.example".to_string()])
            ),
            "the server's certificate is for wrong.example, not for 127.0.0.1 (host name mismatch)"
        );
    }
}
