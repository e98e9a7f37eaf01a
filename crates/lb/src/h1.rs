//! HTTP/1.1 message heads and framing on byte slices, for the balancer's own HTTP/1 path.
//!
//! A client's request head is parsed (httparse) and rewritten in one pass into the head the backend gets:
//! origin-form target, HTTP/1.1, hop-by-hop headers removed (with those the Connection header names),
//! `X-Forwarded-For/-Proto/-Host` and `X-Request-Id` set, framing headers regenerated. A backend's response
//! head is rewritten the same way for the client. No header map is built and nothing is allocated per
//! header; the rewritten heads go into buffers the caller recycles.
//!
//! Invariant: framing is never ambiguous. A request with both Content-Length and Transfer-Encoding, with
//! differing Content-Lengths, or with a transfer coding other than `chunked` is refused (400), so the
//! balancer and the backend can never disagree on where a request ends (request smuggling).

use std::borrow::Cow;
use std::ops::Range;
use std::time::Duration;

/// Most header fields in a request or response head.
pub(crate) const MAX_HEADERS: usize = 100;

/// Why a head was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum HeadError {
    /// Larger than the header limit, or more than [`MAX_HEADERS`] fields (431).
    TooLarge,
    /// Not a valid HTTP/1.x head, or ambiguous framing (400).
    Malformed(&'static str),
    /// A method the balancer does not proxy (CONNECT) (405).
    Method,
}

/// How a request body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReqBody {
    None,
    Length(u64),
    Chunked,
}

/// How a response body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RespBody {
    /// No body (HEAD, 204, 304).
    Empty,
    Length(u64),
    Chunked,
    /// Delimited by the backend closing the connection.
    UntilClose,
}

/// An `X-Request-Id`: the client's when it is sane (1-128 visible ASCII characters), else a new UUID.
#[derive(Clone, Copy)]
pub(crate) struct RequestId {
    bytes: [u8; 128],
    len: u8,
}

impl RequestId {
    fn from_client(v: &[u8]) -> Option<RequestId> {
        if !(1..=128).contains(&v.len()) || !v.iter().all(|b| b.is_ascii_graphic()) {
            return None;
        }
        let mut bytes = [0u8; 128];
        bytes[..v.len()].copy_from_slice(v);
        Some(RequestId {
            bytes,
            len: v.len() as u8,
        })
    }

    pub(crate) fn generate() -> RequestId {
        let mut bytes = [0u8; 128];
        let len = uuid::fmt::Hyphenated::LENGTH;
        uuid::Uuid::new_v4()
            .hyphenated()
            .encode_lower(&mut bytes[..len]);
        RequestId {
            bytes,
            len: len as u8,
        }
    }

    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len as usize]
    }

    pub(crate) fn as_str(&self) -> &str {
        std::str::from_utf8(self.as_bytes()).unwrap_or("-")
    }
}

impl std::fmt::Debug for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the balancer needs to know of a request, besides the head it forwards.
#[derive(Debug)]
pub(crate) struct RequestMeta {
    pub(crate) body: ReqBody,
    /// The client may send another request on this connection.
    pub(crate) keep_alive: bool,
    pub(crate) expect_continue: bool,
    /// GET, HEAD, OPTIONS, TRACE, or any request carrying Idempotency-Key.
    pub(crate) safe: bool,
    pub(crate) head: bool,
    pub(crate) request_id: RequestId,
    /// The value of the consistent-hash header, when one is configured and present.
    pub(crate) hash_value: Option<Vec<u8>>,
}

/// A parsed client request head.
#[derive(Debug)]
pub(crate) struct Request {
    pub(crate) meta: RequestMeta,
    /// Length of the head in the input.
    pub(crate) len: usize,
    /// HTTP/1.x minor version.
    pub(crate) minor: u8,
}

fn is(name: &[u8], lower: &[u8]) -> bool {
    name.len() == lower.len() && name.eq_ignore_ascii_case(lower)
}

/// Header fields that never cross the balancer (RFC 9110 §7.6.1), besides those Connection names.
fn hop_by_hop(name: &[u8]) -> bool {
    match name.len() {
        2 => is(name, b"te"),
        7 => is(name, b"trailer") || is(name, b"upgrade"),
        10 => is(name, b"connection") || is(name, b"keep-alive"),
        16 => is(name, b"proxy-connection"),
        17 => is(name, b"transfer-encoding"),
        18 => is(name, b"proxy-authenticate"),
        19 => is(name, b"proxy-authorization"),
        _ => false,
    }
}

fn trim(v: &[u8]) -> &[u8] {
    let start = v
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(v.len());
    let end = v
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &v[start..end]
}

