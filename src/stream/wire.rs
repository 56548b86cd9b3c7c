//! The reader's own Redis connection (RESP2). Stream replies are taken
//! apart straight from the socket's buffer into entries, with no reply tree
//! in between (redis-rs builds one, about thirty allocations an entry), and
//! the entries of a reply that runs past the batch's byte budget are read
//! past rather than held: memory is bounded by the budget and the one entry
//! a read always keeps, without a Lua script repacking every entry inside
//! Redis (which cost Redis more than twice the CPU of the plain `XRANGE`). Every other command on it
//! (`XINFO`, `XREAD BLOCK`) goes through redis-rs's [`redis::ConnectionLike`],
//! so the functions in [`super::reader`] take either kind of connection.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use redis::{RedisError, RedisResult, Value};

use crate::config::RedisUrl;
use crate::event::EntryId;
use crate::event::{CUT_KEEP_BYTES, CUT_KEEP_FIELDS, CUT_STRING, Cut, CutString, RawEntry};
use crate::event::{ENTRY_MAX_BYTES, FIELDS_MAX, RawFields};

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

    /// A length line lying whole in the buffer, parsed where it lies: one
    /// for each of an entry's strings and two more for the entry, which
    /// copying each out through [`Wire::read_line`] made a sixth of the
    /// reader's work. Anything else
    /// (a status, an error, a line the buffer's end cuts, 19 digits or more,
    /// a number that is not one) is left to [`Wire::line_header`].
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

    fn entries_in(&mut self, mut budget: usize, giant_budget: usize) -> RedisResult<Taken> {
        let total = match self.header()? {
            (b'*', -1) => 0,
            (b'*', n) => length(n)?,
            (b'-', _) => return Err(self.server_error()),
            _ => return Err(malformed("a stream reply that is not an array")),
        };
        let mut taken = Taken {
            entries: Vec::with_capacity(total.min(1024)),
            total,
            last_id: None,
        };
        let mut bytes = 0usize;
        for _ in 0..total {
            if !taken.entries.is_empty() && bytes >= budget {
                taken.last_id = Some(self.skip_entry()?);
                continue;
            }
            let entry = self.entry()?;
            // A cut giant is judged by what it costs Redis, not what is held.
            let (size, in_redis) = entry.sizes();
            if in_redis >= crate::event::GIANT_ENTRY {
                budget = budget.min(giant_budget);
            }
            bytes = bytes.saturating_add(size);
            taken.last_id = Some(entry.id);
            taken.entries.push(entry);
        }
        Ok(taken)
    }

    /// `[id, …]`'s header and ID.
    fn entry_id(&mut self) -> RedisResult<EntryId> {
        if self.header()? != (b'*', 2) {
            return Err(malformed("a stream entry that is not [id, fields]"));
        }
        let id = match self.header()? {
            (b'$', n) => self.bulk(length(n)?)?,
            _ => return Err(malformed("a stream entry without an ID")),
        };
        std::str::from_utf8(&id)
            .ok()
            .and_then(|id| id.parse().ok())
            .ok_or_else(|| malformed("a stream entry ID that is not one"))
    }

    /// Reads past an entry, keeping only its ID.
    fn skip_entry(&mut self) -> RedisResult<EntryId> {
        let id = self.entry_id()?;
        self.skip_value(1)?;
        Ok(id)
    }

    /// `[id, [name, value, …]]`. An entry whose names and values pass
    /// [`ENTRY_MAX_BYTES`] is cut as it is read (see [`Cutting`]).
    fn entry(&mut self) -> RedisResult<RawEntry> {
        let id = self.entry_id()?;
        let strings = match self.header()? {
            // A deleted entry still listed (consumer groups' history).
            (b'*', -1) => return Ok(RawEntry::new(id, Vec::new())),
            (b'*', n) => length(n)?,
            _ => return Err(malformed("a stream entry whose fields are not an array")),
        };
        if strings % 2 != 0 {
            return Err(malformed("a stream entry with an odd number of strings"));
        }
        let mut fields: RawFields = Vec::with_capacity((strings / 2).min(1024));
        let mut name: Option<Vec<u8>> = None;
        // What no event may hold, as the parser judges it: more fields
        // than it stores (known before a byte of them is read), or more
        // bytes of names and values.
        let mut cutting =
            (strings / 2 > FIELDS_MAX).then(|| Cutting::start(strings, &mut fields, None));
        let mut bytes = 0usize;
        for _ in 0..strings {
            let n = match self.header()? {
                (b'$', n) if n >= 0 => length(n)?,
                _ => return Err(malformed("a field name or value that is not a string")),
            };
            bytes = bytes.saturating_add(n);
            if cutting.is_none() && bytes > ENTRY_MAX_BYTES {
                cutting = Some(Cutting::start(strings, &mut fields, name.as_mut()));
            }
            let string = match cutting.as_mut() {
                None => self.bulk(n)?,
                Some(cut) => cut.string(self, n, fields.len(), name.is_none())?,
            };
            match name.take() {
                None => name = Some(string),
                // Past what a cut entry keeps, fields are only counted.
                Some(_) if cutting.is_some() && fields.len() >= CUT_KEEP_FIELDS => {}
                Some(named) => fields.push((named, string)),
            }
        }
        let cut = cutting.map(|cutting| Box::new(cutting.finish(&mut fields)));
        Ok(RawEntry { id, fields, cut })
    }

    /// `n` bytes and their CRLF.
    fn bulk(&mut self, n: usize) -> RedisResult<Vec<u8>> {
        let buffered = self.io.buffer();
        let bytes = if n < buffered.len().saturating_sub(1) {
            let bytes = buffered[..n].to_vec();
            if &buffered[n..n + 2] != b"\r\n" {
                return Err(malformed("a string without its CRLF"));
            }
            self.io.consume(n + 2);
            bytes
        } else {
            // Its exact size at once (a giant is not copied through a
            // doubling buffer); the pages are touched only as bytes arrive.
            let mut bytes = Vec::new();
            bytes
                .try_reserve_exact(n)
                .map_err(|_| malformed("a string too long to hold"))?;
            let read = (&mut self.io).take(n as u64).read_to_end(&mut bytes)?;
            if read < n {
                return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into());
            }
            let mut crlf = [0; 2];
            self.io.read_exact(&mut crlf)?;
            if &crlf != b"\r\n" {
                return Err(malformed("a string without its CRLF"));
            }
            bytes
        };
        Ok(bytes)
    }

    /// `n` bytes and their CRLF, each piece handed to `sink` as it arrives;
    /// only the first `keep` are held.
    fn stream_bulk(
        &mut self,
        n: usize,
        keep: usize,
        mut sink: impl FnMut(&[u8]),
    ) -> RedisResult<Vec<u8>> {
        let mut kept = Vec::with_capacity(keep.min(n));
        let mut left = n;
        while left > 0 {
            let buffered = match self.io.fill_buf() {
                Ok(buffered) => buffered,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) => return Err(err.into()),
            };
            if buffered.is_empty() {
                return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into());
            }
            let piece = &buffered[..buffered.len().min(left)];
            sink(piece);
            let room = keep.saturating_sub(kept.len()).min(piece.len());
            kept.extend_from_slice(&piece[..room]);
            let taken = piece.len();
            self.io.consume(taken);
            left -= taken;
        }
        let mut crlf = [0; 2];
        self.io.read_exact(&mut crlf)?;
        if &crlf != b"\r\n" {
            return Err(malformed("a string without its CRLF"));
        }
        Ok(kept)
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

