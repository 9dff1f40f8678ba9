//! The `/metrics` scrape endpoint: a deliberately tiny HTTP/1.0 responder
//! (one GET endpoint needs no web framework), hardened as ntpd-rs's exporter
//! is: the request head is read up to a size cap, only `GET /metrics` is
//! served, connections are capped and timed out, and accept errors (out of
//! descriptors, out of memory) back off instead of spinning.

use super::{render, SharedRegistry};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

/// Bounds of the endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ServeLimits {
    /// Largest request head (request line + headers) read; larger gets 431.
    pub max_request_bytes: usize,
    /// Connections served at once; more get 503 and are closed at once.
    pub max_connections: usize,
    /// Whole-connection deadline (read the request, write the answer).
    pub timeout: Duration,
    /// First and longest pause after a failed accept.
    pub accept_backoff: (Duration, Duration),
}

impl Default for ServeLimits {
    fn default() -> Self {
        ServeLimits {
            max_request_bytes: 4096,
            max_connections: 16,
            timeout: Duration::from_secs(5),
            accept_backoff: (Duration::from_millis(50), Duration::from_secs(1)),
        }
    }
}

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Refreshes gauges right before a scrape renders them (e.g. the per-kind
/// queue counts), so a scrape sees the queue as it is, not as it was at the
/// last tick. Set once the data source is reachable; bounded by
/// [`HOOK_LIMIT`] (past it the last values are served).
pub type ScrapeHook =
    Arc<dyn Fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> + Send + Sync>;

/// Slot for a [`ScrapeHook`] that is set after the endpoint is up.
pub type HookSlot = Arc<std::sync::OnceLock<ScrapeHook>>;

/// Longest a scrape waits for its [`ScrapeHook`].
const HOOK_LIMIT: Duration = Duration::from_secs(2);

/// Serve `GET /metrics` on `addr` (loopback by default) with the default
/// limits; returns the bound address.
pub(crate) async fn serve(addr: SocketAddr, reg: SharedRegistry) -> std::io::Result<SocketAddr> {
    serve_with(addr, reg, ServeLimits::default(), HookSlot::default()).await
}

/// [`serve`], running the hook in `hook` (once set) before each scrape.
pub async fn serve_hooked(
    addr: SocketAddr,
    reg: SharedRegistry,
    hook: HookSlot,
) -> std::io::Result<SocketAddr> {
    serve_with(addr, reg, ServeLimits::default(), hook).await
}

/// [`serve`] with explicit limits and a hook slot.
pub(crate) async fn serve_with(
    addr: SocketAddr,
    reg: SharedRegistry,
    limits: ServeLimits,
    hook: HookSlot,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    tokio::spawn(accept_loop(listener, reg, limits, hook));
    Ok(local)
}

/// Errors that mean "the process or the host is out of something": retrying
/// at once would fail the same way (and the listener stays readable, so an
/// immediate retry is a busy loop).
fn is_resource_error(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOMEM | libc::ENOBUFS)
    )
}

async fn accept_loop(
    listener: TcpListener,
    reg: SharedRegistry,
    limits: ServeLimits,
    hook: HookSlot,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    // One refresh at a time: concurrent scrapes queue behind it instead of
    // each scanning Redis.
    let refreshing = Arc::new(tokio::sync::Mutex::new(()));
    let (first, max) = limits.accept_backoff;
    let mut backoff = first;
    loop {
        let sock = match listener.accept().await {
            Ok((sock, _)) => {
                backoff = first;
                sock
            }
            Err(e) => {
                if is_resource_error(&e) {
                    tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64,
                        "metrics endpoint cannot accept connections (out of file descriptors or memory?)");
                } else {
                    tracing::debug!(error = %e, "metrics endpoint: accept failed");
                }
                // Any accept error pauses: a persistent one must not spin.
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(max);
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            // Over the cap: a short refusal, never a wait for the client.
            let _ = sock.try_write(
                b"HTTP/1.0 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            );
            continue;
        };
        let reg = reg.clone();
        let hook = hook.get().cloned().map(|h| (h, refreshing.clone()));
        tokio::spawn(async move {
            let _ = tokio::time::timeout(limits.timeout, handle(sock, &reg, &limits, hook)).await;
            drop(permit);
        });
    }
}

/// The answer to a request head: status line, content type, body.
fn respond(head: &[u8], reg: &SharedRegistry) -> (&'static str, &'static str, String) {
    let line = head
        .split(|&b| b == b'\r' || b == b'\n')
        .next()
        .unwrap_or(b"");
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return ("400 Bad Request", "text/plain", "bad request line\n".into());
    };
    if !version.starts_with("HTTP/1.") {
        return ("400 Bad Request", "text/plain", "HTTP/1.x only\n".into());
    }
    if method != "GET" {
        return (
            "405 Method Not Allowed",
            "text/plain",
            "only GET is allowed\n".into(),
        );
    }
    let path = target.split('?').next().unwrap_or("");
    if path != "/metrics" {
        return ("404 Not Found", "text/plain", "try /metrics\n".into());
    }
    let body = render(&reg.lock().expect("metrics lock"));
    ("200 OK", OPENMETRICS, body)
}