fn tokens(v: &[u8]) -> impl Iterator<Item = &[u8]> {
    v.split(|b| *b == b',').map(trim).filter(|t| !t.is_empty())
}

/// The Connection header's tokens across every Connection field: close, keep-alive, and the names of
/// further hop-by-hop fields.
#[derive(Default)]
struct ConnectionTokens<'a> {
    close: bool,
    keep_alive: bool,
    named: Vec<&'a [u8]>,
}

impl<'a> ConnectionTokens<'a> {
    fn read<'h>(headers: impl Iterator<Item = (&'h [u8], &'a [u8])>) -> ConnectionTokens<'a> {
        let mut t = ConnectionTokens::default();
        for (n, v) in headers {
            if !is(n, b"connection") {
                continue;
            }
            for tok in tokens(v) {
                if tok.eq_ignore_ascii_case(b"close") {
                    t.close = true;
                } else if tok.eq_ignore_ascii_case(b"keep-alive") {
                    t.keep_alive = true;
                } else {
                    t.named.push(tok);
                }
            }
        }
        t
    }

    fn names(&self, name: &[u8]) -> bool {
        self.named.iter().any(|n| n.eq_ignore_ascii_case(name))
    }
}

fn parse_length(v: &[u8]) -> Option<u64> {
    // A list of identical values ("5, 5") is allowed (RFC 9110 §8.6).
    let mut out: Option<u64> = None;
    for t in v.split(|b| *b == b',').map(trim) {
        if t.is_empty() || t.len() > 19 || !t.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let n = t.iter().fold(0u64, |acc, d| acc * 10 + u64::from(d - b'0'));
        match out {
            Some(o) if o != n => return None,
            _ => out = Some(n),
        }
    }
    out
}

/// Appends `name: value\r\n`.
fn put(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Appends a decimal number.
pub(crate) fn put_u64(out: &mut Vec<u8>, mut n: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[i..]);
}

/// The request's target in origin form, and the authority of an absolute-form target.
/// A request target in origin form, and the authority an absolute-form target named.
type Target<'a> = (Cow<'a, [u8]>, Option<&'a [u8]>);

fn origin_form<'a>(target: &'a [u8], method: &[u8]) -> Result<Target<'a>, HeadError> {
    if target.first() == Some(&b'/') {
        return Ok((Cow::Borrowed(target), None));
    }
    if target == b"*" && method == b"OPTIONS" {
        return Ok((Cow::Borrowed(target), None));
    }
    let rest = if target.len() > 7 && target[..7].eq_ignore_ascii_case(b"http://") {
        &target[7..]
    } else if target.len() > 8 && target[..8].eq_ignore_ascii_case(b"https://") {
        &target[8..]
    } else {
        return Err(HeadError::Malformed(
            "the request target is not a path or an absolute URL",
        ));
    };
    let end = rest
        .iter()
        .position(|b| matches!(b, b'/' | b'?' | b'#'))
        .unwrap_or(rest.len());
    let (authority, path) = rest.split_at(end);
    if authority.is_empty() {
        return Err(HeadError::Malformed("the request target has no host"));
    }
    // "http://host?q" has an empty path: it is "/?q" (RFC 9112 §3.2.2); a fragment is not sent.
    let path = match path.iter().position(|b| *b == b'#') {
        Some(f) => &path[..f],
        None => path,
    };
    let path = match path.first() {
        Some(b'/') => Cow::Borrowed(path),
        _ => {
            let mut p = Vec::with_capacity(path.len() + 1);
            p.push(b'/');
            p.extend_from_slice(path);
            Cow::Owned(p)
        }
    };
    Ok((path, Some(authority)))
}

/// The part of a request head that does not depend on the wire format (HTTP/1 or HTTP/2).
pub(crate) struct RequestParts<'a, H> {
    pub(crate) method: &'a [u8],
    /// Origin-form target (or `*`).
    pub(crate) target: &'a [u8],
    /// Host from an absolute target or `:authority`; it wins over a Host field.
    pub(crate) authority: Option<&'a [u8]>,
    pub(crate) headers: H,
    /// The client's address as text, for X-Forwarded-For.
    pub(crate) peer: &'a [u8],
    pub(crate) hash_header: Option<&'a str>,
    /// Whether the body's length is known (HTTP/2 requests without content-length are sent chunked).
    pub(crate) body: ReqBody,
}

