//! A connection's activity, for closing idle ones: the last time bytes moved either way, and
//! how many requests are being handled. A connection with no request being handled and no
//! bytes moved for the idle timeout is closed; one that is answering (a long invocation, a
//! log stream) is not.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// Connections open per client address, each at most `max`.
pub(crate) struct PerAddress {
    max: usize,
    open: std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>,
}

/// One connection from an address, counted until it is dropped.
pub(crate) struct AddressSlot {
    from: Arc<PerAddress>,
    address: std::net::IpAddr,
}

impl PerAddress {
    pub(crate) fn new(max: usize) -> PerAddress {
        PerAddress {
            max: max.max(1),
            open: std::sync::Mutex::default(),
        }
    }

    /// A slot for one more connection from `address`, unless it has `max` open.
    pub(crate) fn take(self: &Arc<Self>, address: std::net::IpAddr) -> Option<AddressSlot> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let count = open.entry(address).or_insert(0);
        if *count >= self.max {
            return None;
        }
        *count += 1;
        Some(AddressSlot {
            from: self.clone(),
            address,
        })
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut open = self.from.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = open.get_mut(&self.address) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.remove(&self.address);
            }
        }
    }
}

/// What a connection has been doing.
pub(crate) struct Activity {
    /// When it started, for the offsets below.
    since: Instant,
    /// The last time bytes moved, in ms after `since`.
    last_ms: AtomicU64,
    /// Requests being handled now.
    handling: AtomicUsize,
}

impl Default for Activity {
    fn default() -> Activity {
        Activity {
            since: Instant::now(),
            last_ms: AtomicU64::new(0),
            handling: AtomicUsize::new(0),
        }
    }
}

/// A request being handled, until it is dropped.
pub(crate) struct Handling(Arc<Activity>);

impl Drop for Handling {
    fn drop(&mut self) {
        self.0.handling.fetch_sub(1, Ordering::AcqRel);
        self.0.moved();
    }
}

impl Activity {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.since.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn moved(&self) {
        self.last_ms.store(self.now_ms(), Ordering::Release);
    }

    /// Marks a request as being handled until the guard is dropped.
    pub(crate) fn handling(self: &Arc<Self>) -> Handling {
        self.handling.fetch_add(1, Ordering::AcqRel);
        Handling(self.clone())
    }

    /// Resolves once the connection has handled nothing and moved no bytes for `timeout`.
    pub(crate) async fn idle(&self, timeout: Duration) {
        let timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        loop {
            let quiet_ms = self
                .now_ms()
                .saturating_sub(self.last_ms.load(Ordering::Acquire));
            let busy = self.handling.load(Ordering::Acquire) > 0;
            if !busy && quiet_ms >= timeout_ms {
                return;
            }
            let left = if busy {
                timeout_ms
            } else {
                timeout_ms - quiet_ms
            };
            tokio::time::sleep(Duration::from_millis(left.clamp(10, 1_000))).await;
        }
    }
}

/// A stream that records its activity.
///
/// It also gives hyper's own refusals a body: a request hyper cannot parse (a URI over 64 KiB,
/// a head over its buffer) is answered by hyper itself, before any handler, with an empty
/// 400, 414 or 431; the stream writes the same status as a problem+json instead.
pub(crate) struct Watched<S> {
    inner: S,
    activity: Arc<Activity>,
    /// A problem being written in place of hyper's empty refusal, and how much of it is out.
    replacing: Option<(Vec<u8>, usize)>,
}

impl<S> Watched<S> {
    pub(crate) fn new(inner: S, activity: Arc<Activity>) -> Watched<S> {
        activity.moved();
        Watched {
            inner,
            activity,
            replacing: None,
        }
    }
}

