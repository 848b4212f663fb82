//! Everything the library logs at WARN and above, from every thread of the
//! test binary (a global subscriber: one per binary).

use std::{
    io::Write,
    sync::{Arc, Mutex, OnceLock},
};

/// The log so far, as text.
pub fn text() -> String {
    String::from_utf8_lossy(&logs().lock().unwrap()).into_owned()
}

/// Installs the subscriber (once) and returns its buffer.
pub fn logs() -> &'static Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&logs);
        tracing_subscriber::fmt()
            .with_ansi(false)
            .with_max_level(tracing::Level::WARN)
            .with_writer(move || Sink(Arc::clone(&sink)))
            .init();
        logs
    })
}

struct Sink(Arc<Mutex<Vec<u8>>>);

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