/// Writes the head the backend gets into `out` (request line, fields, framing, blank line) and returns
/// what the balancer needs to know of the request. `headers` is iterated twice.
pub(crate) fn forward_request<'a, H>(
    p: RequestParts<'a, H>,
    out: &mut Vec<u8>,
) -> Result<RequestMeta, HeadError>
where
    H: Iterator<Item = (&'a [u8], &'a [u8])> + Clone,
{
    let conn = ConnectionTokens::read(p.headers.clone());
    out.extend_from_slice(p.method);
    out.push(b' ');
    out.extend_from_slice(p.target);
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let mut host_seen = false;
    if let Some(a) = p.authority {
        put(out, b"host", a);
        put(out, b"x-forwarded-host", a);
        host_seen = true;
    }
    let mut expect_continue = false;
    let mut idempotency_key = false;
    let mut request_id = None;
    let mut hash_value = None;
    let mut xff = Vec::new();
    for (n, v) in p.headers {
        // Connection may name hop-by-hop fields, but never Host.
        if hop_by_hop(n) || (conn.names(n) && !is(n, b"host")) {
            continue;
        }
        if let Some(h) = p.hash_header {
            if hash_value.is_none() && n.eq_ignore_ascii_case(h.as_bytes()) {
                hash_value = Some(v.to_vec());
            }
        }
        match n.len() {
            4 if is(n, b"host") => {
                if !host_seen {
                    put(out, b"host", v);
                    put(out, b"x-forwarded-host", v);
                    host_seen = true;
                }
                continue;
            }
            6 if is(n, b"expect") => {
                expect_continue |= v.eq_ignore_ascii_case(b"100-continue");
                continue;
            }
            12 if is(n, b"x-request-id") => {
                if request_id.is_none() {
                    request_id = RequestId::from_client(v);
                }
                continue;
            }
            14 if is(n, b"content-length") => continue,
            15 if is(n, b"x-forwarded-for") => {
                if !xff.is_empty() {
                    xff.extend_from_slice(b", ");
                }
                xff.extend_from_slice(v);
                continue;
            }
            16 if is(n, b"x-forwarded-host") => continue,
            17 if is(n, b"x-forwarded-proto") => continue,
            15 if is(n, b"idempotency-key") => idempotency_key |= !trim(v).is_empty(),
            _ => {}
        }
        put(out, n, v);
    }
    if !xff.is_empty() {
        xff.extend_from_slice(b", ");
    }
    out.extend_from_slice(b"x-forwarded-for: ");
    out.extend_from_slice(&xff);
    out.extend_from_slice(p.peer);
    out.extend_from_slice(b"\r\nx-forwarded-proto: http\r\n");
    let request_id = request_id.unwrap_or_else(RequestId::generate);
    put(out, b"x-request-id", request_id.as_bytes());
    match p.body {
        ReqBody::None => {
            // A body-less request: say so for methods whose requests usually carry one.
            if matches!(p.method, b"POST" | b"PUT" | b"PATCH") {
                out.extend_from_slice(b"content-length: 0\r\n");
            }
        }
        ReqBody::Length(n) => {
            out.extend_from_slice(b"content-length: ");
            put_u64(out, n);
            out.extend_from_slice(b"\r\n");
        }
        ReqBody::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
    }
    out.extend_from_slice(b"\r\n");
    let safe = matches!(p.method, b"GET" | b"HEAD" | b"OPTIONS" | b"TRACE") || idempotency_key;
    Ok(RequestMeta {
        body: p.body,
        keep_alive: !conn.close,
        expect_continue,
        safe,
        head: p.method == b"HEAD",
        request_id,
        hash_value,
    })
}

/// What httparse said of a head, in the balancer's terms: its length, `None` to read more, or why it is
/// refused (too large once `limit` bytes did not complete it; `invalid` when it is not HTTP).
fn head_len(
    parsed: httparse::Result<usize>,
    read: usize,
    limit: usize,
    invalid: &'static str,
) -> Result<Option<usize>, HeadError> {
    match parsed {
        Ok(httparse::Status::Complete(n)) if n > limit => Err(HeadError::TooLarge),
        Ok(httparse::Status::Complete(n)) => Ok(Some(n)),
        Ok(httparse::Status::Partial) if read >= limit => Err(HeadError::TooLarge),
        Ok(httparse::Status::Partial) => Ok(None),
        Err(httparse::Error::TooManyHeaders) => Err(HeadError::TooLarge),
        Err(_) => Err(HeadError::Malformed(invalid)),
    }
}

