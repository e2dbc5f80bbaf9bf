//! The transaction a batch of chat messages is written in. MySQL/MariaDB and PostgreSQL go
//! through sea-orm; SQLite goes through sqlx itself, on the writer's own connection, and binds
//! each row's values straight into sqlx's arguments: on its way to sqlx, sea-orm copies every
//! value of a statement twice (into sea-query's values, then into sqlx's), and for the
//! thousands of values of a batch those copies cost the writer more than its own work.
//! Statements are built by sea-query either way; every value is a bound parameter.

use std::collections::HashMap;
use std::sync::Arc;

use sea_orm::sea_query::{Query, SqliteQueryBuilder, UpdateStatement, Value};
use sea_orm::sqlx::sqlite::SqliteArguments;
use sea_orm::sqlx::{self, Arguments, AssertSqlSafe, Row, Sqlite};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseBackend, DatabaseConnection, DatabaseTransaction, DbErr,
    EntityTrait, QueryFilter, QuerySelect, Statement, TransactionTrait,
};
use sea_query_sqlx::SqlxValues;

use super::entities::conversation;
use super::messages::NewMessage;
use crate::error::StoreError;

/// One value of a message row.
enum RowValue<'a> {
    Int(Option<i64>),
    Text(Option<&'a str>),
}

/// The values of one message row, in the order of [`super::messages::MESSAGE_COLUMNS`].
fn row_values<'a>(conv: i64, seq: i64, m: &NewMessage<'a>, now_ms: i64) -> [RowValue<'a>; 8] {
    [
        RowValue::Int(Some(conv)),
        RowValue::Int(Some(seq)),
        RowValue::Int(Some(m.sender)),
        RowValue::Int(m.toid),
        RowValue::Int(m.groupid),
        RowValue::Text(Some(m.msg)),
        RowValue::Int(Some(now_ms)),
        RowValue::Text(m.txnid),
    ]
}

/// An open batch transaction.
pub(super) enum BatchTxn {
    /// MySQL/MariaDB or PostgreSQL, through sea-orm.
    Orm(DatabaseTransaction),
    /// SQLite, through sqlx.
    Sqlite(sqlx::Transaction<'static, Sqlite>),
}

impl BatchTxn {
    /// Begins a transaction on `writer` (on SQLite, sqlx's own on the same pool).
    pub(super) async fn begin(writer: &DatabaseConnection) -> Result<Self, StoreError> {
        if writer.get_database_backend() == DatabaseBackend::Sqlite {
            let txn = writer.get_sqlite_connection_pool().begin().await?;
            Ok(BatchTxn::Sqlite(txn))
        } else {
            Ok(BatchTxn::Orm(writer.begin().await?))
        }
    }

    /// Runs `reserve`, the UPDATE that adds each conversation's count to its `last_seq`, and
    /// returns the new `last_seq` of each of `convs` that exists.
    pub(super) async fn reserve(
        &mut self,
        mut reserve: UpdateStatement,
        convs: impl Iterator<Item = i64>,
    ) -> Result<HashMap<i64, i64>, StoreError> {
        let returning =
            Query::returning().columns([conversation::Column::Id, conversation::Column::LastSeq]);
        match self {
            BatchTxn::Sqlite(txn) => {
                let (sql, values) = reserve.returning(returning).build(SqliteQueryBuilder);
                let rows = sqlx::query_with(AssertSqlSafe(sql), SqlxValues(values))
                    .fetch_all(&mut **txn)
                    .await?;
                let mut lasts = HashMap::with_capacity(rows.len());
                for row in rows {
                    lasts.insert(row.try_get(0)?, row.try_get(1)?);
                }
                Ok(lasts)
            }
            BatchTxn::Orm(txn) if txn.get_database_backend() == DatabaseBackend::MySql => {
                // No UPDATE … RETURNING: the new last seqs are read back.
                txn.execute(&reserve).await?;
                Ok(conversation::Entity::find()
                    .select_only()
                    .column(conversation::Column::Id)
                    .column(conversation::Column::LastSeq)
                    .filter(conversation::Column::Id.is_in(convs))
                    .into_tuple::<(i64, i64)>()
                    .all(&*txn)
                    .await?
                    .into_iter()
                    .collect())
            }
            BatchTxn::Orm(txn) => {
                reserve.returning(returning);
                let mut lasts = HashMap::new();
                for row in txn.query_all(&reserve).await? {
                    lasts.insert(row.try_get_by_index(0)?, row.try_get_by_index(1)?);
                }
                Ok(lasts)
            }
        }
    }

    /// Inserts `rows` (`(conv, seq, message)`) with `sql`, the multi-row INSERT text of that
    /// many rows; returns the rows inserted and, on SQLite, the last rowid assigned (the
    /// others give no such id for a multi-row INSERT: theirs are read back).
    pub(super) async fn insert(
        &mut self,
        sql: &Arc<str>,
        rows: &[(i64, i64, &NewMessage<'_>)],
        now_ms: i64,
    ) -> Result<(u64, Option<i64>), StoreError> {
        let done = match self {
            BatchTxn::Sqlite(txn) => {
                let mut args = SqliteArguments::default();
                args.reserve(rows.len() * 8, 0);
                for &(conv, seq, m) in rows {
                    for value in row_values(conv, seq, m, now_ms) {
                        match value {
                            RowValue::Int(v) => args.add(v),
                            RowValue::Text(v) => args.add(v),
                        }
                        .map_err(|e| StoreError::Other(DbErr::Custom(e.to_string())))?;
                    }
                }
                let done = sqlx::query_with(AssertSqlSafe(&**sql), args)
                    .execute(&mut **txn)
                    .await?;
                (done.rows_affected(), Some(done.last_insert_rowid()))
            }
            BatchTxn::Orm(txn) => {
                let mut values = Vec::with_capacity(rows.len() * 8);
                for &(conv, seq, m) in rows {
                    values.extend(row_values(conv, seq, m, now_ms).map(|value| match value {
                        RowValue::Int(v) => Value::BigInt(v),
                        RowValue::Text(v) => Value::String(v.map(str::to_owned)),
                    }));
                }
                let backend = txn.get_database_backend();
                let insert = Statement::from_sql_and_values(backend, &**sql, values);
                (txn.execute_raw(insert).await?.rows_affected(), None)
            }
        };
        Ok(done)
    }

    /// The sea-orm transaction, for the reads that only the other databases need.
    pub(super) fn orm(&self) -> Option<&DatabaseTransaction> {
        match self {
            BatchTxn::Orm(txn) => Some(txn),
            BatchTxn::Sqlite(_) => None,
        }
    }

    /// Commits.
    pub(super) async fn commit(self) -> Result<(), StoreError> {
        match self {
            BatchTxn::Orm(txn) => txn.commit().await?,
            BatchTxn::Sqlite(txn) => txn.commit().await?,
        }
        Ok(())
    }
}
