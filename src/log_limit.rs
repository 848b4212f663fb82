//! Log lines a client can cause at will, kept from filling the disk, and its
//! strings kept from forging lines.
//!
//! A line logged once per request or per connection (a refused produce, a
//! malformed frame, a failed TLS handshake) costs the client a few bytes and
//! the broker a few hundred: one connection pipelining refused requests wrote
//! some 20 MB of log a second. Each such line goes through a [`LogLimit`] of
//! its own: at most [`PER_WINDOW`] a [`WINDOW`], and the first let through
//! after a window that held some back says how many (`suppressed`). What each
//! stands for is still counted by the metrics.
//!
//! A string a client chose (a topic it produced to, a group id, a member id)
//! is logged through [`Shown`]: quoted and escaped as `{:?}` escapes it, so a
//! newline or a terminal escape sequence in it cannot start a line of its own,
//! and cut after [`SHOWN_BYTES`] bytes.

use std::{
    fmt,
    sync::{Mutex, PoisonError},
    time::{Duration, Instant},
};

/// The length of a window of a [`LogLimit`].
pub const WINDOW: Duration = Duration::from_secs(10);

/// Lines a [`LogLimit`] lets through in one window.
pub const PER_WINDOW: u32 = 20;

/// Bytes of a client's string a log line shows.
pub const SHOWN_BYTES: usize = 256;

/// At most [`PER_WINDOW`] lines of one kind a [`WINDOW`] (see the module).
#[derive(Debug)]
pub struct LogLimit {
    /// The current window's start, lines let through in it, and lines held
    /// back since the last one let through.
    state: Mutex<(Option<Instant>, u32, u64)>,
}

impl LogLimit {
    /// A limit with nothing logged yet.
    pub const fn new() -> LogLimit {
        LogLimit {
            state: Mutex::new((None, 0, 0)),
        }
    }

    /// Whether to log a line now, at `now`: `Some(n)` with the lines held back
    /// since the last one let through (to log with it), `None` to hold this
    /// one back.
    pub fn allow_at(&self, now: Instant) -> Option<u64> {
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let (start, passed, held) = &mut *s;
        if start.is_none_or(|t| now.saturating_duration_since(t) >= WINDOW) {
            *start = Some(now);
            *passed = 0;
        }
        if *passed >= PER_WINDOW {
            *held += 1;
            return None;
        }
        *passed += 1;
        Some(std::mem::take(held))
    }

    /// [`LogLimit::allow_at`] now.
    pub fn allow(&self) -> Option<u64> {
        self.allow_at(Instant::now())
    }
}

impl Default for LogLimit {
    fn default() -> Self {
        LogLimit::new()
    }
}

/// Logs a line through a [`LogLimit`] with the count of lines it held back
/// as the field `suppressed`: `limited!(warn, %peer, "closing connection")`
/// declares a limit of its own for the line; `limited!(CLOSES => info, ...)`
/// uses one declared elsewhere, for one kind of line logged at more than one
/// place.
macro_rules! limited {
    ($level:ident, $($arg:tt)+) => {{
        static LIMIT: $crate::log_limit::LogLimit = $crate::log_limit::LogLimit::new();
        $crate::log_limit::limited!(LIMIT => $level, $($arg)+)
    }};
    ($limit:ident => $level:ident, $($arg:tt)+) => {
        if let Some(suppressed) = $limit.allow() {
            tracing::$level!(suppressed, $($arg)+);
        }
    };
}
pub(crate) use limited;

/// Partitions of one request refused: the first (topic, partition, reason)
/// and how many. Logged once per request, as a request may list up to
/// [`crate::server::listed::MAX_LISTED`] partitions refused alike.
#[derive(Default)]
pub(crate) struct Refused {
    pub(crate) first: Option<(String, i32, String)>,
    pub(crate) count: usize,
}

impl Refused {
    /// Counts a refusal of `partition` of `topic`, for `why` (called only for
    /// the first).
    pub(crate) fn add(&mut self, topic: &str, partition: i32, why: impl FnOnce() -> String) {
        self.count += 1;
        if self.first.is_none() {
            self.first = Some((topic.to_string(), partition, why()));
        }
    }
}

/// A client's string in a log line (see the module).
pub struct Shown<'a>(pub &'a str);

/// A client's optional string in a log line, as [`Shown`] shows it, or `none`.
pub struct ShownOpt<'a>(pub Option<&'a str>);

impl fmt::Display for ShownOpt<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(s) => Shown(s).fmt(f),
            None => f.write_str("none"),
        }
    }
}

impl fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.0;
        let mut cut = s.len().min(SHOWN_BYTES);
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        write!(f, "{:?}", &s[..cut])?;
        if cut < s.len() {
            write!(f, "... ({} bytes)", s.len())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_limit_lets_through_a_window_s_lines_then_says_how_many_it_held_back() {
        let limit = LogLimit::new();
        let t0 = Instant::now();
        for _ in 0..PER_WINDOW {
            assert_eq!(limit.allow_at(t0), Some(0));
        }
        for _ in 0..1000 {
            assert_eq!(limit.allow_at(t0 + Duration::from_secs(1)), None);
        }
        assert_eq!(limit.allow_at(t0 + WINDOW), Some(1000));
        assert_eq!(limit.allow_at(t0 + WINDOW), Some(0));
    }

    #[test]
    fn a_shown_string_is_escaped_and_cut() {
        let forged = "x\n2026-12-06T10:00:00Z ERROR streamline::wal: forged\u{1b}[31m";
        let shown = Shown(forged).to_string();
        assert!(
            !shown.contains('\n') && !shown.contains('\u{1b}'),
            "{shown}"
        );
        assert!(shown.starts_with("\"x\\n2026"), "{shown}");
        let long = "é".repeat(1000);
        let shown = Shown(&long).to_string();
        assert!(shown.ends_with("... (2000 bytes)"), "{shown}");
        assert!(shown.len() < SHOWN_BYTES + 30, "{}", shown.len());
    }
}