/// An entry being cut as it is read: what is held stops at what its dead
/// letter keeps ([`CUT_STRING`] a string, [`CUT_KEEP_FIELDS`] fields,
/// [`CUT_KEEP_BYTES`] in all), while the whole entry's fingerprint and each
/// shortened string's length and digest are computed from the bytes as
/// they pass.
struct Cutting {
    print: openssl::sha::Sha1,
    bytes: u64,
    strings: u64,
    kept_bytes: usize,
    cuts: Vec<CutString>,
}

impl Cutting {
    /// Starts cutting an entry of `strings` names and values, of which
    /// `fields` (and a `name` without its value yet) were held whole.
    fn start(strings: usize, fields: &mut RawFields, name: Option<&mut Vec<u8>>) -> Cutting {
        let mut cutting = Cutting {
            print: openssl::sha::Sha1::new(),
            bytes: 0,
            strings: 0,
            kept_bytes: 0,
            cuts: Vec::new(),
        };
        crate::event::pack::array_header(strings, &mut |bytes| cutting.print.update(bytes));
        let held = fields.len();
        for (index, (field_name, value)) in fields.iter_mut().enumerate() {
            cutting.held(field_name, index, true);
            cutting.held(value, index, false);
        }
        fields.truncate(CUT_KEEP_FIELDS);
        if let Some(name) = name {
            cutting.held(name, held, true);
        }
        cutting
    }

