//! The reader's own Redis connection (RESP2). Stream replies are taken
//! apart straight from the socket's buffer into entries, with no reply tree
//! in between (redis-rs builds one, with several allocations an entry), and
//! the entries of a reply that runs past the batch's byte budget are read
//! past rather than held: memory is bounded by the budget and the one entry
//! a read always keeps, with no script running inside Redis (a plain
//! `XRANGE` is the cheapest read Redis serves). `XREAD BLOCK` replies are
//! taken apart the same way (`read_one_stream`); other commands (`XINFO`,
//! the trim) go through redis-rs's [`redis::ConnectionLike`], which `Wire`
//! implements with a bounded reply.

mod entries;
#[cfg(test)]
mod tests;

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use redis::{RedisError, RedisResult, Value};

use crate::config::RedisUrl;
use crate::event::{EntryId, RawEntry};

/// Read buffer: a few hundred entries of the usual size per fill.
const BUFFER: usize = 256 << 10;
/// Replies nest a few levels; a server nesting deeper is not Redis.
const MAX_DEPTH: usize = 32;
/// Most a reply read as a generic value holds (strings, and 64 bytes an
/// item): past it, strings are read past and items left out. No such reply
/// genalytics reads needs more; XINFO STREAM's first and last entries,
/// which may be giant, are read for their IDs alone.
const GENERIC_REPLY_MAX: usize = 4 << 20;
/// Longest reply line (a status, an error, a length): Redis's are short.
const LINE_MAX: u64 = 1 << 20;

trait Duplex: Read + Write + Send {}
impl<T: Read + Write + Send> Duplex for T {}

/// One connection, to the server that holds the stream.
pub struct Wire {
    io: BufReader<Box<dyn Duplex>>,
    db: i64,
    /// A reply was cut off or malformed: nothing after it can be trusted.
    broken: bool,
    line: Vec<u8>,
    /// What the generic reply being read holds (see [`GENERIC_REPLY_MAX`]).
    generic_held: usize,
}

impl std::fmt::Debug for Wire {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wire")
            .field("db", &self.db)
            .field("broken", &self.broken)
            .finish_non_exhaustive()
    }
}

/// Entries of one reply, as far as the budget let them in.
#[derive(Debug, Default)]
pub struct Taken {
    pub entries: Vec<RawEntry>,
    /// Entries the reply held (kept or read past).
    pub total: usize,
    /// The ID of the reply's last entry, kept or read past.
    pub last_id: Option<EntryId>,
}

impl Taken {
    /// Some entries were read past for the budget.
    pub fn cut(&self) -> bool {
        self.entries.len() < self.total
    }
}

impl Wire {
    /// Connects as `url` says (TCP, TLS or a Unix socket), logs in and
    /// selects its database. The caller has just opened a redis-rs
    /// connection to the same server, which reports what an operator needs
    /// when the server cannot be reached; this one only adds the detail.
    pub fn open(url: &RedisUrl, timeout: Duration, io_timeout: Duration) -> RedisResult<Wire> {
        let io: Box<dyn Duplex> = match url.info.addr() {
            redis::ConnectionAddr::Tcp(host, port) => {
                Box::new(tcp(host, *port, timeout, io_timeout)?)
            }
            redis::ConnectionAddr::TcpTls {
                host,
                port,
                insecure,
                ..
            } => {
                let mut builder = native_tls::TlsConnector::builder();
                if *insecure {
                    // As redis-rs does for `#insecure`.
                    builder
                        .danger_accept_invalid_certs(true)
                        .danger_accept_invalid_hostnames(true)
                        .use_sni(false);
                }
                let connector = builder.build().map_err(tls_error)?;
                let socket = tcp(host, *port, timeout, io_timeout)?;
                Box::new(connector.connect(host, socket).map_err(tls_error)?)
            }
            #[cfg(unix)]
            redis::ConnectionAddr::Unix(path) => {
                let socket = std::os::unix::net::UnixStream::connect(path)?;
                socket.set_read_timeout(Some(io_timeout))?;
                socket.set_write_timeout(Some(io_timeout))?;
                Box::new(socket)
            }
            other => {
                return Err(RedisError::from((
                    redis::ErrorKind::InvalidClientConfig,
                    "unsupported Redis address",
                    format!("{other:?}"),
                )));
            }
        };
        let settings = url.info.redis_settings();
        let mut wire = Wire {
            io: BufReader::with_capacity(BUFFER, io),
            db: settings.db(),
            broken: false,
            line: Vec::with_capacity(64),
            generic_held: 0,
        };
        if let Some(password) = settings.password() {
            let mut auth = redis::cmd("AUTH");
            if let Some(user) = settings.username() {
                auth.arg(user);
            }
            auth.arg(password).exec(&mut wire)?;
        }
        if wire.db != 0 {
            redis::cmd("SELECT").arg(wire.db).exec(&mut wire)?;
        }
        Ok(wire)
    }

