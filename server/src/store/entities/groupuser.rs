//! `groupuser`: group membership; `id` orders members by join time.

use sea_orm::entity::prelude::*;

/// `userid` is a member of `groupid` with `grouprole` "creator" or "normal".
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "groupuser")]
pub struct Model {
    /// Join order.
    #[sea_orm(primary_key)]
    pub id: i64,
    /// The group.
    pub groupid: i64,
    /// The member.
    pub userid: i64,
    /// "creator" or "normal".
    pub grouprole: String,
}

/// No relations are navigated through the ORM.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
