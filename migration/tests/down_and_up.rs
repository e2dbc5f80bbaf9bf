//! Every migration's `down` undoes its `up`: the schema goes all the way down and up again on
//! a real SQLite file, and the partial txnid index keeps refusing a reused txnid while letting
//! any number of messages without one in.

use migration::{Migrator, MigratorTrait};
use sea_orm::{ConnectionTrait, Database, DbBackend, Statement};

async fn insert(db: &impl ConnectionTrait, seq: i64, txnid: Option<&str>) -> bool {
    db.execute_raw(Statement::from_sql_and_values(
        DbBackend::Sqlite,
        "INSERT INTO message (conv, seq, sender, msg, sent_at, txnid) VALUES (1, ?, 7, 'm', 0, ?)",
        [seq.into(), txnid.map(str::to_owned).into()],
    ))
    .await
    .is_ok()
}

#[tokio::test]
async fn the_schema_goes_down_and_up_again() {
    let path = std::env::temp_dir().join(format!("migration-test-{}.db", std::process::id()));
    let url = format!("sqlite://{}?mode=rwc", path.display());
    let db = Database::connect(&url).await.expect("sqlite opens");
    Migrator::up(&db, None).await.expect("up");
    let sql = db
        .query_one_raw(Statement::from_string(
            DbBackend::Sqlite,
            "SELECT sql FROM sqlite_master WHERE name = 'ux_message_sender_txnid'",
        ))
        .await
        .expect("the index")
        .and_then(|row| row.try_get_by_index::<String>(0).ok())
        .unwrap_or_default();
    assert!(sql.contains("WHERE"), "a partial index: {sql}");
    assert!(insert(&db, 1, None).await);
    assert!(
        insert(&db, 2, None).await,
        "messages without txnid never collide"
    );
    assert!(insert(&db, 3, Some("t1")).await);
    assert!(
        !insert(&db, 4, Some("t1")).await,
        "a reused txnid is refused"
    );
    // The txnid lookup of the message writer still finds its rows through the index.
    let plan = db
        .query_all_raw(Statement::from_sql_and_values(
            DbBackend::Sqlite,
            "EXPLAIN QUERY PLAN SELECT id FROM message WHERE sender = ? AND txnid = ?",
            [7i64.into(), "t1".into()],
        ))
        .await
        .expect("a plan");
    let plan: Vec<String> = plan
        .iter()
        .map(|row| row.try_get_by_index::<String>(3).unwrap_or_default())
        .collect();
    assert!(
        plan.iter()
            .any(|step| step.contains("ux_message_sender_txnid")),
        "{plan:?}"
    );

    Migrator::down(&db, None).await.expect("down");
    let tables = db
        .query_all_raw(Statement::from_string(
            DbBackend::Sqlite,
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'seaql_%' AND name NOT LIKE 'sqlite_%'",
        ))
        .await
        .expect("listing tables");
    assert!(tables.is_empty(), "down leaves no table behind");

    Migrator::up(&db, None).await.expect("up again");
    assert!(insert(&db, 1, Some("t1")).await);
    assert!(!insert(&db, 2, Some("t1")).await);
    db.close().await.expect("close");
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
}