    /// Writes commands (packed by redis-rs) without waiting for replies.
    pub fn send(&mut self, packed: &[u8]) -> RedisResult<()> {
        self.usable()?;
        let out = self.io.get_mut();
        out.write_all(packed)
            .and_then(|()| out.flush())
            .map_err(|err| self.fail(err))
    }

    /// One reply as a [`Value`] (for small replies: `XINFO`, `+OK`).
    pub fn value(&mut self) -> RedisResult<Value> {
        self.usable()?;
        self.generic_held = 0;
        let value = self.value_at(0);
        self.check(value)
    }

    /// An `XRANGE`-shaped reply (an array of entries), keeping the first
    /// entry and then entries while fewer than `budget` bytes are held
    /// (`giant_budget` once a giant entry is held, see
    /// [`crate::event::GIANT_ENTRY`]); the rest are read past. A server
    /// error is returned as an error.
    pub fn entries(&mut self, budget: usize, giant_budget: usize) -> RedisResult<Taken> {
        self.usable()?;
        let taken = self.entries_in(budget, giant_budget);
        self.check(taken)
    }

    /// Sends a range read (`XRANGE`, `XREVRANGE`) and reads its entries as
    /// [`Wire::entries`] does, with one budget.
    pub fn range(&mut self, cmd: &redis::Cmd, budget: usize) -> RedisResult<Taken> {
        self.send(&cmd.get_packed_command())?;
        self.entries(budget, budget)
    }

    /// Sends an `XREAD` of one stream and reads its entries as
    /// [`Wire::entries`] does (none when it timed out).
    pub fn read_one_stream(&mut self, cmd: &redis::Cmd, budget: usize) -> RedisResult<Taken> {
        self.send(&cmd.get_packed_command())?;
        self.usable()?;
        let taken = self.one_stream_in(budget);
        self.check(taken)
    }

    /// `[[key, entries]]`, or nil.
    fn one_stream_in(&mut self, budget: usize) -> RedisResult<Taken> {
        match self.header()? {
            (b'*' | b'$', -1) => return Ok(Taken::default()),
            (b'*', 1) => {}
            (b'-', _) => return Err(self.server_error()),
            _ => return Err(malformed("an XREAD reply that is not one stream")),
        }
        if self.header()? != (b'*', 2) {
            return Err(malformed("an XREAD stream that is not [key, entries]"));
        }
        self.skip_value(1)?;
        self.entries_in(budget, budget)
    }

    /// The header of an `EXEC` reply that must hold `parts` replies: an
    /// error (the transaction was refused) is returned as one.
    pub fn exec_header(&mut self, parts: usize) -> RedisResult<()> {
        self.usable()?;
        let header = match self.header() {
            Ok((b'*', n)) if n == parts as i64 => Ok(()),
            Ok((b'-', _)) => Err(self.server_error()),
            Ok((kind, n)) => Err(malformed(&format!(
                "EXEC replied {:?} {n}, not {parts} replies",
                char::from(kind)
            ))),
            Err(err) => Err(err),
        };
        self.check(header)
    }

    /// Gives the connection up: a reply was left partly read (an error
    /// inside a transaction's replies), so nothing after it is in step.
    pub fn abandon(&mut self) {
        self.broken = true;
    }

