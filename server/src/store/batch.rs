//! The transaction a batch of chat messages is written in through sea-orm: MySQL/MariaDB,
//! PostgreSQL and an in-memory SQLite database (a SQLite file's batches go to
//! `super::file_writer`). Statements are built by sea-query; every value is a bound parameter.

use std::collections::HashMap;
use std::sync::Arc;

use sea_orm::sea_query::{Query, UpdateStatement, Value};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseBackend, DatabaseConnection, DatabaseTransaction,
    EntityTrait, QueryFilter, QuerySelect, Statement, TransactionTrait,
};

use super::entities::conversation;
use super::messages::NewMessage;
use crate::error::StoreError;

/// The values of one message row, in the order of [`super::messages::MESSAGE_COLUMNS`].
fn row_values(conv: i64, seq: i64, m: &NewMessage<'_>, now_ms: i64) -> [Value; 8] {
    [
        Value::BigInt(Some(conv)),
        Value::BigInt(Some(seq)),
        Value::BigInt(Some(m.sender)),
        Value::BigInt(m.toid),
        Value::BigInt(m.groupid),
        Value::String(Some(m.msg.to_owned())),
        Value::BigInt(Some(now_ms)),
        Value::String(m.txnid.map(str::to_owned)),
    ]
}

/// An open batch transaction.
pub(super) struct BatchTxn(DatabaseTransaction);

impl BatchTxn {
    /// Begins a transaction on `db`.
    pub(super) async fn begin(db: &DatabaseConnection) -> Result<Self, StoreError> {
        Ok(BatchTxn(db.begin().await?))
    }

    /// Runs `reserve`, the UPDATE that adds each conversation's count to its `last_seq`, and
    /// returns the new `last_seq` of each of `convs` that exists.
    pub(super) async fn reserve(
        &mut self,
        mut reserve: UpdateStatement,
        convs: impl Iterator<Item = i64>,
    ) -> Result<HashMap<i64, i64>, StoreError> {
        let txn = &self.0;
        if txn.get_database_backend() == DatabaseBackend::MySql {
            // No UPDATE … RETURNING: the new last seqs are read back.
            txn.execute(&reserve).await?;
            return Ok(conversation::Entity::find()
                .select_only()
                .column(conversation::Column::Id)
                .column(conversation::Column::LastSeq)
                .filter(conversation::Column::Id.is_in(convs))
                .into_tuple::<(i64, i64)>()
                .all(txn)
                .await?
                .into_iter()
                .collect());
        }
        reserve.returning(
            Query::returning().columns([conversation::Column::Id, conversation::Column::LastSeq]),
        );
        let mut lasts = HashMap::new();
        for row in txn.query_all(&reserve).await? {
            lasts.insert(row.try_get_by_index(0)?, row.try_get_by_index(1)?);
        }
        Ok(lasts)
    }

    /// Inserts `rows` (`(conv, seq, message)`) with `sql`, the multi-row INSERT text of that
    /// many rows; returns the rows inserted (their ids are read back: these databases give
    /// none for a multi-row INSERT).
    pub(super) async fn insert(
        &mut self,
        sql: &Arc<str>,
        rows: &[(i64, i64, &NewMessage<'_>)],
        now_ms: i64,
    ) -> Result<u64, StoreError> {
        let mut values = Vec::with_capacity(rows.len() * 8);
        for &(conv, seq, m) in rows {
            values.extend(row_values(conv, seq, m, now_ms));
        }
        let insert = Statement::from_sql_and_values(self.0.get_database_backend(), &**sql, values);
        Ok(self.0.execute_raw(insert).await?.rows_affected())
    }

    /// The transaction, for the reads made in it.
    pub(super) fn orm(&self) -> &DatabaseTransaction {
        &self.0
    }

    /// Commits.
    pub(super) async fn commit(self) -> Result<(), StoreError> {
        Ok(self.0.commit().await?)
    }
}
