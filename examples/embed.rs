//! The README's embedding example (kept identical; `cargo test` compiles it).

use bytes::Bytes;
use streamline::wal::{SyncMode, Wal, WalConfig};

fn main() -> streamline::Result<()> {
    let config = WalConfig {
        sync_mode: SyncMode::EveryWrite,
        ..WalConfig::default()
    };
    // Validates every file, cuts a torn tail, starts the commit thread.
    let (wal, recovery) = Wal::open("data/wal", config)?;
    for entry in recovery {
        let entry = entry?; // entries after the checkpoint, streamed in order
        println!(
            "replay #{} {}/{}: {} bytes",
            entry.sequence,
            entry.topic,
            entry.partition,
            entry.data.len()
        );
    }
    // `wait()` blocks; from async code, `.await` the completion instead.
    let seq = wal
        .append("orders", 0, Bytes::from_static(b"hello"))
        .wait()?;
    wal.checkpoint(seq)?; // everything up to `seq` is applied elsewhere; old files may go
    wal.close()?; // flushes and fdatasyncs everything
    Ok(())
}