/// Parses a client's HTTP/1.x request head from `buf` and writes the backend's head into `out`.
/// `Ok(None)`: incomplete (read more, unless `buf` is already at the limit).
pub(crate) fn parse_request<'a>(
    buf: &'a [u8],
    limit: usize,
    peer: &'a [u8],
    hash_header: Option<&'a str>,
    out: &mut Vec<u8>,
) -> Result<Option<Request>, HeadError> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut fields);
    let parsed = req.parse(buf);
    let Some(len) = head_len(
        parsed,
        buf.len(),
        limit,
        "the request head is not valid HTTP/1.1",
    )?
    else {
        return Ok(None);
    };
    let method = req.method.unwrap_or("GET").as_bytes();
    let minor = req.version.unwrap_or(1);
    if method == b"CONNECT" {
        return Err(HeadError::Method);
    }
    let (target, authority) = origin_form(req.path.unwrap_or("/").as_bytes(), method)?;
    let hosts = req
        .headers
        .iter()
        .filter(|h| is(h.name.as_bytes(), b"host"))
        .count();
    if hosts > 1 || (hosts == 0 && minor == 1 && authority.is_none()) {
        return Err(HeadError::Malformed(
            "an HTTP/1.1 request needs exactly one Host field",
        ));
    }
    let headers = req.headers.iter().map(|h| (h.name.as_bytes(), h.value));
    // Framing (RFC 9112 §6): refuse anything two parsers could read differently.
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut client_keep_alive_token = false;
    for (n, v) in headers.clone() {
        if is(n, b"content-length") {
            let l = parse_length(v).ok_or(HeadError::Malformed("invalid Content-Length"))?;
            if length.is_some_and(|o| o != l) {
                return Err(HeadError::Malformed("conflicting Content-Length fields"));
            }
            length = Some(l);
        } else if is(n, b"transfer-encoding") {
            if chunked || minor == 0 {
                return Err(HeadError::Malformed("unsupported Transfer-Encoding"));
            }
            let mut codings = tokens(v);
            match (codings.next(), codings.next()) {
                (Some(c), None) if c.eq_ignore_ascii_case(b"chunked") => chunked = true,
                _ => return Err(HeadError::Malformed("unsupported Transfer-Encoding")),
            }
        } else if is(n, b"connection") {
            client_keep_alive_token |= tokens(v).any(|t| t.eq_ignore_ascii_case(b"keep-alive"));
        }
    }
    let body = match (length, chunked) {
        (Some(_), true) => {
            return Err(HeadError::Malformed(
                "both Content-Length and Transfer-Encoding",
            ))
        }
        (Some(0), false) | (None, false) => ReqBody::None,
        (Some(n), false) => ReqBody::Length(n),
        (None, true) => ReqBody::Chunked,
    };
    let mut meta = forward_request(
        RequestParts {
            method,
            target: &target,
            authority,
            headers,
            peer,
            hash_header,
            body,
        },
        out,
    )?;
    if minor == 0 {
        meta.keep_alive = meta.keep_alive && client_keep_alive_token;
        // An HTTP/1.0 client cannot expect 100 Continue (RFC 9110 §10.1.1).
        meta.expect_continue = false;
    }
    Ok(Some(Request { meta, len, minor }))
}

/// A parsed backend response head.
#[derive(Debug)]
pub(crate) struct Response {
    pub(crate) status: u16,
    /// Length of the head in the input.
    pub(crate) len: usize,
    pub(crate) body: RespBody,
    /// The backend connection may carry another request once this body is read.
    pub(crate) reusable: bool,
    /// Retry-After in seconds, when given as a number.
    pub(crate) retry_after: Option<Duration>,
    /// `X-Load-Shed` was present.
    pub(crate) shed: bool,
}

