//! The clusterchat schema, as sea-orm migrations: the original server's five tables, then the
//! tables that durable history needs, then a partial index. Every migration has a `down`.

pub use sea_orm_migration::prelude::*;

mod m20261121_000001_create_original_tables;
mod m20261121_000002_create_history_tables;
mod m20261121_000003_create_session_token;
mod m20261121_000004_partial_txnid_index;
mod names;

/// Runs every migration in order.
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261121_000001_create_original_tables::Migration),
            Box::new(m20261121_000002_create_history_tables::Migration),
            Box::new(m20261121_000003_create_session_token::Migration),
            Box::new(m20261121_000004_partial_txnid_index::Migration),
        ]
    }
}
