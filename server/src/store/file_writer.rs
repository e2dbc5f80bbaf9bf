//! SQLite's chat batches, written on a thread of their own that holds the database file's
//! writing connection (rusqlite, synchronous). A batch crosses to that thread once and its
//! outcome comes back once; through sqlx every statement of a batch (BEGIN, the seq
//! reservation, each multi-row INSERT, COMMIT) was a hand-off to sqlx's connection thread and
//! back, and each row's values were first copied into sqlx's argument list on the runtime.
//! Here each row's values are bound straight into SQLite's statement. The statements are
//! sea-query's; every value is a bound parameter.

use std::path::Path;
use std::sync::{LazyLock, mpsc};
use std::time::Duration;

use rusqlite::{Connection, ToSql, TransactionBehavior};
use sea_orm::sea_query::{Expr, ExprTrait, Query, SqliteQueryBuilder};
use sea_orm::{DatabaseBackend, DbErr};
use tokio::sync::oneshot;

use super::checkpointer;
use super::entities::conversation;
use super::messages::{INSERT_CHUNK, InsertTexts, insert_sql};
use super::{SqliteTuning, WAL_CHECKPOINT_PAGES};
use crate::error::StoreError;
use crate::priority;

/// One message of a batch, owned: it crosses to the writer's thread.
#[derive(Debug)]
pub(super) struct Row {
    /// Sender.
    pub sender: i64,
    /// Recipient of a 1:1 message.
    pub toid: Option<i64>,
    /// Group of a group message.
    pub groupid: Option<i64>,
    /// Text.
    pub msg: String,
    /// Idempotency key.
    pub txnid: Option<String>,
}

/// A batch: its rows grouped by conversation, each conversation's rows in order.
#[derive(Debug)]
pub(super) struct Batch {
    /// Each conversation of the batch and how many of `rows` (consecutive) are its.
    pub convs: Vec<(i64, usize)>,
    /// The rows, conversation after conversation, in the order of `convs`.
    pub rows: Vec<Row>,
    /// The time every message of the batch is stored with.
    pub now_ms: i64,
}

/// What became of a batch: each conversation's new last seq (`None`: it no longer exists and
/// its rows were not stored) and, for each stored row in order, its id. The rows come back
/// too, so that their text need not be copied again.
#[derive(Debug)]
pub(super) struct Outcome {
    /// New last seq per conversation of the batch, in the order of `Batch::convs`.
    pub lasts: Vec<Option<i64>>,
    /// Ids of the stored rows, in order (rows of a conversation that is gone have none).
    pub ids: Vec<i64>,
    /// The batch's rows, handed back.
    pub rows: Vec<Row>,
}

struct Job {
    batch: Batch,
    done: oneshot::Sender<Result<Outcome, StoreError>>,
}

/// Handle to the writer's thread, cheap to clone; the thread ends (closing its connection)
/// once every handle is dropped.
#[derive(Clone)]
pub(super) struct FileWriter {
    jobs: mpsc::Sender<Job>,
}

impl FileWriter {
    /// Opens the writing connection to the database file at `path` (already created and
    /// migrated by the pool) on a thread of its own, taking its INSERT texts from `texts`.
    pub(super) fn open(
        path: &Path,
        tuning: SqliteTuning,
        texts: InsertTexts,
    ) -> anyhow::Result<Self> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(Duration::from_secs(10))?;
        conn.pragma_update(None, "journal_mode", "wal")?;
        let synchronous = if tuning.fsync_every_commit {
            "full"
        } else {
            "normal"
        };
        conn.pragma_update(None, "synchronous", synchronous)?;
        conn.pragma_update(None, "foreign_keys", "off")?;
        conn.pragma_update(None, "wal_autocheckpoint", WAL_CHECKPOINT_PAGES)?;
        // Full chunks, the remainders and the seq reservations of as many conversation counts.
        conn.set_prepared_statement_cache_capacity(128);
        let checkpointer = checkpointer::start(path, synchronous)?;
        let (jobs, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name(format!("{}w", priority::SQLITE_THREAD_PREFIX))
            .spawn(move || {
                // Ends with this thread, once every handle is dropped.
                let checkpointer = checkpointer;
                if tuning.thread_nice != 0 {
                    super::prioritise_sqlite_threads(tuning.thread_nice);
                }
                let mut conn = conn;
                let mut next = rx.recv().ok();
                while let Some(job) = next {
                    let outcome = write(&mut conn, &texts, job.batch);
                    let _ = job.done.send(outcome);
                    // No batch waiting: the checkpointer's cue to copy the WAL back now.
                    next = match rx.try_recv() {
                        Ok(job) => Some(job),
                        Err(mpsc::TryRecvError::Empty) => {
                            checkpointer.writer_idle();
                            rx.recv().ok()
                        }
                        Err(mpsc::TryRecvError::Disconnected) => None,
                    };
                }
            })?;
        Ok(FileWriter { jobs })
    }

