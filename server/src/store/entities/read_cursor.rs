//! `read_cursor`: per user and conversation, everything up to `seq` is read.

use sea_orm::entity::prelude::*;

/// A user's read position in one conversation.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "read_cursor")]
pub struct Model {
    /// The reader.
    #[sea_orm(primary_key, auto_increment = false)]
    pub userid: i64,
    /// The conversation.
    #[sea_orm(primary_key, auto_increment = false)]
    pub conv: i64,
    /// Highest seq read.
    pub seq: i64,
}

/// No relations are navigated through the ORM.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