    /// Bytes of the next string of field `field` that are kept.
    fn room(&self, field: usize) -> usize {
        if field < CUT_KEEP_FIELDS {
            CUT_STRING.min(CUT_KEEP_BYTES.saturating_sub(self.kept_bytes))
        } else {
            0
        }
    }

    /// A string held whole before cutting began: hashed, then shortened.
    fn held(&mut self, string: &mut Vec<u8>, field: usize, is_name: bool) {
        crate::event::pack::string_header(string.len(), &mut |bytes| self.print.update(bytes));
        self.print.update(string);
        self.bytes += string.len() as u64;
        self.strings += 1;
        let keep = field < CUT_KEEP_FIELDS;
        let room = self.room(field);
        if string.len() > room {
            if keep {
                self.cuts.push(CutString {
                    field,
                    is_name,
                    length: string.len() as u64,
                    sha256: crate::event::hex(&openssl::sha::sha256(string)),
                });
            }
            string.truncate(room);
            string.shrink_to_fit();
        }
        self.kept_bytes += string.len();
    }

    /// The next string, `n` bytes, of field `field`, read off the socket.
    fn string(
        &mut self,
        wire: &mut Wire,
        n: usize,
        field: usize,
        is_name: bool,
    ) -> RedisResult<Vec<u8>> {
        let keep = field < CUT_KEEP_FIELDS;
        let room = self.room(field);
        crate::event::pack::string_header(n, &mut |bytes| self.print.update(bytes));
        let mut digest = (keep && n > room).then(openssl::sha::Sha256::new);
        let print = &mut self.print;
        let kept = wire.stream_bulk(n, room, |piece| {
            print.update(piece);
            if let Some(digest) = digest.as_mut() {
                digest.update(piece);
            }
        })?;
        if let Some(digest) = digest {
            self.cuts.push(CutString {
                field,
                is_name,
                length: n as u64,
                sha256: crate::event::hex(&digest.finish()),
            });
        }
        self.bytes += n as u64;
        self.strings += 1;
        self.kept_bytes += kept.len();
        Ok(kept)
    }

