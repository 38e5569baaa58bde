//! reprod's lean HTTP/1.1 client: one keep-alive connection per in-flight attempt, taken from and
//! returned to a per-target pool, with the attempt's own task doing the I/O.
//!
//! A general-purpose client (hyper's pooled client) runs each connection in a task of its own
//! and hands requests to it over channels, which costs two task wake-ups per request on top of
//! the socket work. A load generator sends the same simple requests millions of times, so the
//! engine writes them itself: one `write` of a request built in one buffer, `read`s until the
//! response is complete (Content-Length, chunked, or until close), parsing with `httparse`.
//! The load engine sends attempts with it and the fault layer forwards proxied calls with it.

#![deny(missing_docs)]

use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Largest response head accepted.
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Largest response body read.
const MAX_BODY_BYTES: usize = 1 << 20;
/// Idle connections kept per target.
const MAX_IDLE: usize = 1024;
/// Bytes a read asks for.
const READ_CHUNK: usize = 8192;

/// How an exchange failed.
#[derive(Debug)]
pub enum HttpError {
    /// No connection could be made: the request was never sent.
    Connect(String),
    /// The connection failed after the request may have been sent.
    Transport(String),
}

/// A response as the engine needs it.
#[derive(Debug)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// `Retry-After` in seconds, when present and numeric.
    pub retry_after: Option<Duration>,
    /// The body (up to [`MAX_BODY_BYTES`]).
    pub body: Vec<u8>,
    /// The headers, when asked for (`keep_headers`).
    pub headers: Vec<(String, Vec<u8>)>,
}

struct Conn {
    stream: TcpStream,
    /// Bytes read past the previous response (pipelining never happens, but be exact).
    leftover: Vec<u8>,
}

/// Keep-alive connections to one target.
pub struct Pool {
    addr: SocketAddr,
    host: String,
    idle: Mutex<Vec<Conn>>,
    connect_timeout: Duration,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool").field("addr", &self.addr).finish()
    }
}

impl Pool {
    /// A pool for `addr`, sending `Host: host`.
    pub fn new(addr: SocketAddr, host: String) -> Pool {
        Pool {
            addr,
            host,
            idle: Mutex::new(Vec::new()),
            connect_timeout: Duration::from_secs(5),
        }
    }

