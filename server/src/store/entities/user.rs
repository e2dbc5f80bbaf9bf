//! `user`: accounts. `password` is an argon2 PHC string; `state` is informational only
//! (presence comes from the presence layer).

use sea_orm::entity::prelude::*;

/// One account.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "user")]
pub struct Model {
    /// User id, as in the original.
    #[sea_orm(primary_key)]
    pub id: i64,
    /// Unique name, compared exactly.
    pub name: String,
    /// argon2 hash of the password.
    pub password: String,
    /// "online" / "offline", last transition seen by any replica (not authoritative).
    pub state: String,
}

/// No relations are navigated through the ORM.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
