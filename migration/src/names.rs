//! Table and column names, shared by the migrations.

use sea_orm_migration::prelude::*;

/// `user`: one row per account (the original's table; `password` holds an argon2 hash).
#[derive(DeriveIden)]
pub enum User {
    Table,
    Id,
    Name,
    Password,
    State,
}

/// `friend`: one row per direction of a (symmetric) friendship.
#[derive(DeriveIden)]
pub enum Friend {
    Table,
    Userid,
    Friendid,
}

/// `allgroup`: one row per group.
#[derive(DeriveIden)]
pub enum Allgroup {
    Table,
    Id,
    Groupname,
    Groupdesc,
}

/// `groupuser`: membership; `id` orders members by join time.
#[derive(DeriveIden)]
pub enum Groupuser {
    Table,
    Id,
    Groupid,
    Userid,
    Grouprole,
}

/// `conversation`: one per 1:1 pair or group, holding the last assigned `seq`.
#[derive(DeriveIden)]
pub enum Conversation {
    Table,
    Id,
    UserLo,
    UserHi,
    Groupid,
    LastSeq,
}

/// `message`: every chat message, with its per-conversation `seq`.
#[derive(DeriveIden)]
pub enum Message {
    Table,
    Id,
    Conv,
    Seq,
    Sender,
    Toid,
    Groupid,
    Msg,
    SentAt,
    Txnid,
}

/// `read_cursor`: per user and conversation, the highest `seq` read.
#[derive(DeriveIden)]
pub enum ReadCursor {
    Table,
    Userid,
    Conv,
    Seq,
}

/// `session_token`: resume tokens by hash.
#[derive(DeriveIden)]
pub enum SessionToken {
    Table,
    TokenHash,
    Userid,
    ExpiresAt,
}
