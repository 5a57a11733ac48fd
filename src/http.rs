//! The daemon's HTTP endpoint: `GET /metrics` (Prometheus text format) and `GET /health`.
//!
//! Read-only by construction: no route performs an action. It is a deliberately small
//! HTTP/1.1 server (one request per connection, a few KiB of request head) so that it is
//! no door into the backup host. With a token configured, every request must carry
//! `Authorization: Bearer TOKEN`; others get 401 and are counted. One exception: `/health`
//! without any token answers its status code and `{"status": …}` alone (the details name
//! jobs and paths), so that a liveness probe (Kubernetes', a container's HEALTHCHECK)
//! needs no secret.
//!
//! Held up by no one: a client has [`HEAD_TIMEOUT`] to send its whole request head, and
//! connections still sending theirs are bounded in all and per peer address. When a
//! bound is reached the *oldest* such connection (of that peer, if the peer is at its
//! bound) is closed to make room, so a flood of slow clients (slowloris) cannot lock out
//! a scraper that sends its request at once. An `accept` error (EMFILE) backs off instead
//! of spinning, and refused requests are logged at most once a minute, with their count.
//!
//! hyper (already in the build, for the S3 client) was considered: its header-read
//! timeout covers one part of this, but the eviction of the oldest pending connection,
//! the per-peer bound and the strict, body-less request parsing stay ours either way.

use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

/// The largest request head read; anything longer is refused.
const MAX_HEAD: usize = 8 * 1024;
/// How long a client has to send its whole request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(2);
/// Connections still sending their head, in all and from one peer address.
const MAX_PENDING: usize = 128;
const MAX_PENDING_PER_PEER: usize = 64;
/// Requests answered at once (each may read the catalog); more wait their turn.
const MAX_SERVING: usize = 4;
/// How long answering may take once the head is in.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// What the endpoint serves; called off the async threads (it may read the catalog).
pub trait Handler: Send + Sync + 'static {
    fn metrics(&self) -> String;
    /// Whether the daemon is healthy, and a one-line JSON body saying so: with what it
    /// runs and found when `detail`, else its status alone.
    fn health(&self, detail: bool) -> (bool, String);
    /// The bearer token requests must carry, if any.
    fn token(&self) -> Option<String>;
    /// A request without the right token was refused.
    fn unauthorized(&self);
}

/// Connections still sending their request head, oldest first.
#[derive(Default)]
struct Pending {
    next: u64,
    list: VecDeque<(u64, IpAddr, tokio::task::AbortHandle)>,
}

impl Pending {
    /// Closes the oldest pending connections while over a bound.
    fn evict(&mut self, peer: IpAddr) {
        while self.list.iter().filter(|(_, p, _)| *p == peer).count() > MAX_PENDING_PER_PEER {
            if let Some(i) = self.list.iter().position(|(_, p, _)| *p == peer)
                && let Some((_, _, h)) = self.list.remove(i)
            {
                h.abort();
            }
        }
        while self.list.len() > MAX_PENDING {
            if let Some((_, _, h)) = self.list.pop_front() {
                h.abort();
            }
        }
    }

    fn remove(&mut self, id: u64) {
        if let Some(i) = self.list.iter().position(|(k, _, _)| *k == id) {
            self.list.remove(i);
        }
    }
}

pub async fn serve(listener: TcpListener, handler: Arc<dyn Handler>) {
    let pending = Arc::new(Mutex::new(Pending::default()));
    let serving = Arc::new(Semaphore::new(MAX_SERVING));
    let accept_errors = Throttled::new("the HTTP endpoint cannot accept connections");
    let mut backoff = Duration::ZERO;
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(ok) => {
                backoff = Duration::ZERO;
                ok
            }
            Err(e) => {
                // Out of descriptors (EMFILE) and the like: wait instead of spinning.
                accept_errors.note(&e.to_string());
                backoff = (backoff * 2).clamp(Duration::from_millis(10), Duration::from_secs(1));
                tokio::time::sleep(backoff).await;
                continue;
            }
        };
        let (handler, serving, registry) = (handler.clone(), serving.clone(), pending.clone());
        let mut p = pending.lock().unwrap_or_else(|e| e.into_inner());
        let id = p.next;
        p.next += 1;
        let task = tokio::spawn(async move {
            let _ = connection(stream, handler, serving, &registry, id).await;
        });
        p.list.push_back((id, peer.ip(), task.abort_handle()));
        p.evict(peer.ip());
    }
}