/// Parses a backend's response head from `buf`. `out` gets the client's head without its framing line,
/// its connection line and the blank line (the caller adds those): status line, the backend's fields
/// minus hop-by-hop ones (Content-Length kept), and `X-Request-Id` when the backend set none.
/// `Ok(None)`: incomplete. Informational (1xx) heads are returned like others; the caller skips them.
pub(crate) fn parse_response(
    buf: &[u8],
    limit: usize,
    head_request: bool,
    request_id: &RequestId,
    out: &mut Vec<u8>,
) -> Result<Option<Response>, HeadError> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut fields);
    let parsed = resp.parse(buf);
    let Some(len) = head_len(
        parsed,
        buf.len(),
        limit,
        "the response head is not valid HTTP/1.x",
    )?
    else {
        return Ok(None);
    };
    let status = resp.code.unwrap_or(502);
    if status < 100 {
        return Err(HeadError::Malformed("invalid status code"));
    }
    let minor = resp.version.unwrap_or(1);
    let headers = || resp.headers.iter().map(|h| (h.name.as_bytes(), h.value));
    let conn = ConnectionTokens::read(headers());
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut retry_after = None;
    let mut shed = false;
    let mut has_id = false;
    if (100..200).contains(&status) {
        return Ok(Some(Response {
            status,
            len,
            body: RespBody::Empty,
            reusable: true,
            retry_after,
            shed,
        }));
    }
    out.extend_from_slice(b"HTTP/1.1 ");
    put_u64(out, u64::from(status));
    out.push(b' ');
    out.extend_from_slice(resp.reason.unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    let mut length_at: Option<Range<usize>> = None;
    let mut coded = false;
    let mut codings: Vec<&[u8]> = Vec::new();
    for (n, v) in headers() {
        if is(n, b"transfer-encoding") {
            // The codings of every field, in order: chunked only counts when it is the last one.
            coded = true;
            codings.push(trim(v));
            chunked = tokens(v)
                .last()
                .is_some_and(|c| c.eq_ignore_ascii_case(b"chunked"));
            continue;
        }
        if hop_by_hop(n) || conn.names(n) {
            continue;
        }
        if is(n, b"content-length") {
            let l = parse_length(v).ok_or(HeadError::Malformed("invalid Content-Length"))?;
            if length.is_some_and(|o| o != l) {
                return Err(HeadError::Malformed("conflicting Content-Length fields"));
            }
            if length.is_some() {
                continue;
            }
            length = Some(l);
            let start = out.len();
            put(out, n, v);
            length_at = Some(start..out.len());
            continue;
        }
        if is(n, b"retry-after") {
            retry_after = std::str::from_utf8(trim(v))
                .ok()
                .and_then(|s| s.parse::<u64>().ok())
                .map(Duration::from_secs);
        } else if is(n, b"x-load-shed") {
            shed = true;
        } else if is(n, b"x-request-id") {
            has_id = true;
        }
        put(out, n, v);
    }
    if !has_id {
        put(out, b"x-request-id", request_id.as_bytes());
    }
    let no_body = head_request || status == 204 || status == 304;
    let mut reusable = minor == 1 && !conn.close;
    let body = if no_body {
        RespBody::Empty
    } else if coded {
        if let Some(r) = length_at {
            // Transfer-Encoding wins over Content-Length (RFC 9112 §6.3); the length is not passed on and
            // the connection is not trusted further.
            out.drain(r);
            reusable = false;
        }
        if chunked {
            RespBody::Chunked
        } else {
            // A coding other than chunked last: the body runs until the backend closes, and passes as
            // it is, so the client still needs to know its codings.
            reusable = false;
            put(out, b"transfer-encoding", &codings.join(&b", "[..]));
            RespBody::UntilClose
        }
    } else if let Some(n) = length {
        RespBody::Length(n)
    } else {
        reusable = false;
        RespBody::UntilClose
    };
    Ok(Some(Response {
        status,
        len,
        body,
        reusable,
        retry_after,
        shed,
    }))
}

/// Where a chunked body is in its framing.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    #[default]
    Size,
    Ext,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    TrailerStart,
    Trailer,
    TrailerLf,
    LastLf,
    Done,
}

/// Most bytes of chunk extensions and trailer fields in one body.
const CHUNK_OVERHEAD_LIMIT: usize = 16 * 1024;

/// Follows a chunked body through its framing, fed in pieces as they arrive: where it ends, and which
/// bytes are data.
#[derive(Debug, Default)]
pub(crate) struct Chunked {
    state: ChunkState,
    size: u64,
    digits: u8,
    overhead: usize,
}

impl Chunked {
    /// True once the last chunk and the trailer section were consumed.
    pub(crate) fn done(&self) -> bool {
        self.state == ChunkState::Done
    }

