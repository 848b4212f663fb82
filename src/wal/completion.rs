//! One-shot completion of an append or sync: waited on blocking or `.await`ed.
//! Knows nothing of files.

use std::{
    future::Future,
    pin::Pin,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex, MutexGuard, PoisonError,
    },
    task::{Context, Poll, Waker},
    thread::Thread,
    time::{Duration, Instant},
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
    /// Set (under the lock, after `result`) once the result is there: what a
    /// spinning waiter polls without taking the lock.
    done: AtomicBool,
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
            self.done.store(true, Ordering::Release);
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
///
/// Dropping it does not withdraw the append: the entry was handed to the commit
/// thread when the completion was made, and is written (and replayed by the next
/// open) whether anyone waits or not. A timeout ([`Completion::wait_timeout`]
/// returning `None`, or a timer around the `.await`) means the outcome is
/// unknown, not that nothing was appended: an append tried again after one may
/// be stored twice.
#[must_use = "an append is acknowledged only when its completion resolves"]
pub struct Completion {
    slot: Arc<Slot>,
    taken: bool,
    /// How long [`Completion::wait`] polls before the thread parks, and how long
    /// `.await` keeps asking to be polled again before it registers its waker.
    spin: Duration,
    /// When the future was first polled (for the `.await` spin budget).
    first_poll: Option<Instant>,
}

impl Completion {
    pub(crate) fn new() -> (Completion, Arc<Slot>) {
        Completion::spinning(Duration::ZERO)
    }

    /// A completion whose blocking [`Completion::wait`] first polls for up to `spin`
    /// (yielding the CPU between looks) before it parks the thread. Parking costs a
    /// futex wake-up on the commit thread and, on an idle virtual CPU, the
    /// hypervisor's wake-up of that CPU: tens of microseconds each on the machines
    /// measured in `docs/engine.md`, more than a fast device's write.
    pub(crate) fn spinning(spin: Duration) -> (Completion, Arc<Slot>) {
        let slot = Arc::new(Slot::default());
        (
            Completion {
                slot: Arc::clone(&slot),
                taken: false,
                spin,
                first_poll: None,
            },
            slot,
        )
    }

    /// Polls for up to `self.spin`, returning early once the result is there.
    fn spin_until_done(&self) {
        if self.spin.is_zero() {
            return;
        }
        let start = Instant::now();
        while !self.slot.done.load(Ordering::Acquire) {
            if start.elapsed() >= self.spin {
                return;
            }
            // Yield rather than hold the CPU: the commit thread (or another
            // producer) may need it, and the scheduler then keeps this CPU awake.
            std::thread::yield_now();
        }
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
        self.spin_until_done();
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

    /// Blocks for at most `timeout`; `None` when it has not resolved yet (the
    /// append goes on: see [`Completion`]).
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<Result<u64>> {
        // A timeout past what an `Instant` holds waits as long as `wait`.
        let deadline = std::time::Instant::now().checked_add(timeout);
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
                if deadline.is_some_and(|d| now >= d) {
                    st.thread = None;
                    return None;
                }
                st.thread = Some(std::thread::current());
            }
            match deadline {
                Some(d) => {
                    std::thread::park_timeout(
                        d.saturating_duration_since(std::time::Instant::now()),
                    );
                }
                None => std::thread::park(),
            }
        }
    }

    /// True once the result is available (without taking it).
    pub fn is_done(&self) -> bool {
        self.slot.lock().result.is_some()
    }
}

impl Completion {
    /// Whether `.await` should poll again rather than sleep: the result is not
    /// there yet and the spin budget, counted from the first poll, is not spent.
    fn keeps_polling(&mut self) -> Option<Instant> {
        if self.spin.is_zero() || self.slot.done.load(Ordering::Acquire) {
            return None;
        }
        let now = Instant::now();
        (now.duration_since(*self.first_poll.get_or_insert(now)) < self.spin).then_some(now)
    }
}

/// Shortest time between two yields of one thread polling pending completions
/// (`.await`). Yielding lets the commit thread or another producer sharing the CPU
/// run; yielding at every poll of every pending task on one runtime thread with
/// 64 tasks put a third of the process's samples in `sched_yield` (`docs/engine.md`).
const AWAIT_YIELD_EVERY: Duration = Duration::from_micros(20);

thread_local! {
    /// When this thread last yielded while polling a pending completion.
    static LAST_AWAIT_YIELD: std::cell::Cell<Option<Instant>> = const { std::cell::Cell::new(None) };
}

/// Yields the thread unless it did so less than [`AWAIT_YIELD_EVERY`] before `now`.
fn yield_unless_recent(now: Instant) {
    LAST_AWAIT_YIELD.with(|last| {
        if last
            .get()
            .is_none_or(|t| now.duration_since(t) >= AWAIT_YIELD_EVERY)
        {
            std::thread::yield_now();
            last.set(Some(Instant::now()));
        }
    });
}

