//! `session_token`: resume tokens, stored as SHA-256 hex, expiring.

use sea_orm::entity::prelude::*;

/// One resume token.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "session_token")]
pub struct Model {
    /// SHA-256 of the token, hex.
    #[sea_orm(primary_key, auto_increment = false)]
    pub token_hash: String,
    /// The user it logs in.
    pub userid: i64,
    /// Expiry, milliseconds since the Unix epoch.
    pub expires_at: i64,
}

/// No relations are navigated through the ORM.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
