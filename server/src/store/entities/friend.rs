//! `friend`: one row per direction of a symmetric friendship.

use sea_orm::entity::prelude::*;

/// `userid` has `friendid` as a friend.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "friend")]
pub struct Model {
    /// The user whose friend list holds the row.
    #[sea_orm(primary_key, auto_increment = false)]
    pub userid: i64,
    /// The friend.
    #[sea_orm(primary_key, auto_increment = false)]
    pub friendid: i64,
}

/// No relations are navigated through the ORM.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