    /// A pool for `http://host[:port]`; a name that does not resolve gets a pool whose every
    /// connect fails, which callers record as connection errors.
    pub async fn for_url(url: &str) -> Pool {
        let authority = url
            .strip_prefix("http://")
            .unwrap_or(url)
            .split('/')
            .next()
            .unwrap_or("");
        let with_port = if authority
            .rsplit_once(':')
            .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
        {
            authority.to_string()
        } else {
            format!("{authority}:80")
        };
        let addr = match tokio::net::lookup_host(&with_port).await {
            Ok(mut addrs) => addrs.next(),
            Err(_) => None,
        };
        Pool::new(
            addr.unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0))),
            authority.to_string(),
        )
    }

    /// The `Host` header value.
    pub fn host(&self) -> &str {
        &self.host
    }

    fn take(&self) -> Option<Conn> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop()
    }

    fn give_back(&self, conn: Conn) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < MAX_IDLE {
            idle.push(conn);
        }
    }

    async fn connect(&self) -> Result<Conn, HttpError> {
        let stream = tokio::time::timeout(self.connect_timeout, TcpStream::connect(self.addr))
            .await
            .map_err(|_| HttpError::Connect(format!("connecting to {} timed out", self.addr)))?
            .map_err(|e| HttpError::Connect(format!("{}: {e}", self.addr)))?;
        let _ = stream.set_nodelay(true);
        Ok(Conn {
            stream,
            leftover: Vec::new(),
        })
    }

    /// Sends `request` (a complete HTTP/1.1 request) and reads the response.
    ///
    /// A request that may have reached the server is never sent again here: a pooled
    /// connection is checked before use (a server that closed it while it was idle is found
    /// then, and a fresh connection is used instead), and only a write that sent not one byte
    /// is retried on a fresh connection. Any failure after that is an error of this attempt for
    /// the caller to record, retry as an attempt of its own, or call ambiguous.
    pub async fn exchange(&self, request: &[u8], head_only: bool) -> Result<Response, HttpError> {
        self.exchange_with(request, head_only, false).await
    }

    /// [`Pool::exchange`], also returning the response headers when `keep_headers`.
    pub async fn exchange_with(
        &self,
        request: &[u8],
        head_only: bool,
        keep_headers: bool,
    ) -> Result<Response, HttpError> {
        while let Some(conn) = self.take() {
            if !still_open(&conn.stream) {
                continue;
            }
            match self
                .exchange_on(conn, request, head_only, keep_headers)
                .await
            {
                Ok(response) => return Ok(response),
                // Not a byte of the request left: the server cannot have seen it.
                Err(Failure { unsent: true, .. }) => break,
                Err(Failure { error, .. }) => return Err(error),
            }
        }
        let conn = self.connect().await?;
        self.exchange_on(conn, request, head_only, keep_headers)
            .await
            .map_err(|f| f.error)
    }

    /// Last-byte synchronisation: on a connection of its own, writes all of `request` but its
    /// final byte, waits for `gate`, then sends the final byte and reads the response. The
    /// server cannot act on the request before the final byte, so members of a group that all
    /// wait at one gate reach it together, within the time it takes to write one byte each.
    pub async fn exchange_gated(
        &self,
        request: &[u8],
        head_only: bool,
        gate: impl Future<Output = ()>,
    ) -> Result<Response, HttpError> {
        let Some((last, head)) = request.split_last() else {
            return Err(HttpError::Transport("an empty request".to_string()));
        };
        let mut conn = loop {
            match self.take() {
                Some(conn) if still_open(&conn.stream) => break conn,
                Some(_) => continue,
                None => break self.connect().await?,
            }
        };
        conn.stream
            .write_all(head)
            .await
            .map_err(|e| HttpError::Transport(format!("sending: {e}")))?;
        gate.await;
        self.exchange_on(conn, std::slice::from_ref(last), head_only, false)
            .await
            .map_err(|f| f.error)
    }

    /// One round trip on `conn`, which goes back to the pool when it can carry another.
    async fn exchange_on(
        &self,
        mut conn: Conn,
        request: &[u8],
        head_only: bool,
        keep_headers: bool,
    ) -> Result<Response, Failure> {
        let (response, reusable) = round_trip(
            &mut conn.stream,
            &mut conn.leftover,
            request,
            head_only,
            keep_headers,
        )
        .await?;
        if reusable {
            self.give_back(conn);
        }
        Ok(response)
    }
}

