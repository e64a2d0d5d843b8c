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
pub(crate) struct Watched<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S> Watched<S> {
    pub(crate) fn new(inner: S, activity: Arc<Activity>) -> Watched<S> {
        activity.moved();
        Watched { inner, activity }
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