    /// Consumes framing from `input`; returns the bytes consumed (all of `input` unless the body ended
    /// inside it) and calls `data` with each range of body data.
    pub(crate) fn feed(
        &mut self,
        input: &[u8],
        mut data: impl FnMut(Range<usize>),
    ) -> Result<usize, &'static str> {
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            match self.state {
                ChunkState::Size => match b {
                    b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                        if self.digits == 15 {
                            return Err("chunk size too large");
                        }
                        let d = (b as char).to_digit(16).unwrap_or(0);
                        self.size = self.size * 16 + u64::from(d);
                        self.digits += 1;
                    }
                    b';' | b' ' | b'\t' if self.digits > 0 => self.state = ChunkState::Ext,
                    b'\r' if self.digits > 0 => self.state = ChunkState::SizeLf,
                    _ => return Err("invalid chunk size"),
                },
                ChunkState::Ext => {
                    self.overhead += 1;
                    if self.overhead > CHUNK_OVERHEAD_LIMIT {
                        return Err("chunk extensions too large");
                    }
                    // A bare LF or other control byte could end the line for another parser: refuse it.
                    match b {
                        b'\r' => self.state = ChunkState::SizeLf,
                        b'\t' | b' '..=b'~' | 0x80..=0xff => {}
                        _ => return Err("invalid chunk extension"),
                    }
                }
                ChunkState::SizeLf => {
                    if b != b'\n' {
                        return Err("invalid chunk size line");
                    }
                    self.digits = 0;
                    self.state = if self.size == 0 {
                        ChunkState::TrailerStart
                    } else {
                        ChunkState::Data
                    };
                }
                ChunkState::Data => {
                    let take =
                        (input.len() - i).min(usize::try_from(self.size).unwrap_or(usize::MAX));
                    data(i..i + take);
                    self.size -= take as u64;
                    i += take;
                    if self.size == 0 {
                        self.state = ChunkState::DataCr;
                    }
                    continue;
                }
                ChunkState::DataCr => {
                    if b != b'\r' {
                        return Err("chunk data longer than its size");
                    }
                    self.state = ChunkState::DataLf;
                }
                ChunkState::DataLf => {
                    if b != b'\n' {
                        return Err("invalid chunk end");
                    }
                    self.state = ChunkState::Size;
                }
                ChunkState::TrailerStart => {
                    self.state = match b {
                        b'\r' => ChunkState::LastLf,
                        b'\t' | b' '..=b'~' | 0x80..=0xff => ChunkState::Trailer,
                        _ => return Err("invalid trailer line"),
                    };
                }
                ChunkState::Trailer => {
                    self.overhead += 1;
                    if self.overhead > CHUNK_OVERHEAD_LIMIT {
                        return Err("trailer section too large");
                    }
                    match b {
                        b'\r' => self.state = ChunkState::TrailerLf,
                        b'\t' | b' '..=b'~' | 0x80..=0xff => {}
                        _ => return Err("invalid trailer line"),
                    }
                }
                ChunkState::TrailerLf => {
                    if b != b'\n' {
                        return Err("invalid trailer line");
                    }
                    self.state = ChunkState::TrailerStart;
                }
                ChunkState::LastLf => {
                    if b != b'\n' {
                        return Err("invalid end of chunked body");
                    }
                    self.state = ChunkState::Done;
                    return Ok(i + 1);
                }
                ChunkState::Done => return Ok(i),
            }
            i += 1;
        }
        Ok(i)
    }
}

