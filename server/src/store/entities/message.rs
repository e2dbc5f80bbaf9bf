//! `message`: every chat message, with its contiguous per-conversation `seq`.

use sea_orm::entity::prelude::*;

/// One stored chat message.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "message")]
pub struct Model {
    /// `message_id` on the wire.
    #[sea_orm(primary_key)]
    pub id: i64,
    /// Conversation it belongs to.
    pub conv: i64,
    /// Position in the conversation, from 1.
    pub seq: i64,
    /// Sender's user id.
    pub sender: i64,
    /// Recipient of a 1:1 message.
    pub toid: Option<i64>,
    /// Group of a group message.
    pub groupid: Option<i64>,
    /// The text.
    #[sea_orm(column_type = "Text")]
    pub msg: String,
    /// Server time, milliseconds since the Unix epoch.
    pub sent_at: i64,
    /// Client's idempotency key, unique per sender.
    pub txnid: Option<String>,
}

/// No relations are navigated through the ORM.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
