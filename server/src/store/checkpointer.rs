//! Copies a SQLite file's WAL back into the database file (a passive checkpoint) on a thread
//! and a connection of its own, beside the writer's thread.
//!
//! A checkpoint on the writer's connection held the writer for as long as the copy took:
//! SQLite's automatic one runs inside the commit that crosses its mark, and a copy between
//! batches (the previous way) took 6–11 ms every 250 ms at 50,000 messages a second, during
//! which every send waited. A passive checkpoint on another connection takes no lock the
//! writer needs: the writer keeps appending to the WAL meanwhile, and the copy, mostly the
//! fsync of the pages written, waits on the disk rather than on the writer.
//!
//! A copy begins when the writer reports that it has no batch to write
//! ([`Checkpointer::writer_idle`]), at most every [`IDLE_COPY_SPACING`], and at the latest
//! [`CHECKPOINT_EVERY`] after the previous one: the copy then mostly runs while no commit
//! fsyncs the WAL beside it, and little is left for the automatic checkpoint, which stays on
//! the writer's connection. That one is still what starts the WAL over while sends keep
//! coming (a copy on another connection can only catch up with a writer that stays idle
//! until it ends, and then the writer's next transaction starts the WAL over): it now copies
//! ~50 ms of commits rather than up to 250 ms (at 10,000 messages a second its fsync of the
//! database file took 2.7–3.9 ms instead of 3.9–8.8 ms).

use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rusqlite::Connection;

/// Longest time between two copies (while the writer is never idle, e.g. in a closed loop).
pub(super) const CHECKPOINT_EVERY: Duration = Duration::from_millis(250);

/// Shortest time from the end of a copy to the beginning of one begun when the writer goes
/// idle.
const IDLE_COPY_SPACING: Duration = Duration::from_millis(50);

/// Name of the checkpointer's thread: not under `priority::SQLITE_THREAD_PREFIX`, so that it
/// keeps the default priority (the copy is background work; the writer is not).
const THREAD_NAME: &str = "chat-wal-copy";

/// The writer's handle on the checkpointer's thread; the thread ends once this is dropped (it
/// closes its connection then).
pub(super) struct Checkpointer {
    idle: mpsc::SyncSender<()>,
}

impl Checkpointer {
    /// Tells the thread that the writer has no batch to write: a copy begun now can finish
    /// before the writer's next transaction, which then starts the WAL over. Never waits.
    pub(super) fn writer_idle(&self) {
        let _ = self.idle.try_send(());
    }
}

/// Starts the checkpointer of the database file at `path` (already in WAL mode), with
/// `synchronous` as the writer's (`FULL` or `NORMAL`: both fsync the copy).
pub(super) fn start(path: &Path, synchronous: &str) -> anyhow::Result<Checkpointer> {
    start_every(path, synchronous, CHECKPOINT_EVERY)
}

/// [`start`] with copies at the latest `every` apart.
fn start_every(path: &Path, synchronous: &str, every: Duration) -> anyhow::Result<Checkpointer> {
    let conn = Connection::open(path)?;
    conn.pragma_update(None, "synchronous", synchronous)?;
    let (idle, idles) = mpsc::sync_channel::<()>(1);
    std::thread::Builder::new()
        .name(THREAD_NAME.into())
        .spawn(move || {
            // When the last copy ended (none yet: the first notice starts one).
            let mut last: Option<Instant> = None;
            loop {
                match idles.recv_timeout(every) {
                    Ok(()) if last.is_some_and(|t| t.elapsed() < IDLE_COPY_SPACING) => continue,
                    Ok(()) | Err(mpsc::RecvTimeoutError::Timeout) => {}
                    Err(mpsc::RecvTimeoutError::Disconnected) => return,
                }
                checkpoint(&conn);
                last = Some(Instant::now());
            }
        })?;
    Ok(Checkpointer { idle })
}

/// One passive checkpoint: copies every WAL frame no reader still needs, waits for nobody.
fn checkpoint(conn: &Connection) {
    if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| {
        row.get::<_, i64>(0)
    }) {
        tracing::warn!("WAL checkpoint: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::TempDatabase;

    /// A copy begins when the writer reports it is idle, without waiting for the period: with
    /// the period out of reach, the database file still grows once the writer is idle after a
    /// transaction that only the WAL holds.
    #[test]
    fn a_copy_begins_when_the_writer_is_idle() {
        let file = TempDatabase::new("chat-idle-copy");
        let writer = Connection::open(file.path()).unwrap();
        writer.pragma_update(None, "journal_mode", "wal").unwrap();
        writer
            .execute_batch("CREATE TABLE t (x BLOB); PRAGMA wal_autocheckpoint = 0;")
            .unwrap();
        let checkpointer = start_every(file.path(), "full", Duration::from_secs(3600)).unwrap();
        let before = std::fs::metadata(file.path()).unwrap().len();
        writer
            .execute("INSERT INTO t SELECT randomblob(400000)", [])
            .unwrap();
        checkpointer.writer_idle();
        let mut grown = false;
        for _ in 0..200 {
            if std::fs::metadata(file.path()).unwrap().len() >= before + 300_000 {
                grown = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(grown, "the database file never grew past {before} bytes");
    }
}
