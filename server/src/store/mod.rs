//! The store: sea-orm entities and the queries of the service layer (the original's "model"
//! layer). SQLite, MySQL/MariaDB and PostgreSQL share one code path, chosen by the URL scheme.
//!
//! - [`accounts`]: users and friendships.
//! - [`groups`]: groups and membership.
//! - [`messages`]: conversations, batched message writes, history, read cursors, unread.
//! - `batch`: the transaction a batch of messages is written in (MySQL/MariaDB, PostgreSQL,
//!   an in-memory SQLite database).
//! - `file_writer`: a SQLite file's batches, written on a thread of their own.
//! - `checkpointer`: a SQLite file's WAL, copied back on a thread of its own.
//! - `packed`: reads of many rows, packed by SQLite into one JSON value.

pub mod accounts;
mod batch;
mod checkpointer;
pub mod entities;
mod file_writer;
pub mod groups;
pub mod messages;
mod packed;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use migration::{Migrator, MigratorTrait};
use sea_orm::sea_query::Value;
use sea_orm::sqlx::Executor;
use sea_orm::sqlx::sqlite::SqlitePoolOptions;
use sea_orm::{
    ColumnTrait, Condition, ConnectOptions, Database, DatabaseBackend, DatabaseConnection,
};

use crate::error::StoreError;
use crate::priority::{self, PriorityError};
use file_writer::FileWriter;

/// Handle to the database, cheap to clone. Also caches what never changes once written: user
/// names, the conversation id of each 1:1 pair, and the text of the writer's INSERTs.
#[derive(Clone)]
pub struct Store {
    /// The connection pool.
    db: DatabaseConnection,
    /// A SQLite file's chat-batch writer (elsewhere batches go through the pool).
    file_writer: Option<FileWriter>,
    /// user id → name (names never change, users are never deleted).
    names: Arc<Mutex<HashMap<i64, Arc<str>>>>,
    /// (smaller user id, larger user id) → conversation id.
    pairs: Arc<Mutex<HashMap<(i64, i64), i64>>>,
    /// Number of rows → text of the multi-row message INSERT (`messages::insert_sql`), shared
    /// with the file writer's thread.
    inserts: messages::InsertTexts,
}

/// Settings that apply to SQLite only.
#[derive(Debug, Clone, Copy, Default)]
pub struct SqliteTuning {
    /// `synchronous=FULL` (else `NORMAL`, still in WAL mode).
    pub fsync_every_commit: bool,
    /// Nice value given to each connection's thread when it starts (0: left as it is); see
    /// [`crate::priority`].
    pub thread_nice: i32,
}

/// WAL pages after which a commit copies the WAL back into the database file (SQLite's
/// default is 1,000). A chat batch rewrites one index page per conversation it touches, so a
/// busy replica's WAL holds the same pages many times over; checkpointing every 8,000 pages
/// (32 MiB at 4 KiB pages) copies each of them once per many batches instead of once per
/// three or four.
const WAL_CHECKPOINT_PAGES: u32 = 8000;

/// `(a = x AND b = y) OR …` over `pairs`: the rows matching any of them, every value bound.
fn any_pair<C, X, Y>(a: C, b: C, pairs: impl IntoIterator<Item = (X, Y)>) -> Condition
where
    C: ColumnTrait,
    X: Into<Value>,
    Y: Into<Value>,
{
    pairs.into_iter().fold(Condition::any(), |any, (x, y)| {
        any.add(Condition::all().add(a.eq(x)).add(b.eq(y)))
    })
}

/// Whether the store already logged that it may not set its threads' priority.
static NICE_REFUSED: AtomicBool = AtomicBool::new(false);

/// Gives SQLite's connection threads the nice value `nice` (called as each connection opens).
/// Without the privilege it logs once and leaves them.
fn prioritise_sqlite_threads(nice: i32) {
    match priority::set_threads_nice(priority::SQLITE_THREAD_PREFIX, nice) {
        Ok(_) => {}
        Err(PriorityError::NotPermitted) => {
            if !NICE_REFUSED.swap(true, Ordering::Relaxed) {
                tracing::info!(
                    nice,
                    "SQLite threads keep the default priority: lowering a nice value needs \
                     CAP_SYS_NICE (--sqlite-thread-nice 0 silences this)"
                );
            }
        }
        Err(e) => tracing::warn!(error = %e, "setting the priority of SQLite's threads"),
    }
}

