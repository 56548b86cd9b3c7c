//! A Redis proxy that lies: it forwards every command to a real server,
//! one at a time, and hands the replies back in RESP2 — except that it can
//! rewrite the replies to range reads (`XRANGE key (after … COUNT n`), as
//! a buggy or hostile server in the path might.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};

use redis::Value;

/// How the proxy rewrites the entries of a range read.
#[derive(Debug, Clone, Copy)]
pub enum Lie {
    /// Entries in reverse order: IDs going backwards.
    Reversed,
}

/// A running proxy; its threads end with the test process.
pub struct Proxy {
    pub port: u16,
    /// Range reads rewritten so far.
    pub lies: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl Proxy {
    /// Starts a proxy to the server at `url` (whose password it uses).
    pub fn start(url: &str, lie: Lie) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let lies = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let client = redis::Client::open(url).unwrap();
        let counted = std::sync::Arc::clone(&lies);
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let server = client.get_connection().unwrap();
                let counted = std::sync::Arc::clone(&counted);
                std::thread::spawn(move || serve(stream, server, lie, &counted));
            }
        });
        Proxy { port, lies }
    }

    /// The URL a client uses to go through the proxy, with `url`'s password.
    pub fn url(&self, url: &str) -> String {
        let at = url.rfind('@').unwrap();
        format!(
            "redis://{}@127.0.0.1:{}",
            &url["redis://".len()..at],
            self.port
        )
    }
}

fn serve(
    stream: TcpStream,
    mut server: redis::Connection,
    lie: Lie,
    lies: &std::sync::atomic::AtomicUsize,
) {
    let mut out = stream.try_clone().unwrap();
    let mut input = BufReader::new(stream);
    // Inside MULTI: which queued commands are range reads.
    let mut queued: Option<Vec<bool>> = None;
    while let Some(args) = command(&mut input) {
        let mut cmd = redis::cmd(std::str::from_utf8(&args[0]).unwrap_or("?"));
        for arg in &args[1..] {
            cmd.arg(arg.as_slice());
        }
        let reply = match cmd.query::<Value>(&mut server) {
            Ok(value) => value,
            Err(err) => match redis::ServerError::try_from(err) {
                Ok(refused) => Value::ServerError(refused),
                Err(err) => panic!("the proxy lost the server: {err}"),
            },
        };
        let name = args[0].to_ascii_uppercase();
        let reply = match (name.as_slice(), queued.as_mut()) {
            (b"MULTI", _) => {
                queued = Some(Vec::new());
                reply
            }
            (b"EXEC", Some(_)) => match (reply, queued.take()) {
                (Value::Array(parts), Some(ranges)) => Value::Array(
                    parts
                        .into_iter()
                        .zip(ranges)
                        .map(|(part, range)| {
                            if range {
                                rewrite(part, lie, lies)
                            } else {
                                part
                            }
                        })
                        .collect(),
                ),
                (reply, _) => reply,
            },
            (_, Some(ranges)) => {
                ranges.push(is_range_read(&args));
                reply
            }
            (_, None) if is_range_read(&args) => rewrite(reply, lie, lies),
            _ => reply,
        };
        let mut bytes = Vec::new();
        encode(&reply, &mut bytes);
        if out.write_all(&bytes).is_err() {
            return;
        }
    }
}

fn is_range_read(args: &[Vec<u8>]) -> bool {
    args.len() == 6
        && args[0].eq_ignore_ascii_case(b"XRANGE")
        && args[2].starts_with(b"(")
        && std::str::from_utf8(&args[5])
            .ok()
            .and_then(|n| n.parse::<u64>().ok())
            .is_some_and(|n| n > 1)
}

fn rewrite(reply: Value, lie: Lie, lies: &std::sync::atomic::AtomicUsize) -> Value {
    match (reply, lie) {
        (Value::Array(mut entries), Lie::Reversed) if entries.len() > 1 => {
            lies.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            entries.reverse();
            Value::Array(entries)
        }
        (other, _) => other,
    }
}

/// One command as clients send it: an array of bulk strings.
fn command(input: &mut impl BufRead) -> Option<Vec<Vec<u8>>> {
    let n: usize = line(input)?.strip_prefix('*')?.parse().ok()?;
    let mut args = Vec::with_capacity(n);
    for _ in 0..n {
        let len: usize = line(input)?.strip_prefix('$')?.parse().ok()?;
        let mut arg = vec![0; len + 2];
        input.read_exact(&mut arg).ok()?;
        arg.truncate(len);
        args.push(arg);
    }
    Some(args)
}

fn line(input: &mut impl BufRead) -> Option<String> {
    let mut line = String::new();
    if input.read_line(&mut line).ok()? == 0 {
        return None;
    }
    Some(line.trim_end().to_string())
}

fn encode(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Nil => out.extend_from_slice(b"$-1\r\n"),
        Value::Int(n) => out.extend_from_slice(format!(":{n}\r\n").as_bytes()),
        Value::BulkString(bytes) => {
            out.extend_from_slice(format!("${}\r\n", bytes.len()).as_bytes());
            out.extend_from_slice(bytes);
            out.extend_from_slice(b"\r\n");
        }
        Value::Array(items) => {
            out.extend_from_slice(format!("*{}\r\n", items.len()).as_bytes());
            for item in items {
                encode(item, out);
            }
        }
        Value::SimpleString(text) => out.extend_from_slice(format!("+{text}\r\n").as_bytes()),
        Value::Okay => out.extend_from_slice(b"+OK\r\n"),
        Value::ServerError(err) => {
            let detail = err.details().unwrap_or_default();
            out.extend_from_slice(format!("-{} {detail}\r\n", err.code()).as_bytes());
        }
        other => panic!("the proxy speaks RESP2 only: {other:?}"),
    }
}
