//! `session_token`: resume tokens (only their SHA-256 is stored), expiring, revoked at logout.

use sea_orm_migration::{prelude::*, schema::*};

use crate::m20261121_000001_create_original_tables::{create_table, exact_collation};
use crate::names::SessionToken;

/// Creates `session_token`.
#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let collation = exact_collation(manager).await?;
        manager
            .create_table(
                create_table(manager, SessionToken::Table, collation)
                    .col(string_len(SessionToken::TokenHash, 64).primary_key())
                    .col(big_integer(SessionToken::Userid))
                    .col(big_integer(SessionToken::ExpiresAt))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("ix_session_token_user")
                    .table(SessionToken::Table)
                    .col(SessionToken::Userid)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(
                Table::drop()
                    .table(SessionToken::Table)
                    .if_exists()
                    .to_owned(),
            )
            .await
    }
}