    /// Stores `batch` in one transaction.
    pub(super) async fn write(&self, batch: Batch) -> Result<Outcome, StoreError> {
        let (done, outcome) = oneshot::channel();
        self.jobs
            .send(Job { batch, done })
            .map_err(|_| gone("the SQLite writer thread is gone"))?;
        outcome
            .await
            .map_err(|_| gone("the SQLite writer thread stopped"))?
    }
}

fn gone(why: &str) -> StoreError {
    StoreError::Unavailable(DbErr::Custom(why.into()))
}

/// The seq reservation of one conversation: adds `?1` to its last seq and returns the new
/// one (`?2`: the conversation's id). One text for every batch, prepared once: a statement
/// reserving every conversation of a batch at once (one `CASE` branch per conversation) had a
/// text per number of conversations, built by sea-query for each batch, too many to stay
/// prepared, and its `CASE` compared each row with every branch.
static RESERVE_ONE: LazyLock<String> = LazyLock::new(|| {
    Query::update()
        .table(conversation::Entity)
        .value(
            conversation::Column::LastSeq,
            Expr::col(conversation::Column::LastSeq).add(0i64),
        )
        .and_where(Expr::col(conversation::Column::Id).eq(0i64))
        .returning(Query::returning().column(conversation::Column::LastSeq))
        .build(SqliteQueryBuilder)
        .0
});

/// Largest INSERT of the writer: a power of two (see [`insert_chunks`]), and at most
/// `INSERT_CHUNK` rows, the longest text `insert_sql` keeps.
const SHAPE_MAX: usize = 256;
const _: () = assert!(SHAPE_MAX.is_power_of_two() && SHAPE_MAX <= INSERT_CHUNK);

/// `rows` cut into the row lists of a SQLite file's batch INSERTs: `SHAPE_MAX` rows while that
/// many remain, then the largest power of two that fits, so that every statement has one of
/// nine shapes. The writer's connection caches its prepared statements by text; with a text for
/// every count up to `INSERT_CHUNK` (batch sizes vary from one batch to the next) the cache kept
/// missing, and SQLite parsed an INSERT of hundreds of parameters for most batches (9 % of the
/// writer thread's time at 50,000 messages a second). A statement here costs no round trip.
fn insert_chunks<T>(rows: &[T]) -> impl Iterator<Item = &[T]> {
    let mut rest = rows;
    std::iter::from_fn(move || {
        let n = rest.len().min(SHAPE_MAX);
        if n == 0 {
            return None;
        }
        let (chunk, tail) = rest.split_at(1 << n.ilog2());
        rest = tail;
        Some(chunk)
    })
}