/// The problem+json response for `head` when it is one of hyper's own empty refusals.
fn problem_for(head: &[u8]) -> Option<Vec<u8>> {
    if !head.starts_with(b"HTTP/1.1 4") || head.len() > 512 {
        return None;
    }
    let text = std::str::from_utf8(head).ok()?.to_ascii_lowercase();
    let (_, rest) = text.split_once(' ')?;
    let status: u16 = rest.get(..3)?.parse().ok()?;
    // hyper's refusals carry no body and no type; every answer of ours has a type.
    if !text.contains("content-length: 0\r\n") || text.contains("content-type") {
        return None;
    }
    let (code, detail) = match status {
        400 => (
            "invalid_request",
            "the request could not be parsed as HTTP/1.1",
        ),
        414 => (
            "uri_too_long",
            "the request's URI is over 65,534 bytes, the server's limit",
        ),
        431 => (
            "headers_too_large",
            "the request's head is larger than the server reads",
        ),
        _ => return None,
    };
    let reason = axum::http::StatusCode::from_u16(status)
        .ok()?
        .canonical_reason()
        .unwrap_or("Refused");
    let body = serde_json::json!({
        "type": format!("https://invicta.dev/problems/{code}"),
        "title": reason,
        "status": status,
        "code": code,
        "detail": detail,
    })
    .to_string();
    Some(
        format!(
            "HTTP/1.1 {status} {reason}\r\ncontent-type: application/problem+json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes(),
    )
}

impl<S: AsyncWrite + Unpin> Watched<S> {
    /// Writes the replacement out; `claimed`: what the caller is told was written of its own.
    fn poll_replacement(
        &mut self,
        cx: &mut Context<'_>,
        claimed: usize,
    ) -> Poll<std::io::Result<usize>> {
        while let Some((bytes, done)) = &mut self.replacing {
            if *done == bytes.len() {
                self.replacing = None;
                break;
            }
            match Pin::new(&mut self.inner).poll_write(cx, &bytes[*done..]) {
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
                }
                Poll::Ready(Ok(n)) => {
                    *done += n;
                    self.activity.moved();
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(claimed))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.moved();
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.as_mut().get_mut();
        if this.replacing.is_none()
            && let Some(problem) = problem_for(buf)
        {
            this.replacing = Some((problem, 0));
        }
        if this.replacing.is_some() {
            return this.poll_replacement(cx, buf.len());
        }
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.moved();
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.as_mut().get_mut();
        if this.replacing.is_none() && bufs.first().is_some_and(|b| b.starts_with(b"HTTP/1.1 4")) {
            let whole: Vec<u8> = bufs.iter().flat_map(|b| b.iter().copied()).collect();
            if let Some(problem) = problem_for(&whole) {
                this.replacing = Some((problem, 0));
            }
        }
        if this.replacing.is_some() {
            let claimed = bufs.iter().map(|b| b.len()).sum();
            return this.poll_replacement(cx, claimed);
        }
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.moved();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hypers_empty_refusals_become_problems() {
        let refusal = b"HTTP/1.1 414 URI Too Long\r\ncontent-length: 0\r\ndate: Fri, 04 Dec 2026 15:00:00 GMT\r\n\r\n";
        let problem = String::from_utf8(problem_for(refusal).expect("a problem")).expect("text");
        assert!(
            problem.starts_with("HTTP/1.1 414 URI Too Long\r\n"),
            "{problem}"
        );
        assert!(problem.contains("application/problem+json"), "{problem}");
        let body = problem.split("\r\n\r\n").nth(1).expect("a body");
        let body: serde_json::Value = serde_json::from_str(body).expect("JSON");
        assert_eq!(body["code"], "uri_too_long");
        assert_eq!(body["status"], 414);
        // Our own answers, which carry a type, pass as they are; so does anything else.
        let ours = b"HTTP/1.1 414 URI Too Long\r\ncontent-type: application/problem+json\r\ncontent-length: 0\r\n\r\n";
        assert!(problem_for(ours).is_none());
        assert!(problem_for(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").is_none());
        assert!(problem_for(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n").is_none());
    }

    #[test]
    fn connections_are_counted_per_address() {
        let per_address = Arc::new(PerAddress::new(2));
        let a: std::net::IpAddr = [10, 0, 0, 1].into();
        let b: std::net::IpAddr = [10, 0, 0, 2].into();
        let first = per_address.take(a);
        let second = per_address.take(a);
        assert!(first.is_some() && second.is_some());
        assert!(per_address.take(a).is_none(), "a third from one address");
        assert!(
            per_address.take(b).is_some(),
            "another address is counted apart"
        );
        drop(first);
        assert!(
            per_address.take(a).is_some(),
            "a slot comes back when its connection ends"
        );
    }

    #[tokio::test]
    async fn idle_waits_for_quiet_and_for_handled_requests() {
        let activity = Arc::new(Activity::default());
        let timeout = Duration::from_millis(100);
        let handling = activity.handling();
        // Busy: not idle however long it is quiet.
        assert!(
            tokio::time::timeout(Duration::from_millis(400), activity.idle(timeout))
                .await
                .is_err()
        );
        drop(handling);
        // Quiet and handling nothing: idle soon after the timeout.
        assert!(
            tokio::time::timeout(Duration::from_secs(5), activity.idle(timeout))
                .await
                .is_ok()
        );
    }
}
