//! One kept HTTP/1.1 connection to the agent for the health watch's blocking reads, whose
//! answers go from the socket straight into a buffer the caller keeps. At thousands of
//! instances an answer is megabytes: a general client's own read buffers would cost one more
//! copy of it, and fresh memory, at every change.
//!
//! Only what Consul's answers use: `Content-Length` or chunked bodies (Consul chunks every
//! body over about 2 KB), keep-alive, and one resend of the GET when a kept connection turns
//! out to have been closed before it answered anything.

use std::time::Duration;

use bytes::BufMut as _;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
};

/// The status line and headers of an answer; its body is in the caller's buffer.
#[derive(Debug)]
pub(super) struct Head {
    pub status: StatusCode,
    pub headers: HeaderMap,
}

#[derive(Debug, thiserror::Error)]
pub(super) enum Http1Error {
    /// Nothing usable came back: connect, write or read failed, or the deadline passed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("no answer within {0:?}")]
    TimedOut(Duration),
    /// The agent answered something that is not HTTP/1.1 as this reader knows it.
    #[error("malformed answer: {0}")]
    Malformed(&'static str),
}

/// A status line and headers larger than this are not Consul's.
const HEAD_MAX: usize = 64 * 1024;
/// How much of the socket is read at once into the side buffer (the head, chunk sizes);
/// body bytes read with them are moved to the caller's buffer, the rest of the body is read
/// there directly.
const SIDE_READ: usize = 8 * 1024;

/// The connection and where to open it again.
#[derive(Debug)]
pub(super) struct Conn {
    host: String,
    port: u16,
    stream: Option<TcpStream>,
    /// Bytes read from the socket and not yet taken: `side[taken..]`.
    side: Vec<u8>,
    taken: usize,
}

impl Conn {
    pub fn new(host: String, port: u16) -> Self {
        Self {
            host,
            port,
            stream: None,
            side: Vec::with_capacity(SIDE_READ),
            taken: 0,
        }
    }

    /// Sends `request` (a whole GET, head only) and appends the answer's body to `body`,
    /// all within `deadline`. Any failure closes the connection; the next call opens another.
    pub async fn get(
        &mut self,
        request: &[u8],
        body: &mut Vec<u8>,
        connect_timeout: Duration,
        deadline: Duration,
    ) -> Result<Head, Http1Error> {
        let start = body.len();
        let outcome = tokio::time::timeout(deadline, self.exchange(request, body, connect_timeout))
            .await
            .unwrap_or(Err(Http1Error::TimedOut(deadline)));
        if outcome.is_err() {
            self.close();
            body.truncate(start);
        }
        outcome
    }

    fn close(&mut self) {
        self.stream = None;
        self.side.clear();
        self.taken = 0;
    }

    async fn exchange(
        &mut self,
        request: &[u8],
        body: &mut Vec<u8>,
        connect_timeout: Duration,
    ) -> Result<Head, Http1Error> {
        // A kept connection the agent closed while idle fails before any byte of the answer:
        // the GET is sent again once, on a new connection.
        let reused = self.stream.is_some();
        let (head, framing, keep) = match self.send_and_read_head(request, connect_timeout).await {
            Err(Http1Error::Io(e)) if reused && self.taken == 0 && self.side.is_empty() => {
                tracing::debug!(error = %e, "kept Consul connection was closed; reconnecting");
                self.close();
                self.send_and_read_head(request, connect_timeout).await?
            }
            other => other?,
        };
        match framing {
            Framing::Length(n) => self.body_exact(body, n).await?,
            Framing::Chunked => self.body_chunked(body).await?,
            Framing::UntilClose => self.body_until_close(body).await?,
        }
        if !keep || !matches!(framing, Framing::Length(_) | Framing::Chunked) {
            self.close();
        } else if self.taken < self.side.len() {
            // Bytes after the answer: not something a server sends unasked.
            return Err(Http1Error::Malformed("bytes after the end of the answer"));
        } else {
            self.side.clear();
            self.taken = 0;
        }
        Ok(head)
    }