impl Store {
    /// Connects to `url` and brings the schema up to date; `sqlite` applies to SQLite only.
    pub async fn connect(url: &str, pool: u32, sqlite: SqliteTuning) -> anyhow::Result<Self> {
        let mut opts = ConnectOptions::new(url.to_owned());
        opts.max_connections(pool)
            .min_connections(1)
            .connect_timeout(Duration::from_secs(5))
            .acquire_timeout(Duration::from_secs(5))
            // sqlx pings every connection it hands out by default: one more round trip (for
            // SQLite, a hand-off to its worker thread and back) before every query. Only a
            // connection idle long enough to have been dropped by the server is pinged.
            .test_before_acquire_if_idle_for(Duration::from_secs(30))
            .sqlx_logging(false);
        let synchronous = if sqlite.fsync_every_commit {
            sea_orm::sqlx::sqlite::SqliteSynchronous::Full
        } else {
            sea_orm::sqlx::sqlite::SqliteSynchronous::Normal
        };
        opts.map_sqlx_sqlite_opts(move |o| {
            o.journal_mode(sea_orm::sqlx::sqlite::SqliteJournalMode::Wal)
                .synchronous(synchronous)
                .busy_timeout(Duration::from_secs(10))
                .foreign_keys(false)
                .row_buffer_size(1024)
                .pragma("wal_autocheckpoint", WAL_CHECKPOINT_PAGES.to_string())
                .thread_name(|id| format!("{}{id}", priority::SQLITE_THREAD_PREFIX))
        });
        let nice = sqlite.thread_nice;
        opts.map_sqlx_sqlite_pool_opts(move |pool| with_thread_nice(pool, nice));
        // MySQL/MariaDB sessions run READ COMMITTED, PostgreSQL's default: under InnoDB's
        // REPEATABLE READ an UPDATE keeps a lock on every row it scans, matching or not, and
        // the seq reservation of a batch (`WHERE id IN (…)` over a few hundred of a small
        // table's conversations) is planned as a full index scan, so each replica's batch
        // locked every conversation until its COMMIT and the replicas wrote one at a time.
        opts.map_sqlx_mysql_pool_opts(|pool| {
            pool.after_connect(|conn, _| {
                Box::pin(async move {
                    conn.execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
                        .await
                        .map(drop)
                })
            })
        });
        let db = Database::connect(opts).await?;
        Migrator::up(&db, None).await?;
        let mut store = Store {
            db,
            file_writer: None,
            names: Arc::default(),
            pairs: Arc::default(),
            inserts: Arc::default(),
        };
        // An in-memory database is its pool's own: another connection would not see it.
        if store.backend() == DatabaseBackend::Sqlite && !in_memory(url) {
            let options = store.db.get_sqlite_connection_pool().connect_options();
            let path = options.get_filename().to_owned();
            store.file_writer = Some(FileWriter::open(&path, sqlite, store.inserts.clone())?);
        }
        Ok(store)
    }

    /// The underlying connection (for health checks).
    pub fn connection(&self) -> &DatabaseConnection {
        &self.db
    }

    /// Which database this is.
    pub fn backend(&self) -> DatabaseBackend {
        self.db.get_database_backend()
    }

    /// Answers when the database answers a trivial query.
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.db.ping().await.map_err(StoreError::from)
    }

    /// Closes the pool (pending writes must be flushed before).
    pub async fn close(self) {
        let _ = self.db.close().await;
    }
}

/// `pool` with the hook that gives each new connection's thread the nice value `nice` (none
/// when 0).
fn with_thread_nice(pool: SqlitePoolOptions, nice: i32) -> SqlitePoolOptions {
    if nice == 0 {
        return pool;
    }
    pool.after_connect(move |_, _| {
        Box::pin(async move {
            prioritise_sqlite_threads(nice);
            Ok(())
        })
    })
}

/// Whether a SQLite URL names an in-memory database (which a second pool would not share).
fn in_memory(url: &str) -> bool {
    url.contains(":memory:") || url.contains("mode=memory")
}

/// A fresh SQLite database file for a test, removed (with its WAL) when dropped.
#[cfg(test)]
pub(crate) struct TempDatabase {
    path: std::path::PathBuf,
}

#[cfg(test)]
impl TempDatabase {
    /// A path in the temporary directory no other test uses.
    pub(crate) fn new(prefix: &str) -> Self {
        let path = std::env::temp_dir().join(format!(
            "{prefix}-{}-{}.db",
            std::process::id(),
            rand::random::<u32>()
        ));
        TempDatabase { path }
    }

    /// Its `sqlite://` URL, created on first connect.
    pub(crate) fn url(&self) -> String {
        format!("sqlite://{}?mode=rwc", self.path.display())
    }