/// Read the request head (up to the blank line, within the cap) and answer.
async fn handle(
    mut sock: TcpStream,
    reg: &SharedRegistry,
    limits: &ServeLimits,
    hook: Option<(ScrapeHook, Arc<tokio::sync::Mutex<()>>)>,
) {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    let (status, ctype, body) = loop {
        if buf.windows(4).any(|w| w == b"\r\n\r\n") {
            if let Some((hook, lock)) = &hook {
                if buf.starts_with(b"GET /metrics ") || buf.starts_with(b"GET /metrics?") {
                    let _one = lock.lock().await;
                    let _ = tokio::time::timeout(HOOK_LIMIT, hook()).await;
                }
            }
            break respond(&buf, reg);
        }
        if buf.len() > limits.max_request_bytes {
            break (
                "431 Request Header Fields Too Large",
                "text/plain",
                "request too large\n".to_string(),
            );
        }
        match sock.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let allow = if status.starts_with("405") {
        "Allow: GET\r\n"
    } else {
        ""
    };
    let resp = format!(
        "HTTP/1.0 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n{allow}Connection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = sock.write_all(resp.as_bytes()).await;
    let _ = sock.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    fn limits() -> ServeLimits {
        ServeLimits {
            max_request_bytes: 1024,
            max_connections: 2,
            timeout: Duration::from_millis(300),
            ..ServeLimits::default()
        }
    }

    async fn server(l: ServeLimits) -> SocketAddr {
        let reg: SharedRegistry = Arc::new(std::sync::Mutex::new(crate::metrics::new_registry()));
        serve_with("127.0.0.1:0".parse().unwrap(), reg, l, HookSlot::default())
            .await
            .unwrap()
    }

    /// Send `req` from a blocking client thread; the whole answer.
    async fn ask(addr: SocketAddr, req: Vec<u8>) -> String {
        tokio::task::spawn_blocking(move || {
            let mut c = std::net::TcpStream::connect(addr).unwrap();
            c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
            // The server may answer (and close) before it read everything.
            let _ = c.write_all(&req);
            let mut out = Vec::new();
            let _ = c.read_to_end(&mut out);
            String::from_utf8_lossy(&out).into_owned()
        })
        .await
        .unwrap()
    }

    #[tokio::test]
    async fn serves_metrics_to_get() {
        let a = server(limits()).await;
        let r = ask(a, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()).await;
        assert!(r.starts_with("HTTP/1.0 200 OK\r\n"), "{r}");
        assert!(r.contains("peagen_build_info"), "{r}");
        // A query string is the same resource.
        let r = ask(a, b"GET /metrics?x=1 HTTP/1.0\r\n\r\n".to_vec()).await;
        assert!(r.starts_with("HTTP/1.0 200 OK\r\n"), "{r}");
    }

    #[tokio::test]
    async fn deny_non_get_request() {
        let a = server(limits()).await;
        for m in ["POST", "PUT", "DELETE", "HEAD"] {
            let r = ask(a, format!("{m} /metrics HTTP/1.1\r\n\r\n").into_bytes()).await;
            assert!(
                r.starts_with("HTTP/1.0 405 Method Not Allowed\r\n"),
                "{m}: {r}"
            );
            assert!(r.contains("\r\nAllow: GET\r\n"), "{r}");
        }
    }

    #[tokio::test]
    async fn other_paths_and_garbage() {
        let a = server(limits()).await;
        let r = ask(a, b"GET /metricsfoo HTTP/1.1\r\n\r\n".to_vec()).await;
        assert!(r.starts_with("HTTP/1.0 404 Not Found\r\n"), "{r}");
        let r = ask(a, b"GET / HTTP/1.1\r\n\r\n".to_vec()).await;
        assert!(r.starts_with("HTTP/1.0 404 Not Found\r\n"), "{r}");
        let r = ask(a, b"hello\r\n\r\n".to_vec()).await;
        assert!(r.starts_with("HTTP/1.0 400 Bad Request\r\n"), "{r}");
    }

    #[tokio::test]
    async fn does_not_accept_large_requests() {
        let a = server(limits()).await;
        // A head that never ends within the cap: answered, not buffered on.
        let mut req = b"GET /metrics HTTP/1.1\r\n".to_vec();
        while req.len() < 64 * 1024 {
            req.extend_from_slice(
                b"X-Filler: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n",
            );
        }
        let r = ask(a, req).await;
        assert!(r.starts_with("HTTP/1.0 431 "), "{r}");
        assert!(!r.contains("peagen_build_info"), "{r}");
    }

    #[tokio::test]
    async fn slow_client_is_timed_out() {
        let a = server(limits()).await;
        // Half a request head and then nothing: the server closes (EOF) after
        // its deadline instead of holding the connection (the client's own
        // read timeout is far longer, so EOF can only come from the server).
        let r = ask(a, b"GET /metrics HTTP/1.1\r\nHost:".to_vec()).await;
        assert_eq!(r, "", "closed without an answer");
    }

    #[tokio::test]
    async fn connections_are_capped() {
        let mut l = limits();
        l.timeout = Duration::from_secs(60);
        let a = server(l).await;
        // Two silent clients take both slots ...
        let held: Vec<std::net::TcpStream> = (0..2)
            .map(|_| std::net::TcpStream::connect(a).unwrap())
            .collect();
        // ... so a third is refused at once (each attempt's answer is read
        // to EOF; a held slot never answers, so a 503 proves the cap).
        let mut refused = false;
        for _ in 0..200 {
            let r = ask(a, b"GET /metrics HTTP/1.0\r\n\r\n".to_vec()).await;
            if r.starts_with("HTTP/1.0 503 ") {
                refused = true;
                break;
            }
            // The two held connections may not be accepted yet: try again.
            assert!(r.starts_with("HTTP/1.0 200 "), "{r}");
            tokio::task::yield_now().await;
        }
        assert!(refused, "a third connection got a 503");
        drop(held);
        // Slots free again once the holders leave.
        let mut served = false;
        for _ in 0..200 {
            let r = ask(a, b"GET /metrics HTTP/1.0\r\n\r\n".to_vec()).await;
            if r.starts_with("HTTP/1.0 200 ") {
                served = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(served, "served again after the holders closed");
    }
}
