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

    /// Sends `request` (a complete HTTP/1.1 request) and reads the response. A reused
    /// connection that the server closed while idle is replaced once, as long as not a byte of
    /// response came back (the request was not processed).
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
        if let Some(conn) = self.take() {
            match self
                .round_trip(conn, request, head_only, keep_headers)
                .await
            {
                Ok(response) => return Ok(response),
                Err(Failure {
                    untouched: true, ..
                }) => {}
                Err(Failure { error, .. }) => return Err(error),
            }
        }
        let conn = self.connect().await?;
        self.round_trip(conn, request, head_only, keep_headers)
            .await
            .map_err(|f| f.error)
    }

    async fn round_trip(
        &self,
        mut conn: Conn,
        request: &[u8],
        head_only: bool,
        keep_headers: bool,
    ) -> Result<Response, Failure> {
        if let Err(e) = conn.stream.write_all(request).await {
            return Err(Failure::untouched(format!("sending: {e}")));
        }
        // Reads go straight into `buf`'s spare capacity: no stack buffer, which would make every
        // attempt's future (and so every spawned operation) several KiB larger.
        let mut buf = std::mem::take(&mut conn.leftover);
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
                        let info = head_info(&parsed, head_only);
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
                        return Err(Failure::touched("response head too large".to_string()));
                    }
                    Ok(httparse::Status::Partial) => {}
                    Err(e) => return Err(Failure::touched(format!("malformed response: {e}"))),
                }
            }
            match read_into(&mut conn.stream, &mut buf).await {
                Ok(0) if buf.is_empty() => {
                    return Err(Failure::untouched(
                        "connection closed before any response".to_string(),
                    ));
                }
                Ok(0) => {
                    return Err(Failure::touched(
                        "connection closed mid-response".to_string(),
                    ));
                }
                Ok(_) => {}
                Err(e) if buf.is_empty() => {
                    return Err(Failure::untouched(format!("reading: {e}")));
                }
                Err(e) => return Err(Failure::touched(format!("reading: {e}"))),
            }
        };
        buf.drain(..head_len);
        // Body.
        let body = match framing {
            Framing::Length(len) => {
                while buf.len() < len {
                    read_more(&mut conn.stream, &mut buf).await?;
                }
                // The buffer stays with the connection, capacity and all: no allocation per
                // attempt but the body's own.
                let body = buf[..len].to_vec();
                buf.drain(..len);
                conn.leftover = buf;
                body
            }
            Framing::Chunked => read_chunked(&mut conn, buf).await?,
            Framing::UntilClose => {
                loop {
                    match read_into(&mut conn.stream, &mut buf).await {
                        Ok(0) => break,
                        Ok(_) => {}
                        Err(e) => return Err(Failure::touched(format!("reading: {e}"))),
                    }
                    if buf.len() > MAX_BODY_BYTES {
                        return Err(Failure::touched("response body too large".to_string()));
                    }
                }
                buf
            }
        };
        if keep_alive && !matches!(framing, Framing::UntilClose) {
            self.give_back(conn);
        }
        Ok(Response {
            status,
            retry_after,
            body,
            headers: kept_headers,
        })
    }
}

/// A failed round trip; `untouched` when no response byte arrived (safe to resend).
struct Failure {
    error: HttpError,
    untouched: bool,
}

impl Failure {
    fn untouched(e: String) -> Failure {
        Failure {
            error: HttpError::Transport(e),
            untouched: true,
        }
    }

    fn touched(e: String) -> Failure {
        Failure {
            error: HttpError::Transport(e),
            untouched: false,
        }
    }
}

enum Framing {
    Length(usize),
    Chunked,
    UntilClose,
}

fn head_info(r: &httparse::Response<'_, '_>, head_only: bool) -> (Framing, bool, Option<Duration>) {
    let status = r.code.unwrap_or(0);
    let mut framing = Framing::UntilClose;
    let mut keep_alive = r.version == Some(1);
    let mut retry_after = None;
    for h in r.headers.iter() {
        let name = h.name;
        if name.eq_ignore_ascii_case("content-length") {
            if let Some(len) = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse().ok())
                && !matches!(framing, Framing::Chunked)
            {
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
                .map(Duration::from_secs);
        }
    }
    if head_only || status == 204 || status == 304 {
        framing = Framing::Length(0);
    }
    (framing, keep_alive, retry_after)
}

/// Appends what the socket has to `buf`; 0 at end of stream.
async fn read_into(stream: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<usize> {
    if buf.capacity() - buf.len() < READ_CHUNK / 2 {
        buf.reserve(READ_CHUNK);
    }
    stream.read_buf(buf).await
}

async fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Result<usize, Failure> {
    match read_into(stream, buf).await {
        Ok(0) => Err(Failure::touched("connection closed mid-body".to_string())),
        Ok(n) => Ok(n),
        Err(e) => Err(Failure::touched(format!("reading: {e}"))),
    }
}

async fn read_chunked(conn: &mut Conn, mut buf: Vec<u8>) -> Result<Vec<u8>, Failure> {
    let mut body = Vec::new();
    loop {
        // Chunk size line.
        let line_end = loop {
            if let Some(i) = buf.windows(2).position(|w| w == b"\r\n") {
                break i;
            }
            read_more(&mut conn.stream, &mut buf).await?;
        };
        let size_text = std::str::from_utf8(&buf[..line_end]).unwrap_or("");
        let size_hex = size_text.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_hex, 16)
            .map_err(|_| Failure::touched(format!("bad chunk size {size_text:?}")))?;
        buf.drain(..line_end + 2);
        if size == 0 {
            // Trailers end with an empty line.
            loop {
                if let Some(i) = buf.windows(2).position(|w| w == b"\r\n") {
                    let empty = i == 0;
                    buf.drain(..i + 2);
                    if empty {
                        conn.leftover = buf;
                        return Ok(body);
                    }
                    continue;
                }
                read_more(&mut conn.stream, &mut buf).await?;
            }
        }
        while buf.len() < size + 2 {
            read_more(&mut conn.stream, &mut buf).await?;
        }
        if body.len() + size > MAX_BODY_BYTES {
            return Err(Failure::touched("response body too large".to_string()));
        }
        body.extend_from_slice(&buf[..size]);
        buf.drain(..size + 2);
    }
}

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
