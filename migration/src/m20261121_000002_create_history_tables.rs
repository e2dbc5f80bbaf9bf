//! Durable history: `conversation` (seq counters), `message`, `read_cursor`, and
//! `offlinemessage`, the original's table of pending messages per user, now a view derived from
//! the read cursors.

use sea_orm_migration::{prelude::*, schema::*};

use crate::m20261121_000001_create_original_tables::{create_table, exact_collation};
use crate::names::{Conversation, Message, ReadCursor};

/// Creates `conversation`, `message`, `read_cursor` and the `offlinemessage` view.
#[derive(DeriveMigrationName)]
pub struct Migration;

/// Unread messages per user: above the user's cursor, not sent by the user.
const OFFLINEMESSAGE_VIEW: &str = "CREATE VIEW offlinemessage AS \
SELECT CASE WHEN m.sender = c.user_lo THEN c.user_hi ELSE c.user_lo END AS userid, \
       m.id AS message_id, m.msg AS message \
FROM message m JOIN conversation c ON c.id = m.conv \
WHERE c.groupid IS NULL AND c.user_lo <> c.user_hi \
  AND m.seq > COALESCE((SELECT r.seq FROM read_cursor r \
      WHERE r.conv = c.id AND r.userid = CASE WHEN m.sender = c.user_lo THEN c.user_hi ELSE c.user_lo END), 0) \
UNION ALL \
SELECT g.userid AS userid, m.id AS message_id, m.msg AS message \
FROM message m JOIN conversation c ON c.id = m.conv \
JOIN groupuser g ON g.groupid = c.groupid \
LEFT JOIN read_cursor r ON r.conv = c.id AND r.userid = g.userid \
WHERE m.sender <> g.userid AND m.seq > COALESCE(r.seq, 0)";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let collation = exact_collation(manager).await?;
        manager
            .create_table(
                create_table(manager, Conversation::Table, collation)
                    .col(big_pk_auto(Conversation::Id))
                    .col(big_integer_null(Conversation::UserLo))
                    .col(big_integer_null(Conversation::UserHi))
                    .col(big_integer_null(Conversation::Groupid))
                    .col(big_integer(Conversation::LastSeq).default(0))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("ux_conversation_pair")
                    .table(Conversation::Table)
                    .col(Conversation::UserLo)
                    .col(Conversation::UserHi)
                    .unique()
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("ix_conversation_hi")
                    .table(Conversation::Table)
                    .col(Conversation::UserHi)
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("ux_conversation_group")
                    .table(Conversation::Table)
                    .col(Conversation::Groupid)
                    .unique()
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                create_table(manager, Message::Table, collation)
                    .col(big_pk_auto(Message::Id))
                    .col(big_integer(Message::Conv))
                    .col(big_integer(Message::Seq))
                    .col(big_integer(Message::Sender))
                    .col(big_integer_null(Message::Toid))
                    .col(big_integer_null(Message::Groupid))
                    .col(text(Message::Msg))
                    .col(big_integer(Message::SentAt))
                    .col(string_len_null(Message::Txnid, 64))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("ux_message_conv_seq")
                    .table(Message::Table)
                    .col(Message::Conv)
                    .col(Message::Seq)
                    .unique()
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("ux_message_sender_txnid")
                    .table(Message::Table)
                    .col(Message::Sender)
                    .col(Message::Txnid)
                    .unique()
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                create_table(manager, ReadCursor::Table, collation)
                    .col(big_integer(ReadCursor::Userid))
                    .col(big_integer(ReadCursor::Conv))
                    .col(big_integer(ReadCursor::Seq).default(0))
                    .primary_key(
                        Index::create()
                            .col(ReadCursor::Userid)
                            .col(ReadCursor::Conv),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .get_connection()
            .execute_unprepared(OFFLINEMESSAGE_VIEW)
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared("DROP VIEW IF EXISTS offlinemessage")
            .await?;
        for table in [
            ReadCursor::Table.into_iden(),
            Message::Table.into_iden(),
            Conversation::Table.into_iden(),
        ] {
            manager
                .drop_table(Table::drop().table(table).if_exists().to_owned())
                .await?;
        }
        Ok(())
    }
}