/// Whether an idle connection can take a request: the server has not closed it (or sent
/// anything unasked) while it sat in the pool.
fn still_open(stream: &TcpStream) -> bool {
    let mut probe = [0u8; 1];
    matches!(stream.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

/// One exchange on `stream`: writes `request`, reads one response (bytes read past it stay in
/// `leftover`). Returns the response and whether the connection can carry another. Every length
/// is checked: a response that is malformed, too large or cut short is an error, never a panic.
pub async fn round_trip<S>(
    stream: &mut S,
    leftover: &mut Vec<u8>,
    request: &[u8],
    head_only: bool,
    keep_headers: bool,
) -> Result<(Response, bool), Failure>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut written = 0;
    while written < request.len() {
        match stream.write(&request[written..]).await {
            Ok(0) => return Err(Failure::sending("the connection took no bytes", written)),
            Ok(n) => written += n,
            Err(e) => return Err(Failure::sending(&format!("sending: {e}"), written)),
        }
    }
    // Reads go straight into `buf`'s spare capacity: no stack buffer, which would make every
    // attempt's future several KiB larger.
    let mut buf = std::mem::take(leftover);
    // Head.
    let mut kept_headers = Vec::new();
    let (status, head_len, framing, keep_alive, retry_after) = loop {
        if !buf.is_empty() {
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut parsed = httparse::Response::new(&mut headers);
            match parsed.parse(&buf) {
                Ok(httparse::Status::Complete(len)) => {
                    let status = parsed.code.unwrap_or(0);
                    if (100..200).contains(&status) {
                        buf.drain(..len);
                        continue;
                    }
                    let info = head_info(&parsed, head_only)?;
                    if keep_headers {
                        kept_headers = parsed
                            .headers
                            .iter()
                            .map(|h| (h.name.to_string(), h.value.to_vec()))
                            .collect();
                    }
                    break (status, len, info.0, info.1, info.2);
                }
                Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD_BYTES => {
                    return Err(Failure::read("response head too large"));
                }
                Ok(httparse::Status::Partial) => {}
                Err(e) => return Err(Failure::read(&format!("malformed response: {e}"))),
            }
        }
        match read_into(stream, &mut buf).await {
            Ok(0) if buf.is_empty() => {
                return Err(Failure::read(
                    "the connection closed before any response (the request may have been processed)",
                ));
            }
            Ok(0) => return Err(Failure::read("connection closed mid-response")),
            Ok(_) => {}
            Err(e) => return Err(Failure::read(&format!("reading: {e}"))),
        }
    };
    buf.drain(..head_len);
    // Body.
    let body = match framing {
        Framing::Length(len) => {
            if len > MAX_BODY_BYTES {
                return Err(Failure::read(&format!(
                    "response body of {len} bytes is larger than the {MAX_BODY_BYTES} bytes reprod reads"
                )));
            }
            while buf.len() < len {
                read_more(stream, &mut buf).await?;
            }
            // The buffer stays with the connection, capacity and all: no allocation per
            // attempt but the body's own.
            let body = buf[..len].to_vec();
            buf.drain(..len);
            *leftover = buf;
            body
        }
        Framing::Chunked => read_chunked(stream, leftover, buf).await?,
        Framing::UntilClose => {
            loop {
                if buf.len() > MAX_BODY_BYTES {
                    return Err(Failure::read("response body too large"));
                }
                match read_into(stream, &mut buf).await {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(e) => return Err(Failure::read(&format!("reading: {e}"))),
                }
            }
            buf
        }
    };
    let reusable = keep_alive && !matches!(framing, Framing::UntilClose);
    Ok((
        Response {
            status,
            retry_after,
            body,
            headers: kept_headers,
        },
        reusable,
    ))
}

/// A failed round trip; `unsent` when not a byte of the request was written (the server
/// cannot have seen it, so it is safe to send on another connection).
#[derive(Debug)]
pub struct Failure {
    /// What went wrong.
    pub error: HttpError,
    /// Nothing was written.
    pub unsent: bool,
}

impl Failure {
    fn sending(e: &str, written: usize) -> Failure {
        Failure {
            error: HttpError::Transport(e.to_string()),
            unsent: written == 0,
        }
    }

    fn read(e: &str) -> Failure {
        Failure {
            error: HttpError::Transport(e.to_string()),
            unsent: false,
        }
    }
}

enum Framing {
    Length(usize),
    Chunked,
    UntilClose,
}

fn head_info(
    r: &httparse::Response<'_, '_>,
    head_only: bool,
) -> Result<(Framing, bool, Option<Duration>), Failure> {
    let status = r.code.unwrap_or(0);
    let mut framing = Framing::UntilClose;
    let mut keep_alive = r.version == Some(1);
    let mut retry_after = None;
    for h in r.headers.iter() {
        let name = h.name;
        if name.eq_ignore_ascii_case("content-length") {
            let len = std::str::from_utf8(h.value)
                .ok()
                .map(str::trim)
                .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|v| v.parse::<usize>().ok())
                .ok_or_else(|| {
                    Failure::read(&format!(
                        "malformed response: Content-Length {:?}",
                        String::from_utf8_lossy(h.value)
                    ))
                })?;
            if let Framing::Length(earlier) = framing
                && earlier != len
            {
                return Err(Failure::read(
                    "malformed response: two different Content-Length headers",
                ));
            }
            if !matches!(framing, Framing::Chunked) {
                framing = Framing::Length(len);
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            if h.value
                .windows(7)
                .any(|w| w.eq_ignore_ascii_case(b"chunked"))
            {
                framing = Framing::Chunked;
            }
        } else if name.eq_ignore_ascii_case("connection") {
            if h.value.windows(5).any(|w| w.eq_ignore_ascii_case(b"close")) {
                keep_alive = false;
            } else if h
                .value
                .windows(10)
                .any(|w| w.eq_ignore_ascii_case(b"keep-alive"))
            {
                keep_alive = true;
            }
        } else if name.eq_ignore_ascii_case("retry-after") {
            retry_after = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(|s| Duration::from_secs(s.min(86_400)));
        }
    }
    if head_only || status == 204 || status == 304 {
        framing = Framing::Length(0);
    }
    Ok((framing, keep_alive, retry_after))
}

/// Appends what the stream has to `buf`; 0 at end of stream.
async fn read_into<S: tokio::io::AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut Vec<u8>,
) -> std::io::Result<usize> {
    if buf.capacity() - buf.len() < READ_CHUNK / 2 {
        buf.reserve(READ_CHUNK);
    }
    stream.read_buf(buf).await
}

