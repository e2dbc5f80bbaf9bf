//! The store: sea-orm entities and the queries of the service layer (the original's "model"
//! layer). SQLite, MySQL/MariaDB and PostgreSQL share one code path, chosen by the URL scheme.
//!
//! - [`accounts`]: users and friendships.
//! - [`groups`]: groups and membership.
//! - [`messages`]: conversations, batched message writes, history, read cursors, unread.
//! - `packed`: reads of many rows, packed by SQLite into one JSON value.

pub mod accounts;
pub mod entities;
pub mod groups;
pub mod messages;
mod packed;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use migration::{Migrator, MigratorTrait};
use sea_orm::sqlx::Executor;
use sea_orm::{ConnectOptions, Database, DatabaseBackend, DatabaseConnection};

use crate::error::StoreError;
use crate::priority::{self, PriorityError};

/// Handle to the database, cheap to clone. Also caches what never changes once written: user
/// names, the conversation id of each 1:1 pair, and the text of the writer's INSERTs.
#[derive(Clone)]
pub struct Store {
    /// The connection pool.
    db: DatabaseConnection,
    /// user id → name (names never change, users are never deleted).
    names: Arc<Mutex<HashMap<i64, Arc<str>>>>,
    /// (smaller user id, larger user id) → conversation id.
    pairs: Arc<Mutex<HashMap<(i64, i64), i64>>>,
    /// Number of rows → text of the multi-row message INSERT (`messages::insert_sql`).
    inserts: Arc<Mutex<HashMap<usize, Arc<str>>>>,
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
                .thread_name(|id| format!("{}{id}", priority::SQLITE_THREAD_PREFIX))
        });
        if sqlite.thread_nice != 0 {
            let nice = sqlite.thread_nice;
            opts.map_sqlx_sqlite_pool_opts(move |pool| {
                pool.after_connect(move |_, _| {
                    Box::pin(async move {
                        prioritise_sqlite_threads(nice);
                        Ok(())
                    })
                })
            });
        }
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
        Ok(Store {
            db,
            names: Arc::default(),
            pairs: Arc::default(),
            inserts: Arc::default(),
        })
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
}
