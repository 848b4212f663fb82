//! What a connection's reader and writer share: the bytes of the requests in
//! flight, and, to tell an idle connection, the time of its last I/O and whether a
//! response is being computed.
//!
//! The reader reads requests ahead of the writer (pipelining), and a request
//! keeps its whole frame alive until its response is written (the queue holds
//! frames: each but a Produce is decoded when the writer reaches it). So the
//! reader reads no further frame while those in flight hold [`IN_FLIGHT_BYTES`]
//! (one frame is always let in, whatever its size): without the bound, a fetch
//! long-polling at the head of the queue and 64 padded frames behind it held
//! 64 x `--max-request-bytes` per connection.
//!
//! A connection is idle, as Kafka's `connections.max.idle.ms` counts it, when no
//! byte has been read from it or written to it for the idle time and no response
//! is being computed: a request that stopped arriving halfway and a response the
//! client does not read count as idle, a fetch long-polling or a produce waiting
//! for its fsync does not.

use std::{
    pin::Pin,
    sync::{
        atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering},
        Arc,
    },
    task::{Context, Poll},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    sync::Notify,
    time::Instant,
};

/// The most bytes of request frames a connection may have in flight (read, their
/// responses not yet written) before its next frame is read. Kafka reads one
/// request per connection at a time; this lets a producer pipeline dozens of
/// 1 MiB requests.
pub(crate) const IN_FLIGHT_BYTES: usize = 32 << 20;

/// The bytes of the request frames a connection has read whose responses are not
/// yet written.
#[derive(Debug, Default)]
pub(crate) struct InFlight {
    bytes: AtomicUsize,
    released: Notify,
    /// The writer has ended (the connection is going): nothing waits for room.
    closed: AtomicBool,
}

impl InFlight {
    /// Waits until a frame of `len` bytes may be read: while nothing is in flight,
    /// or while what is leaves room for it under [`IN_FLIGHT_BYTES`].
    pub(crate) async fn room_for(&self, len: usize) {
        loop {
            let held = self.bytes.load(Ordering::Acquire);
            if held == 0
                || held.saturating_add(len) <= IN_FLIGHT_BYTES
                || self.closed.load(Ordering::Acquire)
            {
                return;
            }
            // A release while this looked stored a permit: no wakeup is lost.
            self.released.notified().await;
        }
    }

    /// A frame of `len` bytes was read.
    pub(crate) fn add(&self, len: usize) {
        self.bytes.fetch_add(len, Ordering::AcqRel);
    }

    /// The response to a frame of `len` bytes was written (or dropped).
    pub(crate) fn release(&self, len: usize) {
        self.bytes.fetch_sub(len, Ordering::AcqRel);
        self.released.notify_one();
    }

    /// The writer has ended: a reader waiting for room goes on (to find the
    /// connection gone).
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.released.notify_one();
    }
}

/// What the writer is doing.
const WAITING: u8 = 0;
const COMPUTING: u8 = 1;
const WRITING: u8 = 2;

/// A connection's I/O clock; see the module documentation.
#[derive(Debug)]
pub(crate) struct Activity {
    start: Instant,
    /// Milliseconds from `start` to the last byte read or written, or to the last
    /// response becoming ready.
    last: AtomicU64,
    /// [`WAITING`] for a request, [`COMPUTING`] a response, or [`WRITING`] one.
    writer: AtomicU8,
}

impl Activity {
    pub(crate) fn new() -> Arc<Activity> {
        Arc::new(Activity {
            start: Instant::now(),
            last: AtomicU64::new(0),
            writer: AtomicU8::new(WAITING),
        })
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Restarts the idle time.
    pub(crate) fn touch(&self) {
        self.last.store(self.now_ms(), Ordering::Release);
    }

    /// The writer awaits a response being computed: the connection is not idle.
    pub(crate) fn computing(&self) {
        self.writer.store(COMPUTING, Ordering::Release);
    }

    /// The writer has a response to write; the idle time restarts.
    pub(crate) fn writing(&self) {
        self.touch();
        self.writer.store(WRITING, Ordering::Release);
    }

    /// The writer waits for the next request.
    pub(crate) fn waiting(&self) {
        self.writer.store(WAITING, Ordering::Release);
    }

    /// Whether a response is waiting for the client to read it.
    pub(crate) fn unread_response(&self) -> bool {
        self.writer.load(Ordering::Acquire) == WRITING
    }

    /// Resolves once `limit` has passed since the connection was accepted
    /// (never when `None`).
    pub(crate) async fn older_than(&self, limit: Option<Duration>) {
        match limit {
            Some(limit) => tokio::time::sleep_until(self.start + limit).await,
            None => std::future::pending().await,
        }
    }

    /// Resolves once the connection has been idle for `limit` (never when `None`).
    pub(crate) async fn idle(&self, limit: Option<Duration>) {
        let Some(limit) = limit else {
            return std::future::pending().await;
        };
        let limit_ms = u64::try_from(limit.as_millis()).unwrap_or(u64::MAX);
        loop {
            let since = self
                .now_ms()
                .saturating_sub(self.last.load(Ordering::Acquire));
            let busy = self.writer.load(Ordering::Acquire) == COMPUTING;
            if since >= limit_ms && !busy {
                return;
            }
            // While a response is computed, look again a whole idle time later
            // (its completion restarts the clock).
            let wait = if busy { limit_ms } else { limit_ms - since };
            tokio::time::sleep(Duration::from_millis(wait.max(1))).await;
        }
    }
}

/// A stream (or half of one) whose every byte read or written restarts its
/// connection's idle time.
#[derive(Debug)]
pub(crate) struct Metered<T> {
    inner: T,
    activity: Arc<Activity>,
}

impl<T> Metered<T> {
    pub(crate) fn new(inner: T, activity: &Arc<Activity>) -> Metered<T> {
        Metered {
            inner,
            activity: Arc::clone(activity),
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Metered<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.activity.touch();
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Metered<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            this.activity.touch();
        }
        r
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            this.activity.touch();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_frame_waits_for_room_unless_nothing_is_in_flight() {
        let f = Arc::new(InFlight::default());
        // Alone, a frame of any size gets in.
        f.room_for(IN_FLIGHT_BYTES * 4).await;
        f.add(IN_FLIGHT_BYTES - 10);
        f.room_for(10).await;
        let g = Arc::clone(&f);
        let waiting = tokio::spawn(async move { g.room_for(11).await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "11 bytes more than the budget");
        f.release(IN_FLIGHT_BYTES - 10);
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("let in once released")
            .unwrap();
    }

    #[tokio::test]
    async fn idle_counts_from_the_last_io_and_not_while_a_response_is_computed() {
        let limit = Some(Duration::from_millis(200));
        let a = Activity::new();
        let start = Instant::now();
        a.idle(limit).await;
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(200), "{took:?}");

        // A response being computed for 600 ms is not idleness; its completion
        // restarts the clock.
        a.computing();
        let b = Arc::clone(&a);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(600)).await;
            b.writing();
        });
        let start = Instant::now();
        a.idle(limit).await;
        assert!(a.unread_response());
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(800), "{took:?}");
    }
}