async fn read_more<S: tokio::io::AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut Vec<u8>,
) -> Result<usize, Failure> {
    match read_into(stream, buf).await {
        Ok(0) => Err(Failure::read("connection closed mid-body")),
        Ok(n) => Ok(n),
        Err(e) => Err(Failure::read(&format!("reading: {e}"))),
    }
}

/// Longest chunk-size line (with extensions) or trailer line accepted.
const MAX_CHUNK_LINE: usize = 4096;

/// Reads until a CRLF is in `buf` (at most [`MAX_CHUNK_LINE`] bytes before it); its position.
async fn line_end<S: tokio::io::AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut Vec<u8>,
) -> Result<usize, Failure> {
    let mut searched = 0;
    loop {
        if let Some(i) = buf[searched..].windows(2).position(|w| w == b"\r\n") {
            return Ok(searched + i);
        }
        searched = buf.len().saturating_sub(1);
        if buf.len() > MAX_CHUNK_LINE {
            return Err(Failure::read("malformed response: a chunk line too long"));
        }
        read_more(stream, buf).await?;
    }
}

async fn read_chunked<S: tokio::io::AsyncRead + Unpin>(
    stream: &mut S,
    leftover: &mut Vec<u8>,
    mut buf: Vec<u8>,
) -> Result<Vec<u8>, Failure> {
    let mut body = Vec::new();
    loop {
        let end = line_end(stream, &mut buf).await?;
        let size_text = std::str::from_utf8(&buf[..end]).unwrap_or("");
        let size_hex = size_text.split(';').next().unwrap_or("").trim();
        let size = (!size_hex.is_empty() && size_hex.bytes().all(|b| b.is_ascii_hexdigit()))
            .then(|| usize::from_str_radix(size_hex, 16).ok())
            .flatten()
            .filter(|size| {
                body.len()
                    .checked_add(*size)
                    .is_some_and(|n| n <= MAX_BODY_BYTES)
            })
            .ok_or_else(|| {
                Failure::read(&format!(
                    "malformed or too large chunk size {:?}",
                    String::from_utf8_lossy(&buf[..end.min(40)])
                ))
            })?;
        buf.drain(..end + 2);
        if size == 0 {
            // Trailers end with an empty line.
            let mut trailer_bytes = 0usize;
            loop {
                let end = line_end(stream, &mut buf).await?;
                buf.drain(..end + 2);
                if end == 0 {
                    *leftover = buf;
                    return Ok(body);
                }
                trailer_bytes += end;
                if trailer_bytes > MAX_HEAD_BYTES {
                    return Err(Failure::read("response trailers too large"));
                }
            }
        }
        // `size` is at most MAX_BODY_BYTES, so this cannot overflow.
        let with_crlf = size + 2;
        while buf.len() < with_crlf {
            read_more(stream, &mut buf).await?;
        }
        if &buf[size..with_crlf] != b"\r\n" {
            return Err(Failure::read(
                "malformed response: a chunk not followed by CRLF",
            ));
        }
        body.extend_from_slice(&buf[..size]);
        buf.drain(..with_crlf);
    }
}

