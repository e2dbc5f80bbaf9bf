//! Copies a SQLite file's WAL back into the database file (a passive checkpoint) on a thread
//! and a connection of its own, beside the writer's thread.
//!
//! A checkpoint on the writer's connection held the writer for as long as the copy took:
//! SQLite's automatic one runs inside the commit that crosses its mark, and a copy between
//! batches (the previous way) took 6–11 ms every 250 ms at 50,000 messages a second, during
//! which every send waited. A passive checkpoint on another connection takes no lock the
//! writer needs: the writer keeps appending to the WAL meanwhile, and the copy, mostly the
//! fsync of the pages written, waits on the disk rather than on the writer. Once a copy has
//! caught up with the WAL, the writer's next transaction starts it over from the beginning.
//! The automatic checkpoint stays on the writer's connection for a WAL that grows past its
//! mark all the same (it then copies only what this thread has not).

use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use rusqlite::Connection;

/// How long the checkpointer waits after each copy before the next.
pub(super) const CHECKPOINT_EVERY: Duration = Duration::from_millis(250);

/// Name of the checkpointer's thread: not under `priority::SQLITE_THREAD_PREFIX`, so that it
/// keeps the default priority (the copy is background work; the writer is not).
const THREAD_NAME: &str = "chat-wal-copy";

/// Keeps the checkpointer's thread running; the thread ends once this is dropped (it closes
/// its connection then).
pub(super) struct Checkpointer {
    _running: mpsc::Sender<()>,
}

/// Starts the checkpointer of the database file at `path` (already in WAL mode), with
/// `synchronous` as the writer's (`FULL` or `NORMAL`: both fsync the copy).
pub(super) fn start(path: &Path, synchronous: &str) -> anyhow::Result<Checkpointer> {
    let conn = Connection::open(path)?;
    conn.pragma_update(None, "synchronous", synchronous)?;
    let (running, stopped) = mpsc::channel::<()>();
    std::thread::Builder::new()
        .name(THREAD_NAME.into())
        .spawn(move || {
            while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(CHECKPOINT_EVERY)
            {
                checkpoint(&conn);
            }
        })?;
    Ok(Checkpointer { _running: running })
}

/// One passive checkpoint: copies every WAL frame no reader still needs, waits for nobody.
fn checkpoint(conn: &Connection) {
    if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| {
        row.get::<_, i64>(0)
    }) {
        tracing::warn!("WAL checkpoint: {e}");
    }
}
