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
use std::sync::{Arc, Mutex};
use std::time::Duration;

use migration::{Migrator, MigratorTrait};
use sea_orm::sqlx::Executor;
use sea_orm::{ConnectOptions, Database, DatabaseBackend, DatabaseConnection};

use crate::error::StoreError;

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

impl Store {
    /// Connects to `url` and brings the schema up to date. `fsync_every_commit` is SQLite's
    /// `synchronous=FULL` (else `NORMAL`, still in WAL mode).
    pub async fn connect(url: &str, pool: u32, fsync_every_commit: bool) -> anyhow::Result<Self> {
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
        let synchronous = if fsync_every_commit {
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
        });
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
