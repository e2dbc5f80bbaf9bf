//! The original server's tables `user`, `friend`, `allgroup`, `groupuser`, with names compared
//! exactly (binary collation on MySQL/MariaDB).

use sea_orm_migration::{prelude::*, schema::*};

use crate::names::{Allgroup, Friend, Groupuser, User};

/// Creates `user`, `friend`, `allgroup` and `groupuser`.
#[derive(DeriveMigrationName)]
pub struct Migration;

/// The collation that compares text byte for byte *including trailing spaces* on
/// MySQL/MariaDB (`utf8mb4_bin` is PAD SPACE there: it would make "bob" and "bob " one name);
/// empty on the other backends, which compare exactly by default.
pub(crate) async fn exact_collation(manager: &SchemaManager<'_>) -> Result<&'static str, DbErr> {
    if manager.get_database_backend() != sea_orm::DatabaseBackend::MySql {
        return Ok("");
    }
    let conn = manager.get_connection();
    let version = conn
        .query_one_raw(sea_orm::Statement::from_string(
            conn.get_database_backend(),
            "SELECT VERSION()",
        ))
        .await?
        .and_then(|row| row.try_get_by_index::<String>(0).ok())
        .unwrap_or_default();
    Ok(if version.contains("MariaDB") {
        "utf8mb4_nopad_bin"
    } else {
        "utf8mb4_0900_bin"
    })
}

/// A `CREATE TABLE` whose text is Unicode and compared exactly, trailing spaces included, on
/// every backend (MySQL/MariaDB: `utf8mb4` with a NO PAD binary collation; SQLite and PostgreSQL
/// compare exactly by default). `collation` comes from [`exact_collation`] on MySQL.
pub(crate) fn create_table(
    manager: &SchemaManager,
    name: impl IntoIden,
    collation: &str,
) -> TableCreateStatement {
    let mut table = Table::create();
    table.table(name).if_not_exists();
    if manager.get_database_backend() == sea_orm::DatabaseBackend::MySql {
        table.character_set("utf8mb4").collate(collation);
    }
    table
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let collation = exact_collation(manager).await?;
        manager
            .create_table(
                create_table(manager, User::Table, collation)
                    .col(big_pk_auto(User::Id))
                    .col(string_len(User::Name, 64).unique_key())
                    .col(string_len(User::Password, 255))
                    .col(string_len(User::State, 16).default("offline"))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                create_table(manager, Friend::Table, collation)
                    .col(big_integer(Friend::Userid))
                    .col(big_integer(Friend::Friendid))
                    .primary_key(Index::create().col(Friend::Userid).col(Friend::Friendid))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                create_table(manager, Allgroup::Table, collation)
                    .col(big_pk_auto(Allgroup::Id))
                    .col(string_len(Allgroup::Groupname, 64).unique_key())
                    .col(string_len(Allgroup::Groupdesc, 200))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                create_table(manager, Groupuser::Table, collation)
                    .col(big_pk_auto(Groupuser::Id))
                    .col(big_integer(Groupuser::Groupid))
                    .col(big_integer(Groupuser::Userid))
                    .col(string_len(Groupuser::Grouprole, 16))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("ux_groupuser_group_user")
                    .table(Groupuser::Table)
                    .col(Groupuser::Groupid)
                    .col(Groupuser::Userid)
                    .unique()
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("ix_groupuser_user")
                    .table(Groupuser::Table)
                    .col(Groupuser::Userid)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in [
            Groupuser::Table.into_iden(),
            Allgroup::Table.into_iden(),
            Friend::Table.into_iden(),
            User::Table.into_iden(),
        ] {
            manager
                .drop_table(Table::drop().table(table).if_exists().to_owned())
                .await?;
        }
        Ok(())
    }
}