/// Runs one batch in a transaction that takes the write lock up front: reserves the seqs of
/// each conversation of the batch ([`RESERVE_ONE`]), inserts the rows of the conversations
/// that exist in multi-row INSERTs ([`insert_chunks`]), commits. Any error rolls the whole batch
/// back.
fn write(conn: &mut Connection, texts: &InsertTexts, batch: Batch) -> Result<Outcome, StoreError> {
    let Batch {
        convs,
        rows,
        now_ms,
    } = batch;
    let txn = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(classify)?;
    // Each conversation's new last seq (`None`: it is gone), then (conv, seq, row) of every
    // row to insert.
    let mut lasts = Vec::with_capacity(convs.len());
    {
        let mut reserve = txn.prepare_cached(&RESERVE_ONE).map_err(classify)?;
        for &(conv, count) in &convs {
            reserve
                .raw_bind_parameter(1, count as i64)
                .map_err(classify)?;
            reserve.raw_bind_parameter(2, conv).map_err(classify)?;
            let mut returned = reserve.raw_query();
            let last = match returned.next().map_err(classify)? {
                Some(row) => Some(row.get::<_, i64>(0).map_err(classify)?),
                None => None,
            };
            lasts.push(last);
        }
    }
    let mut placed = Vec::with_capacity(rows.len());
    let mut at = 0;
    for (&(conv, count), &last) in convs.iter().zip(&lasts) {
        if let Some(last) = last {
            let first = last - count as i64 + 1;
            placed.extend(
                (first..)
                    .zip(&rows[at..at + count])
                    .map(|(seq, row)| (conv, seq, row)),
            );
        }
        at += count;
    }
    let mut ids = Vec::with_capacity(placed.len());
    for chunk in insert_chunks(&placed) {
        let mut insert = txn
            .prepare_cached(&insert_sql(texts, DatabaseBackend::Sqlite, chunk.len()))
            .map_err(classify)?;
        let mut index = 1;
        for &(conv, seq, row) in chunk {
            let values: [&dyn ToSql; 8] = [
                &conv,
                &seq,
                &row.sender,
                &row.toid,
                &row.groupid,
                &row.msg,
                &now_ms,
                &row.txnid,
            ];
            for value in values {
                insert.raw_bind_parameter(index, value).map_err(classify)?;
                index += 1;
            }
        }
        let inserted = insert.raw_execute().map_err(classify)?;
        if inserted != chunk.len() {
            return Err(StoreError::Other(DbErr::Custom(format!(
                "inserted {inserted} of {} messages",
                chunk.len()
            ))));
        }
        // The writer holds the database's only write lock: the rows of one INSERT get
        // consecutive rowids, ending at the last one assigned.
        let last = txn.last_insert_rowid();
        ids.extend((0..chunk.len() as i64).rev().map(|k| last - k));
    }
    txn.commit().map_err(classify)?;
    Ok(Outcome { lasts, ids, rows })
}

/// A rusqlite error as the store's errors are classified: a unique key broken is a duplicate
/// (the pipeline retries those), a busy or locked database a conflict.
fn classify(e: rusqlite::Error) -> StoreError {
    use rusqlite::ffi::ErrorCode;
    let code = e.sqlite_error().map(|f| (f.code, f.extended_code));
    let err = DbErr::Custom(e.to_string());
    match code {
        Some((ErrorCode::ConstraintViolation, rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE))
        | Some((ErrorCode::ConstraintViolation, rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY)) => {
            StoreError::Duplicate(err)
        }
        Some((ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked, _)) => StoreError::Conflict(err),
        Some((ErrorCode::CannotOpen | ErrorCode::SystemIoFailure | ErrorCode::DiskFull, _)) => {
            StoreError::Unavailable(err)
        }
        _ => StoreError::Other(err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A SQLite file's batch of any size is cut into INSERTs of nine shapes at most, in order,
    /// losing no row.
    #[test]
    fn a_batch_is_inserted_in_statements_of_few_shapes() {
        let mut shapes = std::collections::BTreeSet::new();
        for n in 0..=3 * SHAPE_MAX + 7 {
            let rows: Vec<usize> = (0..n).collect();
            let chunks: Vec<&[usize]> = insert_chunks(&rows).collect();
            assert_eq!(chunks.concat(), rows, "{n} rows, in order");
            assert!(
                chunks.len() <= n / SHAPE_MAX + 8,
                "{n} rows: {} INSERTs",
                chunks.len()
            );
            shapes.extend(chunks.iter().map(|c| c.len()));
        }
        let shapes: Vec<usize> = shapes.into_iter().collect();
        assert_eq!(shapes, [1, 2, 4, 8, 16, 32, 64, 128, 256]);
    }

    /// The reservation's parameters are bound by position: the count first, the conversation
    /// second (sea-query writes the SET values before the WHERE ones), and it returns the new
    /// last seq of that conversation alone.
    #[test]
    fn a_reservation_adds_its_count_to_its_conversation_only() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "CREATE TABLE conversation (id INTEGER PRIMARY KEY, last_seq INTEGER NOT NULL);
             INSERT INTO conversation VALUES (3, 0), (7, 10);",
        )
        .unwrap();
        let last: i64 = conn
            .query_row(&RESERVE_ONE, (4i64, 7i64), |row| row.get(0))
            .unwrap();
        assert_eq!(last, 14);
        let untouched: i64 = conn
            .query_row(
                "SELECT last_seq FROM conversation WHERE id = 3",
                [],
                |row| row.get(0),
            )
            .unwrap();
        assert_eq!(untouched, 0);
        let gone = conn.query_row(&RESERVE_ONE, (1i64, 99i64), |row| row.get::<_, i64>(0));
        assert!(matches!(gone, Err(rusqlite::Error::QueryReturnedNoRows)));
    }
}