    fn usable(&self) -> RedisResult<()> {
        if self.broken {
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the connection to Redis broke off in an earlier reply",
            )
            .into());
        }
        Ok(())
    }

    /// Marks the connection broken after an error that leaves the reply
    /// half read; a server's error reply leaves it in step.
    fn check<T>(&mut self, result: RedisResult<T>) -> RedisResult<T> {
        if let Err(err) = &result
            && err.code().is_none()
        {
            self.broken = true;
        }
        result
    }

    fn fail(&mut self, err: io::Error) -> RedisError {
        self.broken = true;
        err.into()
    }

    /// Reads one line, without its CRLF, into `self.line`.
    fn read_line(&mut self) -> RedisResult<()> {
        self.line.clear();
        let n = (&mut self.io)
            .take(LINE_MAX)
            .read_until(b'\n', &mut self.line)?;
        if n == 0 {
            return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into());
        }
        if !self.line.ends_with(b"\r\n") {
            return Err(malformed("a reply line without CRLF"));
        }
        self.line.truncate(self.line.len() - 2);
        Ok(())
    }

    /// A reply's type byte and its number (for `+` and `-` lines, 0: the
    /// text stays in `self.line`).
    fn header(&mut self) -> RedisResult<(u8, i64)> {
        match self.buffered_header() {
            Some(header) => Ok(header),
            None => self.line_header(),
        }
    }

    /// A length line lying whole in the buffer, parsed where it lies rather
    /// than copied out through [`Wire::read_line`]: there is one for each of an
    /// entry's strings and two more for the entry, so this is the reader's
    /// hottest path. Anything else (a status, an error, a line the buffer's end
    /// cuts, 19 digits or more, a number that is not one) is left to
    /// [`Wire::line_header`].
    fn buffered_header(&mut self) -> Option<(u8, i64)> {
        let (&kind, rest) = self.io.buffer().split_first()?;
        if !matches!(kind, b'*' | b'$' | b':') {
            return None;
        }
        let (negative, digits) = match rest.split_first() {
            Some((b'-', digits)) => (true, digits),
            _ => (false, rest),
        };
        let mut number: i64 = 0;
        let mut used = 0;
        // 18 digits cannot overflow an i64.
        for &byte in digits.iter().take(18) {
            if !byte.is_ascii_digit() {
                break;
            }
            number = number * 10 + i64::from(byte - b'0');
            used += 1;
        }
        if used == 0 || digits.get(used..used + 2) != Some(b"\r\n") {
            return None;
        }
        self.io.consume(1 + usize::from(negative) + used + 2);
        Some((kind, if negative { -number } else { number }))
    }

    #[cold]
    fn line_header(&mut self) -> RedisResult<(u8, i64)> {
        self.read_line()?;
        let Some((&kind, rest)) = self.line.split_first() else {
            return Err(malformed("an empty reply line"));
        };
        match kind {
            b'+' | b'-' => Ok((kind, 0)),
            b'*' | b'$' | b':' => {
                let number = std::str::from_utf8(rest)
                    .ok()
                    .and_then(|text| text.parse::<i64>().ok())
                    .ok_or_else(|| malformed("a length that is not a number"))?;
                Ok((kind, number))
            }
            _ => Err(malformed("a reply of a type RESP2 does not have")),
        }
    }

    /// The error line in `self.line` as redis-rs parses it (with its code).
    fn error_value(&self) -> RedisResult<Value> {
        let mut line = self.line.clone();
        line.extend_from_slice(b"\r\n");
        redis::parse_redis_value(&line)
    }

    fn server_error(&self) -> RedisError {
        match self.error_value() {
            Ok(Value::ServerError(err)) => err.into(),
            Ok(_) => malformed("an error reply"),
            Err(err) => err,
        }
    }

    fn value_at(&mut self, depth: usize) -> RedisResult<Value> {
        if depth > MAX_DEPTH {
            return Err(malformed("a reply nested too deep"));
        }
        Ok(match self.header()? {
            (b'+', _) if self.line == b"+OK" => Value::Okay,
            (b'+', _) => Value::SimpleString(String::from_utf8_lossy(&self.line[1..]).into_owned()),
            // Kept as a value, as redis-rs does, for the caller to raise
            // (and a pipeline to read on past it).
            (b'-', _) => self.error_value()?,
            (b':', n) => Value::Int(n),
            (b'$' | b'*', -1) => Value::Nil,
            // No reply genalytics reads this way needs a long string whole:
            // XINFO STREAM's first and last entries are read for their IDs,
            // and a giant one must not be held for that.
            (b'$', n) => {
                let n = length(n)?;
                if self.generic_held.saturating_add(n) > GENERIC_REPLY_MAX {
                    Value::BulkString(self.stream_bulk(n, 0, |_| {})?)
                } else {
                    self.generic_held += n;
                    Value::BulkString(self.bulk(n)?)
                }
            }
            (b'*', n) => {
                let n = length(n)?;
                let mut items = Vec::with_capacity(n.min(1024));
                for _ in 0..n {
                    if self.generic_held > GENERIC_REPLY_MAX {
                        self.skip_value(depth + 1)?;
                        continue;
                    }
                    self.generic_held += 64;
                    items.push(self.value_at(depth + 1)?);
                }
                Value::Array(items)
            }
            _ => unreachable!("header() returns only these kinds"),
        })
    }

    /// Reads past one reply without keeping it.
    fn skip_value(&mut self, depth: usize) -> RedisResult<()> {
        if depth > MAX_DEPTH {
            return Err(malformed("a reply nested too deep"));
        }
        match self.header()? {
            (b'$', n) if n >= 0 => {
                let n = length(n)? as u64 + 2;
                let skipped = io::copy(&mut (&mut self.io).take(n), &mut io::sink())?;
                if skipped < n {
                    return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into());
                }
            }
            (b'*', n) if n >= 0 => {
                for _ in 0..length(n)? {
                    self.skip_value(depth + 1)?;
                }
            }
            _ => {}
        }
        Ok(())
    }
}

