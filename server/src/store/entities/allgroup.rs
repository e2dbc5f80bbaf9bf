//! `allgroup`: chat groups.

use sea_orm::entity::prelude::*;

/// One group.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "allgroup")]
pub struct Model {
    /// Group id, never reused.
    #[sea_orm(primary_key)]
    pub id: i64,
    /// Unique name, compared exactly.
    pub groupname: String,
    /// Free description, at most 200 code points.
    pub groupdesc: String,
}

/// No relations are navigated through the ORM.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
