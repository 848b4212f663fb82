//! One-shot completion of an append or sync: waited on blocking or `.await`ed.
//! Knows nothing of files.

use std::{
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    task::{Context, Poll, Waker},
    thread::Thread,
    time::Duration,
};

use crate::error::{Error, Result};

#[derive(Default)]
struct State {
    result: Option<Result<u64>>,
    waker: Option<Waker>,
    /// A thread blocked in `wait`; woken with `unpark`, which costs a syscall only
    /// if the thread really parked (the commit thread pays it once per producer).
    thread: Option<Thread>,
}

/// Shared slot between a producer and the commit thread.
#[derive(Default)]
pub(crate) struct Slot {
    state: Mutex<State>,
}

impl Slot {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Delivers the result once; later calls are ignored.
    pub(crate) fn complete(&self, result: Result<u64>) {
        let (waker, thread) = {
            let mut st = self.lock();
            if st.result.is_some() {
                return;
            }
            st.result = Some(result);
            (st.waker.take(), st.thread.take())
        };
        if let Some(t) = thread {
            t.unpark();
        }
        if let Some(w) = waker {
            w.wake();
        }
    }
}

/// Resolves to the sequence assigned to an append (the first one for a batch) once it
/// is durable per the sync mode, or to the last durable sequence for [`crate::wal::Wal::sync`].
///
/// Wait with [`Completion::wait`] from a thread, or `.await` it from async code. If the
/// WAL fails or closes first, it resolves to the error.
#[must_use = "an append is acknowledged only when its completion resolves"]
pub struct Completion {
    slot: Arc<Slot>,
    taken: bool,
}

impl Completion {
    pub(crate) fn new() -> (Completion, Arc<Slot>) {
        let slot = Arc::new(Slot::default());
        (
            Completion {
                slot: Arc::clone(&slot),
                taken: false,
            },
            slot,
        )
    }

    /// A completion that is already resolved.
    pub(crate) fn ready(result: Result<u64>) -> Completion {
        let (c, slot) = Completion::new();
        slot.complete(result);
        c
    }

    /// Blocks until the result is available.
    ///
    /// # Errors
    /// The error that failed the append ([`Error::Failed`], [`Error::Io`], ...).
    pub fn wait(mut self) -> Result<u64> {
        if self.taken {
            return Err(Error::Closed);
        }
        loop {
            {
                let mut st = self.slot.lock();
                if let Some(r) = st.result.take() {
                    self.taken = true;
                    return r;
                }
                st.thread = Some(std::thread::current());
            }
            // A spurious unpark (or one left over from an earlier slot) just loops.
            std::thread::park();
        }
    }

    /// Blocks for at most `timeout`; `None` when it has not resolved yet.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<Result<u64>> {
        let deadline = std::time::Instant::now() + timeout;
        if self.taken {
            return Some(Err(Error::Closed));
        }
        loop {
            {
                let mut st = self.slot.lock();
                if let Some(r) = st.result.take() {
                    self.taken = true;
                    st.thread = None;
                    return Some(r);
                }
                let now = std::time::Instant::now();
                if now >= deadline {
                    st.thread = None;
                    return None;
                }
                st.thread = Some(std::thread::current());
            }
            std::thread::park_timeout(
                deadline.saturating_duration_since(std::time::Instant::now()),
            );
        }
    }

    /// True once the result is available (without taking it).
    pub fn is_done(&self) -> bool {
        self.slot.lock().result.is_some()
    }
}

impl Future for Completion {
    type Output = Result<u64>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if self.taken {
            return Poll::Ready(Err(Error::Closed));
        }
        let mut st = self.slot.lock();
        if let Some(r) = st.result.take() {
            drop(st);
            self.taken = true;
            return Poll::Ready(r);
        }
        match &st.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => st.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

impl std::fmt::Debug for Completion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Completion")
            .field("done", &self.is_done())
            .finish()
    }
}