    async fn send_and_read_head(
        &mut self,
        request: &[u8],
        connect_timeout: Duration,
    ) -> Result<(Head, Framing, bool), Http1Error> {
        let stream = match &mut self.stream {
            Some(s) => s,
            None => {
                let s = tokio::time::timeout(
                    connect_timeout,
                    TcpStream::connect((self.host.as_str(), self.port)),
                )
                .await
                .map_err(|_| Http1Error::TimedOut(connect_timeout))??;
                s.set_nodelay(true)?;
                self.stream.insert(s)
            }
        };
        stream.write_all(request).await?;
        self.side.clear();
        self.taken = 0;
        loop {
            if let Some(head) = self.head()? {
                return Ok(head);
            }
            if self.side.len() >= HEAD_MAX {
                return Err(Http1Error::Malformed("a head larger than 64 KB"));
            }
            self.fill_side().await?;
        }
    }

    /// The head, once `side` holds all of it: taken from `side`, with how the body is framed
    /// and whether the connection may be kept. `None`: more bytes are needed.
    fn head(&mut self) -> Result<Option<(Head, Framing, bool)>, Http1Error> {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut response = httparse::Response::new(&mut headers);
        let len = match response.parse(&self.side) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(httparse::Error::TooManyHeaders) => {
                return Err(Http1Error::Malformed("more than 32 headers"));
            }
            Err(_) => {
                return Err(Http1Error::Malformed(
                    "not an HTTP/1.1 status line or header",
                ));
            }
        };
        let status = response
            .code
            .and_then(|c| StatusCode::from_u16(c).ok())
            .ok_or(Http1Error::Malformed("a status code out of range"))?;
        let mut map = HeaderMap::with_capacity(response.headers.len());
        for h in response.headers.iter() {
            let name = HeaderName::from_bytes(h.name.as_bytes())
                .map_err(|_| Http1Error::Malformed("an invalid header name"))?;
            let value = HeaderValue::from_bytes(h.value)
                .map_err(|_| Http1Error::Malformed("an invalid header value"))?;
            map.append(name, value);
        }
        let has = |name: http::header::HeaderName, token: &str| {
            map.get_all(name).iter().any(|v| {
                v.to_str()
                    .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
            })
        };
        let keep = response.version == Some(1) && !has(http::header::CONNECTION, "close");
        let framing = if status.is_informational()
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED
        {
            Framing::Length(0)
        } else if has(http::header::TRANSFER_ENCODING, "chunked") {
            Framing::Chunked
        } else if let Some(v) = map.get(http::header::CONTENT_LENGTH) {
            let n = v
                .to_str()
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok())
                .ok_or(Http1Error::Malformed("an invalid Content-Length"))?;
            Framing::Length(n)
        } else {
            Framing::UntilClose
        };
        self.taken = len;
        Ok(Some((
            Head {
                status,
                headers: map,
            },
            framing,
            keep,
        )))
    }

    /// Appends exactly `n` body bytes: those already in `side` first, then straight from
    /// the socket into `body`.
    async fn body_exact(&mut self, body: &mut Vec<u8>, n: usize) -> Result<(), Http1Error> {
        let have = (self.side.len() - self.taken).min(n);
        body.extend_from_slice(&self.side[self.taken..self.taken + have]);
        self.taken += have;
        let mut left = n - have;
        body.reserve(left);
        let stream = self
            .stream
            .as_mut()
            .ok_or(Http1Error::Malformed("no connection"))?;
        while left > 0 {
            let read = stream.read_buf(&mut (&mut *body).limit(left)).await?;
            if read == 0 {
                return Err(Http1Error::Io(std::io::ErrorKind::UnexpectedEof.into()));
            }
            left -= read;
        }
        Ok(())
    }

    async fn body_chunked(&mut self, body: &mut Vec<u8>) -> Result<(), Http1Error> {
        loop {
            let line = self.line().await?;
            let size = line.split(|&b| b == b';').next().unwrap_or_default();
            let size = std::str::from_utf8(size)
                .ok()
                .and_then(|s| usize::from_str_radix(s.trim(), 16).ok())
                .ok_or(Http1Error::Malformed("an invalid chunk size"))?;
            if size == 0 {
                // Trailers, if any, up to the empty line.
                let mut trailers = 0;
                while !self.line().await?.is_empty() {
                    trailers += 1;
                    if trailers > 32 {
                        return Err(Http1Error::Malformed("too many trailers"));
                    }
                }
                return Ok(());
            }
            self.body_exact(body, size).await?;
            if !self.line().await?.is_empty() {
                return Err(Http1Error::Malformed("a chunk longer than its size"));
            }
        }
    }

    async fn body_until_close(&mut self, body: &mut Vec<u8>) -> Result<(), Http1Error> {
        body.extend_from_slice(&self.side[self.taken..]);
        self.taken = self.side.len();
        let stream = self
            .stream
            .as_mut()
            .ok_or(Http1Error::Malformed("no connection"))?;
        loop {
            body.reserve(SIDE_READ);
            if stream.read_buf(body).await? == 0 {
                return Ok(());
            }
        }
    }

    /// The next CRLF-ended line (without its CRLF), read through `side`.
    async fn line(&mut self) -> Result<Vec<u8>, Http1Error> {
        loop {
            let pending = &self.side[self.taken..];
            if let Some(i) = pending.windows(2).position(|w| w == b"\r\n") {
                let line = pending[..i].to_vec();
                self.taken += i + 2;
                return Ok(line);
            }
            if pending.len() > 4096 {
                return Err(Http1Error::Malformed("a line longer than 4 KB"));
            }
            self.fill_side().await?;
        }
    }

    /// Reads what the socket has (up to [`SIDE_READ`]) onto the end of `side`.
    async fn fill_side(&mut self) -> Result<(), Http1Error> {
        let stream = self
            .stream
            .as_mut()
            .ok_or(Http1Error::Malformed("no connection"))?;
        // What was taken goes; what was not (a part of a line) moves to the front.
        self.side.drain(..self.taken);
        self.taken = 0;
        self.side.reserve(SIDE_READ);
        if stream
            .read_buf(&mut (&mut self.side).limit(SIDE_READ))
            .await?
            == 0
        {
            return Err(Http1Error::Io(std::io::ErrorKind::UnexpectedEof.into()));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy)]