/// Appends one chunk's framing and data.
pub(crate) fn put_chunk(out: &mut Vec<u8>, data: &[u8]) {
    if data.is_empty() {
        return;
    }
    out.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// The last chunk and an empty trailer section.
pub(crate) const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

#[cfg(test)]
mod tests {
    use super::*;

    fn peer() -> &'static [u8] {
        b"192.0.2.7"
    }

    fn req(raw: &str) -> Result<Option<(Request, String)>, HeadError> {
        let mut out = Vec::new();
        parse_request(raw.as_bytes(), 16 * 1024, peer(), None, &mut out)
            .map(|r| r.map(|r| (r, String::from_utf8(out).unwrap())))
    }

    fn raw_len(s: &str) -> usize {
        s.len()
    }

    #[test]
    fn a_request_head_is_rewritten_for_the_backend() {
        let (r, out) = req("GET /a?b=1 HTTP/1.1\r\nHost: shop\r\nConnection: x-hop, keep-alive\r\nX-Hop: 1\r\nKeep-Alive: 5\r\nX-Forwarded-For: 203.0.113.9\r\nX-Request-Id: req-77\r\nAccept: */*\r\n\r\nNEXT")
            .unwrap()
            .unwrap();
        assert_eq!(r.len, raw_len("GET /a?b=1 HTTP/1.1\r\nHost: shop\r\nConnection: x-hop, keep-alive\r\nX-Hop: 1\r\nKeep-Alive: 5\r\nX-Forwarded-For: 203.0.113.9\r\nX-Request-Id: req-77\r\nAccept: */*\r\n\r\n"));
        assert!(out.starts_with("GET /a?b=1 HTTP/1.1\r\nhost: shop\r\nx-forwarded-host: shop\r\n"));
        assert!(!out.to_ascii_lowercase().contains("x-hop"), "{out}");
        assert!(!out.to_ascii_lowercase().contains("keep-alive"), "{out}");
        assert!(!out.to_ascii_lowercase().contains("connection"), "{out}");
        assert!(out.contains("Accept: */*\r\n"));
        assert!(out.contains("x-forwarded-for: 203.0.113.9, 192.0.2.7\r\n"));
        assert!(out.contains("x-forwarded-proto: http\r\n"));
        assert!(out.contains("x-request-id: req-77\r\n"));
        assert!(out.ends_with("\r\n\r\n"));
        assert!(r.meta.safe && r.meta.keep_alive && r.meta.body == ReqBody::None);
        assert_eq!(r.meta.request_id.as_str(), "req-77");
    }

    #[test]
    fn absolute_targets_become_origin_form_and_give_the_host() {
        let (_, out) = req("GET http://example.test:8080/p?q HTTP/1.1\r\nHost: other\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(
            out.starts_with("GET /p?q HTTP/1.1\r\nhost: example.test:8080\r\n"),
            "{out}"
        );
        assert_eq!(
            out.matches("host:").count(),
            2,
            "host and x-forwarded-host: {out}"
        );
        let (_, out) = req("OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(out.starts_with("OPTIONS * HTTP/1.1\r\nhost: a\r\n"));
        assert!(req("GET foo HTTP/1.1\r\nHost: a\r\n\r\n").is_err());
        assert_eq!(
            req("CONNECT a:443 HTTP/1.1\r\nHost: a\r\n\r\n").unwrap_err(),
            HeadError::Method
        );
    }

    #[test]
    fn ambiguous_framing_is_refused() {
        for raw in [
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 6\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
        ] {
            assert!(matches!(req(raw), Err(HeadError::Malformed(_))), "{raw:?}");
        }
        let (r, out) = req("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(r.meta.body, ReqBody::Length(5));
        assert!(out.contains("content-length: 5\r\n") && !r.meta.safe);
        let (r, out) = req(
            "PUT / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked\r\nIdempotency-Key: k\r\n\r\n",
        )
        .unwrap()
        .unwrap();
        assert_eq!(r.meta.body, ReqBody::Chunked);
        assert!(out.contains("transfer-encoding: chunked\r\n") && r.meta.safe);
    }

    #[test]
    fn limits_and_partial_heads() {
        assert!(req("GET / HTTP/1.1\r\nHost: a\r\n").unwrap().is_none());
        let big = format!(
            "GET / HTTP/1.1\r\nHost: a\r\nX: {}\r\n\r\n",
            "a".repeat(20_000)
        );
        assert_eq!(req(&big).unwrap_err(), HeadError::TooLarge);
        let many: String = (0..150).map(|i| format!("X-{i}: 1\r\n")).collect();
        assert_eq!(
            req(&format!("GET / HTTP/1.1\r\nHost: a\r\n{many}\r\n")).unwrap_err(),
            HeadError::TooLarge
        );
        assert!(matches!(
            req("\x16\x03\x01 not http\r\n\r\n"),
            Err(HeadError::Malformed(_))
        ));
    }

    #[test]
    fn host_is_required_once_and_never_dropped() {
        assert!(matches!(
            req("GET / HTTP/1.1\r\n\r\n"),
            Err(HeadError::Malformed(_))
        ));
        assert!(matches!(
            req("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"),
            Err(HeadError::Malformed(_))
        ));
        assert!(req("GET / HTTP/1.0\r\n\r\n").unwrap().is_some());
        let (_, out) = req("GET / HTTP/1.1\r\nHost: a\r\nConnection: host\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(out.contains("host: a\r\n"), "{out}");
        let (_, out) = req("GET http://h?x=1 HTTP/1.1\r\nHost: h\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(
            out.starts_with("GET /?x=1 HTTP/1.1\r\nhost: h\r\n"),
            "{out}"
        );
        let (r, _) = req("POST / HTTP/1.0\r\nContent-Length: 1\r\nExpect: 100-continue\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(
            !r.meta.expect_continue,
            "HTTP/1.0 clients cannot expect 100 Continue"
        );
        let (r, _) = req("POST / HTTP/1.1\r\nHost: a\r\nIdempotency-Key: \r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(
            !r.meta.safe,
            "an empty Idempotency-Key does not make a POST safe to repeat"
        );
    }

    #[test]
    fn keep_alive_follows_the_version_and_connection() {
        let ka = |raw: &str| req(raw).unwrap().unwrap().0.meta.keep_alive;
        assert!(ka("GET / HTTP/1.1\r\nHost: a\r\n\r\n"));
        assert!(!ka(
            "GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
        ));
        assert!(!ka("GET / HTTP/1.0\r\n\r\n"));
        assert!(ka("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"));
    }

    #[test]
    fn the_hash_header_is_picked_up() {
        let mut out = Vec::new();
        let r = parse_request(
            b"GET / HTTP/1.1\r\nHost: a\r\nX-User: u1\r\n\r\n",
            1024,
            peer(),
            Some("x-user"),
            &mut out,
        )
        .unwrap()
        .unwrap();
        assert_eq!(r.meta.hash_value.as_deref(), Some(&b"u1"[..]));
    }

    fn resp(raw: &str, head: bool) -> (Response, String) {
        let mut out = Vec::new();
        let id = RequestId::from_client(b"rid").unwrap();
        let r = parse_response(raw.as_bytes(), 16 * 1024, head, &id, &mut out)
            .unwrap()
            .unwrap();
        (r, String::from_utf8(out).unwrap())
    }

    #[test]
    fn response_heads_are_cleaned_and_framed() {
        let (r, out) = resp("HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: keep-alive, x-a\r\nX-A: 1\r\nServer: s\r\n\r\nabc", false);
        assert_eq!(
            (r.status, r.body, r.reusable),
            (200, RespBody::Length(3), true)
        );
        assert_eq!(
            out,
            "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nServer: s\r\nx-request-id: rid\r\n"
        );
        let (r, out) = resp(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 9\r\n\r\n",
            false,
        );
        assert_eq!((r.body, r.reusable), (RespBody::Chunked, false));
        assert!(!out.contains("Content-Length") && !out.contains("Transfer"));
        let (r, _) = resp("HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n", true);
        assert_eq!(r.body, RespBody::Empty);
        let (r, out) = resp(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nContent-Length: 10\r\n\r\n",
            false,
        );
        assert_eq!((r.body, r.reusable), (RespBody::UntilClose, false));
        assert!(!out.contains("Content-Length"), "{out}");
        assert!(
            out.contains("transfer-encoding: gzip\r\n"),
            "the coding is kept: {out}"
        );
        let (r, _) = resp(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n",
            false,
        );
        assert_eq!(r.body, RespBody::UntilClose);
        let mut out = Vec::new();
        let id = RequestId::from_client(b"rid").unwrap();
        assert!(parse_response(b"HTTP/1.1 099 X\r\n\r\n", 1024, false, &id, &mut out).is_err());
        let (r, _) = resp("HTTP/1.0 200 OK\r\n\r\n", false);
        assert_eq!((r.body, r.reusable), (RespBody::UntilClose, false));
        let (r, _) = resp(
            "HTTP/1.1 304 Not Modified\r\nX-Request-Id: b\r\n\r\n",
            false,
        );
        assert_eq!(r.body, RespBody::Empty);
        let (r, out) = resp("HTTP/1.1 503 Busy\r\nRetry-After: 7\r\nX-Load-Shed: search\r\nContent-Length: 0\r\n\r\n", false);
        assert_eq!(r.retry_after, Some(Duration::from_secs(7)));
        assert!(r.shed && out.contains("X-Load-Shed: search"));
        let (r, out) = resp("HTTP/1.1 100 Continue\r\n\r\n", false);
        assert_eq!((r.status, out.as_str()), (100, ""));
    }

    fn dechunk(pieces: &[&[u8]]) -> Result<(Vec<u8>, usize, bool), &'static str> {
        let mut c = Chunked::default();
        let mut data = Vec::new();
        let mut consumed = 0;
        for p in pieces {
            let n = c.feed(p, |r| data.extend_from_slice(&p[r]))?;
            consumed += n;
            if c.done() {
                break;
            }
        }
        Ok((data, consumed, c.done()))
    }

    #[test]
    fn chunked_bodies_are_followed_across_any_split() {
        let body = b"5;ext=1\r\nhello\r\n7\r\n, world\r\n0\r\nTrailer: x\r\n\r\nNEXT";
        for split in 0..body.len() {
            let (a, b) = body.split_at(split);
            let (data, consumed, done) = dechunk(&[a, b]).unwrap();
            assert_eq!(data, b"hello, world", "split {split}");
            assert!(done);
            assert_eq!(consumed, body.len() - 4, "split {split}");
        }
        assert!(dechunk(&[b"5\r\nhello!\r\n"]).is_err());
        // Bare LFs, which another parser could read as line ends, are refused (request smuggling).
        assert!(dechunk(&[b"0\r\n\nGET /admin HTTP/1.1\r\nHost: a\r\n\r\n"]).is_err());
        assert!(dechunk(&[b"5;\nXXXXX\r\nhello\r\n0\r\n\r\n"]).is_err());
        assert!(dechunk(&[b"0\r\nX: a\nb\r\n\r\n"]).is_err());
        assert!(dechunk(&[b"5\nhello\r\n0\r\n\r\n"]).is_err());
        assert!(dechunk(&[b"zz\r\n"]).is_err());
        assert!(dechunk(&[b"ffffffffffffffffff\r\n"]).is_err());
        let (_, _, done) = dechunk(&[b"5\r\nhel"]).unwrap();
        assert!(!done);
        let mut out = Vec::new();
        put_chunk(&mut out, b"hello");
        out.extend_from_slice(LAST_CHUNK);
        assert_eq!(dechunk(&[&out]).unwrap().0, b"hello");
    }

    #[test]
    fn numbers_are_written_in_decimal() {
        for n in [0u64, 7, 10, 1234567890, u64::MAX] {
            let mut out = Vec::new();
            put_u64(&mut out, n);
            assert_eq!(out, n.to_string().as_bytes());
        }
    }
}