#[cfg(test)]
mod property;

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// A server that answers each connection's requests with `responses`, in turn.
    async fn serve(responses: Vec<&'static [u8]>) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.expect("accept");
            let mut buf = [0u8; 4096];
            for response in responses {
                let mut seen = Vec::new();
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    let n = stream.read(&mut buf).await.expect("read");
                    if n == 0 {
                        return;
                    }
                    seen.extend_from_slice(&buf[..n]);
                }
                // Dribble the answer in small pieces to exercise partial reads.
                for piece in response.chunks(7) {
                    stream.write_all(piece).await.expect("write");
                    tokio::task::yield_now().await;
                }
            }
        });
        addr
    }

    const GET: &[u8] = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";

    #[tokio::test]
    async fn reads_length_chunked_and_keeps_the_connection() {
        let addr = serve(vec![
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 503 Busy\r\nRetry-After: 2\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n4;x=y\r\ndefg\r\n0\r\n\r\n",
            b"HTTP/1.1 204 No Content\r\n\r\n",
        ])
        .await;
        let pool = Pool::new(addr, "x".into());
        let a = pool.exchange(GET, false).await.expect("first");
        assert_eq!((a.status, a.body.as_slice()), (200, &b"hello"[..]));
        let b = pool
            .exchange(GET, false)
            .await
            .expect("second, same connection");
        assert_eq!(
            (b.status, b.body.as_slice(), b.retry_after),
            (503, &b"abcdefg"[..], Some(Duration::from_secs(2)))
        );
        let c = pool.exchange(GET, false).await.expect("third");
        assert_eq!((c.status, c.body.len()), (204, 0));
    }

    #[tokio::test]
    async fn reads_until_close_and_reports_connect_errors() {
        let addr = serve(vec![b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nbye"]).await;
        let pool = Pool::new(addr, "x".into());
        let r = pool.exchange(GET, false).await.expect("answer");
        assert_eq!(r.body, b"bye");
        assert!(pool.take().is_none(), "a closed connection is not pooled");

        let closed = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let dead = closed.local_addr().expect("addr");
        drop(closed);
        let err = Pool::new(dead, "x".into())
            .exchange(GET, false)
            .await
            .expect_err("refused");
        assert!(matches!(err, HttpError::Connect(_)), "{err:?}");
    }

    /// A request the server read but did not answer (it closed the connection instead) may
    /// have been processed: it is an error of the attempt, never sent a second time.
    /// Last-byte synchronisation: until the gate opens the server holds every byte of the
    /// request but the final one, and so cannot act on it; once it opens, the request completes.
    #[tokio::test]
    async fn a_gated_exchange_holds_back_the_final_byte_until_the_gate_opens() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (got_head, head_seen) = tokio::sync::oneshot::channel::<Vec<u8>>();
        let (release, gate) = tokio::sync::oneshot::channel::<()>();
        let (got_last, last_seen) = tokio::sync::oneshot::channel::<Vec<u8>>();
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.expect("accept");
            let mut buf = vec![0u8; GET.len() - 1];
            stream
                .read_exact(&mut buf)
                .await
                .expect("all but the last byte");
            // Nothing more is there: the final byte waits for the gate.
            let mut one = [0u8; 1];
            assert!(matches!(
                stream.try_read(&mut one),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock
            ));
            let _ = got_head.send(buf);
            stream.read_exact(&mut one).await.expect("the final byte");
            let _ = got_last.send(one.to_vec());
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                .await;
        });
        let pool = Pool::new(addr, "x".into());
        let exchange = tokio::spawn(async move {
            pool.exchange_gated(GET, false, async {
                let _ = gate.await;
            })
            .await
        });
        let head = head_seen.await.expect("the server read the head");
        assert_eq!(head, &GET[..GET.len() - 1]);
        assert!(!exchange.is_finished(), "no answer without the final byte");
        release.send(()).expect("open the gate");
        assert_eq!(last_seen.await.expect("final byte"), &GET[GET.len() - 1..]);
        let response = exchange.await.expect("task").expect("answered");
        assert_eq!(
            (response.status, response.body.as_slice()),
            (200, &b"ok"[..])
        );
    }

    #[tokio::test]
    async fn a_request_that_reached_the_server_is_never_resent() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let received = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = std::sync::Arc::clone(&received);
        tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    return;
                };
                let counted = std::sync::Arc::clone(&counted);
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    loop {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(_) => {}
                        }
                        let n = counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        if n == 0 {
                            let _ = stream
                                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                                .await;
                        } else {
                            // Read it, then die without an answer.
                            return;
                        }
                    }
                });
            }
        });
        let pool = Pool::new(addr, "x".into());
        assert_eq!(pool.exchange(GET, false).await.expect("first").status, 200);
        let second = pool.exchange(GET, false).await;
        let error = format!("{:?}", second.expect_err("no answer"));
        assert!(error.contains("may have been processed"), "{error}");
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(
            received.load(std::sync::atomic::Ordering::SeqCst),
            2,
            "the unanswered request was not sent again"
        );
    }

    #[tokio::test]
    async fn a_stale_pooled_connection_is_replaced_once() {
        // First connection answers once then closes; the pool's next exchange finds it dead
        // without a byte of answer and reconnects.
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            for _ in 0..2 {
                let (mut stream, _) = listener.accept().await.expect("accept");
                let mut buf = [0u8; 1024];
                let _ = stream.read(&mut buf).await;
                stream
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                    .await
                    .expect("write");
            }
        });
        let pool = Pool::new(addr, "x".into());
        assert_eq!(pool.exchange(GET, false).await.expect("first").status, 200);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(
            pool.exchange(GET, false)
                .await
                .expect("second, on a new connection")
                .status,
            200
        );
    }
}