enum Framing {
    Length(usize),
    Chunked,
    /// Neither: the body ends when the agent closes the connection.
    UntilClose,
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    const GET: &[u8] = b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n";
    const SECOND: Duration = Duration::from_secs(5);

    /// A server that answers each connection's requests with `answers`, written in pieces of
    /// `piece` bytes, one answer per request head it reads; then it closes the connection.
    async fn server(
        connections: Vec<Vec<&'static [u8]>>,
        piece: usize,
    ) -> (u16, tokio::task::JoinHandle<Vec<Vec<u8>>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("a port");
        let port = listener.local_addr().expect("an address").port();
        let task = tokio::spawn(async move {
            let mut seen = Vec::new();
            for answers in connections {
                let Ok((mut s, _)) = listener.accept().await else {
                    break;
                };
                for answer in answers {
                    let mut head = Vec::new();
                    while !head.ends_with(b"\r\n\r\n") {
                        let mut b = [0u8; 1];
                        if s.read_exact(&mut b).await.is_err() {
                            return seen;
                        }
                        head.push(b[0]);
                    }
                    seen.push(head);
                    for p in answer.chunks(piece) {
                        if s.write_all(p).await.is_err() {
                            return seen;
                        }
                        s.flush().await.ok();
                        tokio::task::yield_now().await;
                    }
                }
            }
            seen
        });
        (port, task)
    }

    async fn get(conn: &mut Conn, body: &mut Vec<u8>) -> Result<Head, Http1Error> {
        conn.get(GET, body, SECOND, SECOND).await
    }