    /// What was cut; `fields` loses the fields past what is kept.
    fn finish(self, fields: &mut RawFields) -> Cut {
        fields.truncate(CUT_KEEP_FIELDS);
        Cut {
            bytes: self.bytes,
            fields: self.strings / 2,
            fingerprint: crate::event::hex(&self.print.finish()),
            strings: self.cuts,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::fmt::Write as _;

    use proptest::prelude::*;

    use super::*;
    use crate::event::EntryId;

    /// A connection to a "server" that sends `bytes` and hangs up: the
    /// worst a server (or a cut connection) can hand the parser.
    fn fed(bytes: &[u8]) -> Wire {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let bytes = bytes.to_vec();
        std::thread::spawn(move || {
            if let Ok((mut socket, _)) = listener.accept() {
                let _ = socket.write_all(&bytes);
            }
        });
        let url = RedisUrl::parse(&format!("redis://127.0.0.1:{port}")).expect("url");
        Wire::open(&url, Duration::from_secs(5), Duration::from_secs(5)).expect("open")
    }

    /// A "server" whose every read hands out at most the rest of one
    /// chunk, so the reader's buffer ends exactly where a chunk does,
    /// however busy the machine (no socket, no timing).
    struct Chunked(std::collections::VecDeque<Vec<u8>>);

    impl Read for Chunked {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let Some(chunk) = self.0.front_mut() else {
                return Ok(0);
            };
            let n = chunk.len().min(buf.len());
            buf[..n].copy_from_slice(&chunk[..n]);
            chunk.drain(..n);
            if chunk.is_empty() {
                self.0.pop_front();
            }
            Ok(n)
        }
    }

    impl Write for Chunked {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            Ok(bytes.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// `bytes` cut at `cuts` (positions past the end or repeated are
    /// dropped).
    fn chunked(bytes: &[u8], cuts: &[usize]) -> Wire {
        let mut cuts: Vec<usize> = cuts.iter().copied().filter(|&c| c < bytes.len()).collect();
        cuts.sort_unstable();
        cuts.dedup();
        let mut chunks = std::collections::VecDeque::new();
        let mut from = 0;
        for cut in cuts.into_iter().chain([bytes.len()]) {
            if cut > from {
                chunks.push_back(bytes[from..cut].to_vec());
                from = cut;
            }
        }
        Wire {
            io: BufReader::with_capacity(BUFFER, Box::new(Chunked(chunks))),
            db: 0,
            broken: false,
            line: Vec::new(),
            generic_held: 0,
        }
    }

    fn entry(id: &str, fields: &[(&str, &str)]) -> String {
        let mut out = format!("*2\r\n${}\r\n{id}\r\n*{}\r\n", id.len(), fields.len() * 2);
        for (name, value) in fields {
            let _ = write!(
                out,
                "${}\r\n{name}\r\n${}\r\n{value}\r\n",
                name.len(),
                value.len()
            );
        }
        out
    }

    #[test]
    fn a_reply_past_the_budget_is_read_past_and_the_next_reply_still_reads() {
        let big = "x".repeat(300_000);
        let reply = format!(
            "*3\r\n{}{}{}+OK\r\n",
            entry("1-1", &[("event_type", "request")]),
            entry("1-2", &[("error_message", &big)]),
            entry("1-3", &[("a", "b")]),
        );
        let mut wire = fed(reply.as_bytes());
        let taken = wire.entries(10, 10).expect("entries");
        assert_eq!(taken.total, 3);
        assert!(taken.cut());
        assert_eq!(taken.entries.len(), 1);
        assert_eq!(taken.entries[0].id, "1-1".parse::<EntryId>().unwrap());
        assert_eq!(
            taken.entries[0].fields,
            vec![(b"event_type".to_vec(), b"request".to_vec())]
        );
        assert_eq!(wire.value().expect("in step"), Value::Okay);
    }

    #[test]
    fn a_reply_cut_at_any_one_or_two_places_reads_the_same() {
        let reply = format!(
            "*2\r\n{}{}:-12\r\n*-1\r\n:999999999999999999\r\n:-1234567890123456789\r\n+OK\r\n",
            entry(
                "1700000000000-12",
                &[("event_type", "request"), ("", "\r\n")]
            ),
            entry("1-1", &[("a", &"b".repeat(12))]),
        );
        let reply = reply.as_bytes();
        let read = |mut wire: Wire| {
            let taken = wire.entries(usize::MAX, usize::MAX).expect("entries");
            let entries: Vec<_> = taken
                .entries
                .into_iter()
                .map(|e| (e.id, e.fields))
                .collect();
            let after: Vec<Value> = (0..5).map(|_| wire.value().expect("value")).collect();
            (entries, after)
        };
        let whole = read(chunked(reply, &[]));
        assert_eq!(whole.0.len(), 2);
        assert_eq!(
            whole.1,
            [
                Value::Int(-12),
                Value::Nil,
                Value::Int(999_999_999_999_999_999),
                Value::Int(-1_234_567_890_123_456_789),
                Value::Okay
            ]
        );
        for first in 1..reply.len() {
            assert_eq!(read(chunked(reply, &[first])), whole, "cut at {first}");
            for second in first + 1..reply.len() {
                assert_eq!(
                    read(chunked(reply, &[first, second])),
                    whole,
                    "cut at {first} and {second}"
                );
            }
        }
    }

    /// Whether a header read where it lies in the buffer (the buffer
    /// holding `bytes` up to the first cut) reads as the line reader reads
    /// the same bytes in one piece: the same kind and number and the same
    /// bytes left, or an error from both.
    fn read_alike(bytes: &[u8], cuts: &[usize]) -> Result<(), String> {
        let mut buffered = chunked(bytes, cuts);
        // From an empty buffer a header goes to the line reader whatever
        // it holds: fill it first.
        buffered.io.fill_buf().expect("in memory");
        let mut by_line = chunked(bytes, &[]);
        let shown = || format!("{:?} cut at {cuts:?}", String::from_utf8_lossy(bytes));
        match (buffered.header(), by_line.line_header()) {
            (Ok(got), Ok(want)) => {
                let mut left = (Vec::new(), Vec::new());
                buffered.io.read_to_end(&mut left.0).expect("in memory");
                by_line.io.read_to_end(&mut left.1).expect("in memory");
                if got != want || left.0 != left.1 {
                    return Err(format!("{}: read {got:?}, by line {want:?}", shown()));
                }
            }
            (Err(_), Err(_)) => {}
            (got, want) => return Err(format!("{}: read {got:?}, by line {want:?}", shown())),
        }
        Ok(())
    }

    #[test]
    fn length_lines_at_the_edges_read_alike_in_the_buffer_and_by_line() {
        let lines: &[&[u8]] = &[
            b"*0\r\n",
            b"*-0\r\n",
            b"*+0\r\n",
            b"*+5\r\n",
            b"*-+5\r\n",
            b"*+-5\r\n",
            b"*--5\r\n",
            b"*++5\r\n",
            b"$-1\r\n",
            b"$-\r\n",
            b"$+\r\n",
            b":\r\n",
            b":-\r\n",
            b"*\r\n",
            b"* 1\r\n",
            b"*1 \r\n",
            b"*1\r\r\n",
            b"*1\n\r\n",
            b"*1\r",
            b"*1",
            b":999999999999999999\r\n",
            b":-999999999999999999\r\n",
            b":0000000000000000001\r\n",
            b":000000000000000000\r\n",
            b":9223372036854775807\r\n",
            b":9223372036854775808\r\n",
            b":-9223372036854775808\r\n",
            b":-9223372036854775809\r\n",
            b":9999999999999999999\r\n",
            b":99999999999999999999999\r\n",
            b"*1\xd9\xa3\r\n",
            b"*\xef\xbc\x91\r\n",
            b"+OK\r\n",
            b"-ERR no\r\n",
            b"%1\r\n",
        ];
        for line in lines {
            let bytes = [*line, b"*1\r\n:7\r\n"].concat();
            for cut in 1..=bytes.len() {
                if let Err(differs) = read_alike(&bytes, &[cut]) {
                    panic!("{differs}");
                }
            }
        }
    }

    proptest! {
        #[test]
        fn any_length_line_reads_alike_in_the_buffer_and_by_line(
            line in prop_oneof![
                "[*$:+%-][-+]{0,2}[0-9]{0,21}[ x]?(\r\n|\r|\n|\r\r\n|\n\r\n|)",
                // Around 18 and 19 digits, where the buffered read stops.
                "[*$:][-+]?[0-9]{17,20}\r\n",
                "[*$:][-+]?9{17,20}\r\n",
                "[*$:][-+]?92233720368547758[0-9]{2}\r\n",
            ],
            rest in "[*$:0-9\r\n-]{0,8}",
            cuts in proptest::collection::vec(0usize..40, 0..4),
        ) {
            let bytes = [line.as_bytes(), rest.as_bytes()].concat();
            if let Err(differs) = read_alike(&bytes, &cuts) {
                prop_assert!(false, "{}", differs);
            }
        }
    }

    #[test]
    fn a_whole_reply_is_kept_within_the_budget_with_any_bytes() {
        let mut reply = b"*1\r\n*2\r\n$3\r\n7-0\r\n*2\r\n$0\r\n\r\n$4\r\n\0\xff\r\n\r\n".to_vec();
        reply.extend_from_slice(b"*0\r\n*-1\r\n");
        let mut wire = fed(&reply);
        let taken = wire.entries(usize::MAX, usize::MAX).expect("entries");
        assert!(!taken.cut());
        assert_eq!(
            taken.entries[0].fields,
            vec![(Vec::new(), b"\0\xff\r\n".to_vec())]
        );
        assert_eq!(wire.entries(0, 0).expect("empty").total, 0);
        assert_eq!(wire.entries(0, 0).expect("nil").total, 0);
    }

    #[test]
    fn an_error_inside_a_transactions_replies_gives_the_connection_up() {
        let mut wire = fed(b"+OK\r\n+QUEUED\r\n+QUEUED\r\n*2\r\n-WRONGTYPE no\r\n*0\r\n");
        let mut reader = crate::stream::reader::BoundedReader::default();
        let request = crate::stream::reader::ReadRequest {
            after: "1-1".parse().unwrap(),
            until: None,
            count: 10,
            budget: 1 << 20,
            giant_budget: 1 << 20,
            anchor: Some("0".repeat(40)),
        };
        let err = reader.read(&mut wire, "k", &request).expect_err("an error");
        assert_eq!(err.code(), Some("WRONGTYPE"));
        // The range's reply is still unread: nothing may follow on it.
        assert!(!redis::ConnectionLike::is_open(&wire));
    }

    #[test]
    fn a_server_error_keeps_the_connection_and_names_its_code() {
        let mut wire = fed(b"-WRONGTYPE Operation against a key\r\n:5\r\n");
        let err = wire.entries(100, 100).expect_err("an error");
        assert_eq!(err.code(), Some("WRONGTYPE"));
        assert!(redis::ConnectionLike::is_open(&wire));
        assert_eq!(wire.value().expect("in step"), Value::Int(5));
    }

    #[test]
    fn broken_replies_are_errors_that_break_the_connection_not_panics() {
        let deep = "*1\r\n".repeat(100);
        let cases: Vec<(&str, Vec<u8>)> = vec![
            (
                "cut in a string",
                b"*1\r\n*2\r\n$3\r\n1-1\r\n*2\r\n$10\r\nabc".to_vec(),
            ),
            (
                "a length no server sends",
                b"*1\r\n*2\r\n$3\r\n1-1\r\n*2\r\n$99999999999999\r\nab".to_vec(),
            ),
            (
                "a negative count",
                b"*1\r\n*2\r\n$3\r\n1-1\r\n*-7\r\n".to_vec(),
            ),
            (
                "an odd number of strings",
                b"*1\r\n*2\r\n$3\r\n1-1\r\n*1\r\n$1\r\na\r\n".to_vec(),
            ),
            ("not an ID", b"*1\r\n*2\r\n$3\r\nabc\r\n*0\r\n".to_vec()),
            (
                "no CRLF after a string",
                b"*1\r\n*2\r\n$3\r\n1-1XY*0\r\n".to_vec(),
            ),
            ("a line without CR", b"*1\n".to_vec()),
            ("an unknown type", b"%2\r\n".to_vec()),
            ("a length that is no number", b"*x\r\n".to_vec()),
            ("nothing at all", Vec::new()),
            ("a line longer than Redis sends", {
                let mut line = vec![b'+'];
                line.resize(2 << 20, b'a');
                line
            }),
            ("nested too deep", deep.clone().into_bytes()),
        ];
        for (what, bytes) in cases {
            let mut wire = fed(&bytes);
            assert!(
                wire.entries(usize::MAX, usize::MAX).is_err(),
                "{what}: entries"
            );
            assert!(!redis::ConnectionLike::is_open(&wire), "{what}: still open");
            assert!(wire.value().is_err(), "{what}: used after breaking");
        }
        let mut wire = fed(deep.as_bytes());
        assert!(wire.value().is_err(), "a generic reply nested too deep");
    }

    /// An entries reply holding `entries` as Redis writes it.
    fn reply_of(entries: &[(&str, &RawFields)]) -> Vec<u8> {
        let mut out = format!("*{}\r\n", entries.len()).into_bytes();
        for (id, fields) in entries {
            out.extend_from_slice(format!("*2\r\n${}\r\n{id}\r\n", id.len()).as_bytes());
            out.extend_from_slice(format!("*{}\r\n", fields.len() * 2).as_bytes());
            for (name, value) in *fields {
                for part in [name, value] {
                    out.extend_from_slice(format!("${}\r\n", part.len()).as_bytes());
                    out.extend_from_slice(part);
                    out.extend_from_slice(b"\r\n");
                }
            }
        }
        out
    }

    #[test]
    fn an_entry_too_large_to_store_is_cut_as_it_is_read_and_its_neighbours_are_whole() {
        let small: RawFields = vec![(b"event_type".to_vec(), b"request".to_vec())];
        // A giant value after a name; a giant name; many fields that add up.
        let value: Vec<u8> = (0..20 << 20).map(|n: usize| (n % 251) as u8).collect();
        let giant_value: RawFields = vec![
            (b"event_type".to_vec(), b"request".to_vec()),
            (b"blob".to_vec(), value.clone()),
            (b"after".to_vec(), vec![b'a'; 100 << 10]),
        ];
        let giant_name: RawFields = vec![(vec![b'n'; 17 << 20], b"v".to_vec())];
        let many: RawFields = (0..3_000)
            .map(|n| (format!("f{n}").into_bytes(), vec![b'x'; 8 << 10]))
            .collect();
        // More fields than an event may have, each tiny.
        let countless: RawFields = (0..10_001)
            .map(|n| (format!("{n}").into_bytes(), b"v".to_vec()))
            .collect();
        let entries = [
            ("1-0", &small),
            ("2-0", &giant_value),
            ("3-0", &giant_name),
            ("4-0", &many),
            ("5-0", &small),
            ("6-0", &countless),
        ];
        let bytes = reply_of(&entries);
        // Cut in odd places, so strings straddle the buffer's fills.
        let cuts: Vec<usize> = (1..40).map(|n| n * 1_234_567).collect();
        let taken = chunked(&bytes, &cuts)
            .entries(usize::MAX, usize::MAX)
            .expect("entries");
        assert_eq!(taken.total, 6);
        let read = &taken.entries;
        for (entry, (_, whole)) in read.iter().zip(&entries) {
            // The whole entry's fingerprint, as the trim script computes it.
            assert_eq!(entry.fingerprint(), crate::event::fingerprint(whole));
        }
        assert!(read[0].cut.is_none() && read[0].fields == small);
        assert!(read[4].cut.is_none() && read[4].fields == small);

        let cut = read[1].cut.as_ref().expect("cut");
        assert_eq!(
            cut.bytes,
            (10 + 7 + 4 + (20 << 20) + 5 + (100 << 10)) as u64
        );
        assert_eq!(cut.fields, 3);
        assert_eq!(read[1].fields[0], giant_value[0]);
        assert_eq!(read[1].fields[1].1, value[..CUT_STRING]);
        assert_eq!(read[1].fields[2].1.len(), CUT_STRING);
        let shortened: Vec<(usize, bool, u64)> = cut
            .strings
            .iter()
            .map(|s| (s.field, s.is_name, s.length))
            .collect();
        assert_eq!(shortened, [(1, false, 20 << 20), (2, false, 100 << 10)]);
        assert_eq!(
            cut.strings[0].sha256,
            crate::event::hex(&openssl::sha::sha256(&value))
        );

        let cut = read[2].cut.as_ref().expect("cut");
        assert_eq!(read[2].fields[0].0.len(), CUT_STRING);
        assert_eq!(read[2].fields[0].1, b"v");
        assert_eq!(
            (cut.strings[0].is_name, cut.strings[0].length),
            (true, 17 << 20)
        );

        // Many fields: what is kept stops at the dead letter's size.
        let cut = read[3].cut.as_ref().expect("cut");
        assert_eq!(cut.fields, 3_000);
        let kept: usize = read[3].fields.iter().map(|(n, v)| n.len() + v.len()).sum();
        assert!(kept <= CUT_KEEP_BYTES, "{kept}");
        assert!(read[3].fields.len() <= CUT_KEEP_FIELDS);
        assert_eq!(read[3].fields[0], many[0]);
        assert!(read[3].size() < 2 * CUT_KEEP_BYTES);
        // Cut from its first field on: nothing shortened, fields left out.
        let cut = read[5].cut.as_ref().expect("cut");
        assert_eq!(cut.fields, 10_001);
        assert!(cut.strings.is_empty());
        assert_eq!(read[5].fields, countless[..CUT_KEEP_FIELDS]);
        assert!(
            cut.reason(CUT_KEEP_FIELDS)
                .contains("more than the 10,000 fields")
        );
    }
}
