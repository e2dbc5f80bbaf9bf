//! `conversation`: one row per 1:1 pair (`user_lo` < or = `user_hi`) or per group, holding the
//! last `seq` assigned in it.

use sea_orm::entity::prelude::*;

/// A conversation and its seq counter.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "conversation")]
pub struct Model {
    /// Conversation id (internal).
    #[sea_orm(primary_key)]
    pub id: i64,
    /// The smaller user id of a 1:1 pair.
    pub user_lo: Option<i64>,
    /// The larger user id of a 1:1 pair.
    pub user_hi: Option<i64>,
    /// The group of a group conversation.
    pub groupid: Option<i64>,
    /// The highest seq assigned so far (0: no message yet).
    pub last_seq: i64,
}

/// No relations are navigated through the ORM.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