    #[tokio::test]
    async fn a_length_and_a_chunked_body_land_after_what_the_buffer_holds() {
        let (port, server) = server(
            vec![vec![
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Consul-Index: 7\r\n\r\nhello",
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
                  3;ext=1\r\nabc\r\n10\r\n0123456789abcdef\r\n0\r\nTrailer: x\r\n\r\n",
            ]],
            3,
        )
        .await;
        let mut conn = Conn::new("127.0.0.1".into(), port);
        let mut body = b"kept:".to_vec();
        let head = get(&mut conn, &mut body).await.expect("an answer");
        assert_eq!(head.status, StatusCode::OK);
        assert_eq!(
            head.headers.get("x-consul-index").map(|v| v.as_bytes()),
            Some(&b"7"[..])
        );
        assert_eq!(body, b"kept:hello");
        body.clear();
        // The same connection: the server accepts only one.
        get(&mut conn, &mut body).await.expect("a second answer");
        assert_eq!(body, b"abc0123456789abcdef");
        assert_eq!(server.await.expect("the server").len(), 2);
    }

    #[tokio::test]
    async fn a_kept_connection_the_server_closed_is_opened_again_once() {
        let ok: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
        let (port, server) = server(vec![vec![ok], vec![ok]], 64).await;
        let mut conn = Conn::new("127.0.0.1".into(), port);
        let mut body = Vec::new();
        get(&mut conn, &mut body).await.expect("an answer");
        // The server has closed the first connection after its one answer.
        body.clear();
        get(&mut conn, &mut body)
            .await
            .expect("an answer on a new connection");
        assert_eq!(body, b"ok");
        assert_eq!(server.await.expect("the server").len(), 2);
    }

    #[tokio::test]
    async fn a_body_without_length_ends_with_the_connection() {
        let (port, _server) = server(
            vec![vec![
                b"HTTP/1.1 404 Not Found\r\nConnection: close\r\n\r\nno such thing",
            ]],
            4,
        )
        .await;
        let mut conn = Conn::new("127.0.0.1".into(), port);
        let mut body = Vec::new();
        let head = get(&mut conn, &mut body).await.expect("an answer");
        assert_eq!(head.status, StatusCode::NOT_FOUND);
        assert_eq!(body, b"no such thing");
        assert!(conn.stream.is_none(), "not kept");
    }

    #[tokio::test]
    async fn broken_answers_are_errors_and_leave_the_buffer_as_it_was() {
        for broken in [
            &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabc\r\n0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
            b"SSH-2.0-OpenSSH\r\n\r\n",
        ] {
            let (port, _server) = server(vec![vec![broken]], 5).await;
            let mut conn = Conn::new("127.0.0.1".into(), port);
            let mut body = b"kept".to_vec();
            let e = get(&mut conn, &mut body)
                .await
                .expect_err("a broken answer");
            assert!(matches!(e, Http1Error::Malformed(_)), "{e}");
            assert_eq!(body, b"kept");
            assert!(conn.stream.is_none());
        }
        // Cut short: the length promises more than comes before the close.
        let (port, _server) = server(
            vec![vec![b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nabc"]],
            5,
        )
        .await;
        let mut conn = Conn::new("127.0.0.1".into(), port);
        let mut body = Vec::new();
        let e = get(&mut conn, &mut body).await.expect_err("cut short");
        assert!(matches!(e, Http1Error::Io(_)), "{e}");
        assert!(body.is_empty());
    }

    #[tokio::test]
    async fn no_answer_within_the_deadline_is_an_error() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("a port");
        let port = listener.local_addr().expect("an address").port();
        let mut conn = Conn::new("127.0.0.1".into(), port);
        let mut body = Vec::new();
        // Accepted by the kernel's backlog, never answered.
        let e = conn
            .get(GET, &mut body, SECOND, Duration::from_millis(50))
            .await
            .expect_err("no answer");
        assert!(matches!(e, Http1Error::TimedOut(_)), "{e}");
        drop(listener);
    }
}