/// Something that may happen many times a second, logged at most once a minute with
/// how often it happened.
pub struct Throttled {
    what: &'static str,
    count: AtomicU64,
    last: Mutex<Option<Instant>>,
}

impl Throttled {
    pub fn new(what: &'static str) -> Throttled {
        Throttled { what, count: AtomicU64::new(0), last: Mutex::new(None) }
    }

    pub fn note(&self, detail: &str) {
        let n = self.count.fetch_add(1, Ordering::Relaxed) + 1;
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
            *last = Some(Instant::now());
            self.count.store(0, Ordering::Relaxed);
            tracing::warn!(
                count = n,
                "{} ({n} times in the last minute; at most one line a minute): {detail}",
                self.what
            );
        }
    }
}

async fn connection(
    mut stream: TcpStream,
    handler: Arc<dyn Handler>,
    serving: Arc<Semaphore>,
    pending: &Mutex<Pending>,
    id: u64,
) -> std::io::Result<()> {
    let head = tokio::time::timeout(HEAD_TIMEOUT, read_head(&mut stream)).await;
    pending.lock().unwrap_or_else(|e| e.into_inner()).remove(id);
    let head = match head {
        Ok(Ok(Some(head))) => head,
        Ok(Ok(None)) => return respond(&mut stream, 431, "text/plain", "request head too large\n", false).await,
        Ok(Err(e)) => return Err(e),
        Err(_) => return respond(&mut stream, 408, "text/plain", "request timeout\n", false).await,
    };
    let Ok(_permit) = serving.acquire().await else { return Ok(()) };
    match tokio::time::timeout(ANSWER_TIMEOUT, answer(&mut stream, &head, handler)).await {
        Ok(r) => r,
        Err(_) => Ok(()),
    }
}

async fn answer(stream: &mut TcpStream, head: &str, handler: Arc<dyn Handler>) -> std::io::Result<()> {
    let request = match Request::parse(head) {
        Some(r) => r,
        None => return respond(stream, 400, "text/plain", "bad request\n", false).await,
    };
    let authorized = handler
        .token()
        .is_none_or(|token| request.bearer.as_deref().is_some_and(|b| same(b.as_bytes(), token.as_bytes())));
    let probe = request.path == "/health" && request.bearer.is_none();
    if !authorized && !probe {
        handler.unauthorized();
        return respond(stream, 401, "text/plain", "a bearer token is required\n", false).await;
    }
    let head_only = request.method == "HEAD";
    if request.method != "GET" && !head_only {
        return respond(stream, 405, "text/plain", "only GET\n", false).await;
    }
    if request.has_body {
        return respond(stream, 413, "text/plain", "no request body is accepted\n", false).await;
    }
    let h = handler.clone();
    match request.path.as_str() {
        "/metrics" => {
            let body = tokio::task::spawn_blocking(move || h.metrics()).await.unwrap_or_default();
            respond(stream, 200, "text/plain; version=0.0.4; charset=utf-8", &body, head_only).await
        }
        "/health" => {
            let (ok, body) = tokio::task::spawn_blocking(move || h.health(authorized)).await.unwrap_or_default();
            respond(stream, if ok { 200 } else { 503 }, "application/json", &body, head_only).await
        }
        _ => respond(stream, 404, "text/plain", "not found; try /metrics or /health\n", head_only).await,
    }
}

/// Reads up to the blank line ending the head; `None` when it is too long, an error
/// when the client closes before it.
async fn read_head(stream: &mut TcpStream) -> std::io::Result<Option<String>> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            // The client left before its request was complete: nothing to answer.
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
        match head_len(&buf) {
            Some(len) if len <= MAX_HEAD => return Ok(Some(String::from_utf8_lossy(&buf[..len]).into_owned())),
            Some(_) => return Ok(None),
            None if buf.len() >= MAX_HEAD => return Ok(None),
            None => {}
        }
    }
}

/// The length of a request head (through its blank line) at the start of `buf`, once
/// it is all there. Its bound counts the whole head, wherever a read happened to end.
fn head_len(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|at| at + 4)
}