    /// The database file.
    pub(crate) fn path(&self) -> &std::path::Path {
        &self.path
    }
}

#[cfg(test)]
impl Drop for TempDatabase {
    fn drop(&mut self) {
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", self.path.display()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The nice value of every thread of this process whose name starts with `prefix`.
    fn nice_of_threads(prefix: &str) -> Vec<i32> {
        std::fs::read_dir("/proc/self/task")
            .unwrap()
            .filter_map(|entry| {
                let entry = entry.ok()?;
                let name = std::fs::read_to_string(entry.path().join("comm")).ok()?;
                let tid = entry.file_name().to_str()?.parse().ok()?;
                name.starts_with(prefix)
                    .then(|| priority::thread_nice(tid))
                    .flatten()
            })
            .collect()
    }

    /// A SQLite connection's thread is named by the store and given the configured nice value
    /// as it opens (a positive one here: raising it needs no privilege).
    #[tokio::test]
    async fn sqlite_connection_threads_get_the_configured_nice_value() {
        let tuning = SqliteTuning {
            fsync_every_commit: false,
            thread_nice: 3,
        };
        let store = Store::connect("sqlite::memory:", 1, tuning).await.unwrap();
        store.ping().await.unwrap();
        let nices = nice_of_threads(priority::SQLITE_THREAD_PREFIX);
        assert!(nices.contains(&3), "{nices:?}");
        store.close().await;
    }

    /// Names of this process's threads.
    fn thread_names() -> Vec<String> {
        std::fs::read_dir("/proc/self/task")
            .unwrap()
            .filter_map(|entry| std::fs::read_to_string(entry.ok()?.path().join("comm")).ok())
            .map(|name| name.trim().to_owned())
            .collect()
    }

    /// A database file's WAL is copied back by the checkpointer's thread, not only past the
    /// automatic checkpoint's mark inside a commit: the file itself grows soon after a batch
    /// that stays far below that mark, with no other batch after it.
    #[tokio::test]
    async fn the_wal_is_copied_back_beside_the_writer() {
        let file = TempDatabase::new("chat-checkpoint");
        let path = file.path();
        let store = Store::connect(&file.url(), 2, SqliteTuning::default())
            .await
            .unwrap();
        let conv = store.pair_conversation(1, 2, true).await.unwrap().unwrap();
        let text = "x".repeat(1000);
        let batch: Vec<_> = (0..500)
            .map(|_| messages::NewMessage {
                sender: 1,
                conv,
                toid: Some(2),
                groupid: None,
                msg: &text,
                txnid: None,
            })
            .collect();
        let before = std::fs::metadata(path).unwrap().len();
        // ~500 KB of messages: ~130 pages, far below WAL_CHECKPOINT_PAGES.
        store.write_batch(&batch, 5).await.unwrap();
        let mut grown = false;
        for _ in 0..200 {
            if std::fs::metadata(path).unwrap().len() >= before + 400_000 {
                grown = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(grown, "the database file never grew past {before} bytes");
        let threads = thread_names();
        assert!(threads.iter().any(|n| n == "chat-wal-copy"), "{threads:?}");
        store.close().await;
    }

    /// A database file gets a writer thread with a connection of its own, besides the pool;
    /// what the writer stores is read through the pool. An in-memory database, which another
    /// connection would not share, writes through its one pool.
    #[tokio::test]
    async fn a_database_file_writes_batches_on_a_connection_of_its_own() {
        let file = TempDatabase::new("chat-writer");
        let store = Store::connect(&file.url(), 4, SqliteTuning::default())
            .await
            .unwrap();
        assert!(store.file_writer.is_some());
        let conv = store.pair_conversation(1, 2, true).await.unwrap().unwrap();
        let message = messages::NewMessage {
            sender: 1,
            conv,
            toid: Some(2),
            groupid: None,
            msg: "hello",
            txnid: None,
        };
        store.write_batch(&[message], 5).await.unwrap();
        // (Named by the thread itself as it starts: looked for once it has written.)
        let writer = format!("{}w", priority::SQLITE_THREAD_PREFIX);
        assert!(
            thread_names().contains(&writer),
            "the writer has a thread of its own"
        );
        let page = store
            .history(conv, crate::protocol::HistoryPage::Newest, 10)
            .await
            .unwrap();
        assert_eq!(page.0.len(), 1);
        assert_eq!(page.0[0].msg, "hello");
        store.close().await;

        let store = Store::connect("sqlite::memory:", 1, SqliteTuning::default())
            .await
            .unwrap();
        assert!(store.file_writer.is_none());
        store.close().await;
    }
}