impl Future for Completion {
    type Output = Result<u64>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if self.taken {
            return Poll::Ready(Err(Error::Closed));
        }
        if let Some(now) = self.keeps_polling() {
            // As `wait` does: yield the thread (the commit thread or another
            // producer may need this CPU; at most every `AWAIT_YIELD_EVERY`, as one
            // executor thread polls many tasks), then ask the executor to poll again
            // instead of sleeping until the commit thread's `Waker`. An executor
            // thread with nothing left to run parks, and waking it costs what
            // `ack_spin_us` avoids for blocked threads (`docs/engine.md`).
            yield_unless_recent(now);
            cx.waker().wake_by_ref();
            return Poll::Pending;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn complete_after(slot: Arc<Slot>, delay: Duration, value: u64) -> std::thread::JoinHandle<()> {
        std::thread::spawn(move || {
            std::thread::sleep(delay);
            slot.complete(Ok(value));
        })
    }

    #[test]
    fn a_result_delivered_while_the_waiter_polls_is_taken_without_parking() {
        let (c, slot) = Completion::spinning(Duration::from_secs(10));
        let t = complete_after(Arc::clone(&slot), Duration::from_millis(5), 7);
        assert_eq!(c.wait().unwrap(), 7);
        t.join().unwrap();
        // The waiter never registered itself for an unpark.
        assert!(slot.lock().thread.is_none());
    }

    #[test]
    fn a_result_delivered_after_the_poll_budget_wakes_the_parked_waiter() {
        let (c, slot) = Completion::spinning(Duration::from_micros(1));
        let t = complete_after(slot, Duration::from_millis(30), 9);
        assert_eq!(c.wait().unwrap(), 9);
        t.join().unwrap();
    }

    /// A timeout past what an `Instant` holds (`Duration::MAX`, "practically
    /// forever") waits as `wait` does. Before, the deadline's sum panicked,
    /// even with the result already there.
    #[test]
    fn a_timeout_past_any_instant_waits_without_panicking() {
        let (mut c, slot) = Completion::spinning(Duration::ZERO);
        slot.complete(Ok(3));
        assert!(matches!(c.wait_timeout(Duration::MAX), Some(Ok(3))));
        let (mut c, slot) = Completion::spinning(Duration::ZERO);
        let t = complete_after(slot, Duration::from_millis(20), 4);
        assert!(matches!(c.wait_timeout(Duration::MAX), Some(Ok(4))));
        t.join().unwrap();
    }

    #[test]
    fn the_first_result_wins_and_errors_pass_through() {
        let (c, slot) = Completion::spinning(Duration::from_millis(1));
        slot.complete(Err(Error::Closed));
        slot.complete(Ok(1));
        assert!(matches!(c.wait(), Err(Error::Closed)));
    }

    /// Counts the wake-ups it receives.
    #[derive(Default)]
    struct CountingWaker(std::sync::atomic::AtomicUsize);

    impl std::task::Wake for CountingWaker {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn poll_once(c: &mut Completion, waker: &Arc<CountingWaker>) -> Poll<Result<u64>> {
        let waker = Waker::from(Arc::clone(waker));
        Pin::new(c).poll(&mut Context::from_waker(&waker))
    }

    #[test]
    fn an_awaited_completion_asks_to_be_polled_again_within_its_budget() {
        let (mut c, slot) = Completion::spinning(Duration::from_secs(10));
        let w = Arc::new(CountingWaker::default());
        for polls in 1..=3 {
            assert!(poll_once(&mut c, &w).is_pending());
            // Woken at once to be polled again; nothing registered with the slot.
            assert_eq!(w.0.load(Ordering::SeqCst), polls);
            assert!(slot.lock().waker.is_none());
        }
        slot.complete(Ok(4));
        assert!(matches!(poll_once(&mut c, &w), Poll::Ready(Ok(4))));
        // Completing woke nobody: the future was polling.
        assert_eq!(w.0.load(Ordering::SeqCst), 3);
    }

    #[test]
    fn an_awaited_completion_registers_its_waker_once_the_budget_is_spent() {
        for spin in [Duration::ZERO, Duration::from_millis(2)] {
            let (mut c, slot) = Completion::spinning(spin);
            let w = Arc::new(CountingWaker::default());
            let self_wakes = usize::from(!spin.is_zero());
            assert!(poll_once(&mut c, &w).is_pending());
            assert_eq!(w.0.load(Ordering::SeqCst), self_wakes);
            std::thread::sleep(spin + Duration::from_millis(1));
            assert!(poll_once(&mut c, &w).is_pending());
            // No longer polling: it waits for the commit thread's wake-up.
            assert_eq!(w.0.load(Ordering::SeqCst), self_wakes);
            assert!(slot.lock().waker.is_some());
            slot.complete(Ok(5));
            assert_eq!(w.0.load(Ordering::SeqCst), self_wakes + 1);
            assert!(matches!(poll_once(&mut c, &w), Poll::Ready(Ok(5))));
        }
    }
}