impl redis::ConnectionLike for Wire {
    fn req_packed_command(&mut self, cmd: &[u8]) -> RedisResult<Value> {
        self.send(cmd)?;
        self.value()
    }

    fn req_packed_commands(
        &mut self,
        cmd: &[u8],
        offset: usize,
        count: usize,
    ) -> RedisResult<Vec<Value>> {
        self.send(cmd)?;
        // Every reply is read, even after an error, to stay in step.
        let mut first_error = None;
        let mut replies = Vec::with_capacity(count);
        for at in 0..offset + count {
            match self.value()? {
                Value::ServerError(err) if at < offset => {
                    first_error.get_or_insert(RedisError::from(err));
                }
                _ if at < offset => {}
                reply => replies.push(reply),
            }
        }
        first_error.map_or(Ok(replies), Err)
    }

    fn get_db(&self) -> i64 {
        self.db
    }

    fn check_connection(&mut self) -> bool {
        redis::cmd("PING").exec(self).is_ok()
    }

    fn is_open(&self) -> bool {
        !self.broken
    }
}

fn tcp(host: &str, port: u16, timeout: Duration, io_timeout: Duration) -> io::Result<TcpStream> {
    let mut last = io::Error::new(io::ErrorKind::NotFound, format!("no address for {host}"));
    for addr in (host, port).to_socket_addrs()? {
        match TcpStream::connect_timeout(&addr, timeout) {
            Ok(socket) => {
                socket.set_nodelay(true)?;
                socket.set_read_timeout(Some(io_timeout))?;
                socket.set_write_timeout(Some(io_timeout))?;
                return Ok(socket);
            }
            Err(err) => last = err,
        }
    }
    Err(last)
}

fn tls_error(err: impl std::fmt::Display) -> RedisError {
    io::Error::new(io::ErrorKind::ConnectionAborted, format!("TLS: {err}")).into()
}

fn length(n: i64) -> RedisResult<usize> {
    usize::try_from(n).map_err(|_| malformed("a negative length"))
}

fn malformed(what: &str) -> RedisError {
    RedisError::from((
        redis::ErrorKind::Parse,
        "unexpected reply to a stream read",
        what.to_string(),
    ))
}