struct Request {
    method: String,
    path: String,
    bearer: Option<String>,
    has_body: bool,
}

impl Request {
    fn parse(head: &str) -> Option<Request> {
        let mut lines = head.split("\r\n");
        let mut first = lines.next()?.split(' ');
        let (method, target, version) = (first.next()?, first.next()?, first.next()?);
        if !version.starts_with("HTTP/1.") {
            return None;
        }
        let path = target.split('?').next()?.to_string();
        let mut bearer = None;
        let mut has_body = false;
        for line in lines.take_while(|l| !l.is_empty()) {
            let (name, value) = line.split_once(':')?;
            let value = value.trim();
            if name.eq_ignore_ascii_case("authorization") {
                bearer = value.strip_prefix("Bearer ").map(|t| t.trim().to_string());
            } else if name.eq_ignore_ascii_case("content-length") {
                has_body = value != "0";
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                has_body = true;
            }
        }
        Some(Request { method: method.to_string(), path, bearer, has_body })
    }
}

async fn respond(
    stream: &mut TcpStream,
    status: u16,
    content_type: &str,
    body: &str,
    head_only: bool,
) -> std::io::Result<()> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Content Too Large",
        431 => "Request Header Fields Too Large",
        _ => "Service Unavailable",
    };
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n",
        body.len()
    );
    if status == 401 {
        out.push_str("www-authenticate: Bearer realm=\"coffer\"\r\n");
    }
    out.push_str("\r\n");
    if !head_only {
        out.push_str(body);
    }
    stream.write_all(out.as_bytes()).await?;
    stream.shutdown().await
}

/// Compares in time that depends only on the lengths, not on where the bytes differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_head_is_bounded_whole() {
        let line = |n: usize| format!("X-Pad: {}\r\n", "a".repeat(n));
        let head = |pad: usize| format!("GET /metrics HTTP/1.1\r\n{}\r\n", line(pad)).into_bytes();
        let exact = MAX_HEAD - head(0).len();
        assert_eq!(head_len(&head(exact)), Some(MAX_HEAD));
        // One more byte in the last header line is over the bound, even when it arrives
        // in the same read as the blank line.
        assert_eq!(head_len(&head(exact + 1)), Some(MAX_HEAD + 1));
        assert_eq!(head_len(b"GET / HTTP/1.1\r\n"), None);
    }

    #[tokio::test]
    async fn a_head_one_line_over_the_bound_is_refused() {
        use tokio::io::AsyncWriteExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        for (extra, accepted) in [(0, true), (1, false), (700, false)] {
            let head = {
                let base = "GET /metrics HTTP/1.1\r\nX-Pad: \r\n\r\n".len();
                format!("GET /metrics HTTP/1.1\r\nX-Pad: {}\r\n\r\n", "a".repeat(MAX_HEAD - base + extra))
            };
            let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
            let (mut server, _) = listener.accept().await.unwrap();
            // Sent in pieces that end past the bound together with the blank line.
            let bytes = head.into_bytes();
            let (first, rest) = bytes.split_at(MAX_HEAD - 600);
            client.write_all(first).await.unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
            client.write_all(rest).await.unwrap();
            let got = read_head(&mut server).await.unwrap();
            assert_eq!(got.is_some(), accepted, "{extra} bytes over");
        }
    }

    #[test]
    fn request_heads_are_parsed_strictly() {
        let r = Request::parse("GET /metrics?x=1 HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer abc \r\n\r\n").unwrap();
        assert_eq!(
            (r.method.as_str(), r.path.as_str(), r.bearer.as_deref(), r.has_body),
            ("GET", "/metrics", Some("abc"), false)
        );
        assert!(Request::parse("POST /x HTTP/1.1\r\nContent-Length: 5\r\n\r\n").unwrap().has_body);
        assert!(Request::parse("GET /x\r\n\r\n").is_none());
        assert!(Request::parse("GET /x SPDY/3\r\n\r\n").is_none());
        assert!(Request::parse("GET /x HTTP/1.1\r\nno-colon\r\n\r\n").is_none());
    }

    #[test]
    fn tokens_compare_whole() {
        assert!(same(b"secret-token", b"secret-token"));
        assert!(!same(b"secret-token", b"secret-tokeN"));
        assert!(!same(b"secret", b"secret-token"));
    }
}
