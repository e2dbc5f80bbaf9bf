//! `ux_message_sender_txnid` only over the messages that carry a txnid, where the database has
//! partial indexes (SQLite, PostgreSQL; MySQL/MariaDB keep the full index): most messages have
//! none, and every index a message goes into costs pages in each commit.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::{ConnectionTrait, DbBackend, TransactionTrait};

use crate::names::Message;

const NAME: &str = "ux_message_sender_txnid";

/// Rebuilds `ux_message_sender_txnid` as a partial index.
#[derive(DeriveMigrationName)]
pub struct Migration;

/// The index over (sender, txnid): only where txnid is set when `partial`.
fn index(partial: bool) -> IndexCreateStatement {
    let mut index = Index::create();
    index
        .name(NAME)
        .table(Message::Table)
        .col(Message::Sender)
        .col(Message::Txnid)
        .unique();
    if partial {
        index.and_where(Expr::col(Message::Txnid).is_not_null());
    }
    index.to_owned()
}

/// Drops and creates the index in one transaction: on one connection, so that SQLite's other
/// pooled connections, whose cached schema still shows the old index, never create it.
async fn rebuild(manager: &SchemaManager<'_>, partial: bool) -> Result<(), DbErr> {
    let backend = manager.get_database_backend();
    if backend == DbBackend::MySql {
        return Ok(());
    }
    let txn = manager.get_connection().begin().await?;
    txn.execute(&Index::drop().name(NAME).table(Message::Table).to_owned())
        .await?;
    txn.execute(&index(partial)).await?;
    txn.commit().await
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        rebuild(manager, true).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        rebuild(manager, false).await
    }
}
