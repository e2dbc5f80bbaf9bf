//! Groups and membership. Every write transaction starts with a write on the group's
//! conversation row, which serializes changes to one group across replicas (and takes SQLite's
//! write lock up front).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, OnceLock};

use sea_orm::ActiveValue::{NotSet, Set};
use sea_orm::sea_query::{Expr, OnConflict, Query};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseTransaction, EntityTrait, QueryFilter, QueryOrder,
    QuerySelect, QueryTrait, TransactionTrait,
};

use super::entities::{allgroup, conversation, groupuser, message, read_cursor};
use super::{Store, any_pair};
use crate::error::StoreError;
use crate::protocol::GroupTemplate;

/// Role of the group's creator (or of whoever inherited it).
pub const ROLE_CREATOR: &str = "creator";
/// Role of every other member.
pub const ROLE_NORMAL: &str = "normal";

/// A member of a group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// User id.
    pub id: i64,
    /// Name.
    pub name: Arc<str>,
    /// "creator" or "normal".
    pub role: String,
}

/// A group with its members in join order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupInfo {
    /// Group id.
    pub id: i64,
    /// Unique name.
    pub groupname: String,
    /// Description.
    pub groupdesc: String,
    /// Members, earliest joined first.
    pub members: Vec<Member>,
    /// The group as lists render it, made at its first use (a `GroupInfo` never changes: a
    /// change of members loads a new one).
    pub template: OnceLock<GroupTemplate>,
}

/// What joining a group did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinOutcome {
    /// Now a member.
    Joined,
    /// Was a member already.
    AlreadyMember,
    /// There is no such group.
    NoSuchGroup,
}

/// What leaving a group did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuitOutcome {
    /// Left; `deleted` when this was the last member and the group is gone.
    Left {
        /// The group, its messages and cursors were deleted.
        deleted: bool,
    },
    /// Not a member of that group.
    NotMember,
    /// There is no such group.
    NoSuchGroup,
}

impl Store {
    /// Creates a group with `creator` as its only member; `Err(Duplicate)` when the name is taken.
    pub async fn create_group(
        &self,
        creator: i64,
        groupname: &str,
        groupdesc: &str,
    ) -> Result<i64, StoreError> {
        let txn = self.db.begin().await?;
        let gid = allgroup::Entity::insert(allgroup::ActiveModel {
            id: NotSet,
            groupname: Set(groupname.to_owned()),
            groupdesc: Set(groupdesc.to_owned()),
        })
        .exec(&txn)
        .await?
        .last_insert_id;
        groupuser::Entity::insert(groupuser::ActiveModel {
            id: NotSet,
            groupid: Set(gid),
            userid: Set(creator),
            grouprole: Set(ROLE_CREATOR.to_owned()),
        })
        .exec(&txn)
        .await?;
        let conv = conversation::Entity::insert(conversation::ActiveModel {
            id: NotSet,
            user_lo: Set(None),
            user_hi: Set(None),
            groupid: Set(Some(gid)),
            last_seq: Set(0),
        })
        .exec(&txn)
        .await?
        .last_insert_id;
        set_cursor(&txn, creator, conv, 0).await?;
        txn.commit().await?;
        Ok(gid)
    }

    /// The group row, if it exists.
    pub async fn group(&self, gid: i64) -> Result<Option<allgroup::Model>, StoreError> {
        Ok(allgroup::Entity::find_by_id(gid).one(&self.db).await?)
    }

    /// The role of `uid` in `gid`, if a member.
    pub async fn member_role(&self, gid: i64, uid: i64) -> Result<Option<String>, StoreError> {
        Ok(groupuser::Entity::find()
            .select_only()
            .column(groupuser::Column::Grouprole)
            .filter(groupuser::Column::Groupid.eq(gid))
            .filter(groupuser::Column::Userid.eq(uid))
            .into_tuple()
            .one(&self.db)
            .await?)
    }

    /// Of the (group, user) pairs, those where the user is a member (one query per 200).
    pub async fn memberships(
        &self,
        pairs: &[(i64, i64)],
    ) -> Result<HashSet<(i64, i64)>, StoreError> {
        let mut found = HashSet::with_capacity(pairs.len());
        for chunk in pairs.chunks(200) {
            let any = any_pair(
                groupuser::Column::Groupid,
                groupuser::Column::Userid,
                chunk.iter().copied(),
            );
            let rows: Vec<(i64, i64)> = groupuser::Entity::find()
                .select_only()
                .column(groupuser::Column::Groupid)
                .column(groupuser::Column::Userid)
                .filter(any)
                .into_tuple()
                .all(&self.db)
                .await?;
            found.extend(rows);
        }
        Ok(found)
    }

    /// Ids of the groups `uid` belongs to.
    pub async fn group_ids_of(&self, uid: i64) -> Result<Vec<i64>, StoreError> {
        let query = groupuser::Entity::find()
            .select_only()
            .filter(groupuser::Column::Userid.eq(uid))
            .into_query();
        self.ids(query, Expr::col(groupuser::Column::Groupid)).await
    }

    /// One group with its members.
    pub async fn group_info(&self, gid: i64) -> Result<Option<GroupInfo>, StoreError> {
        Ok(self.groups_info(&[gid]).await?.pop())
    }

    /// The given groups (those that exist), by id, with their members.
    pub async fn groups_info(&self, ids: &[i64]) -> Result<Vec<GroupInfo>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let groups = allgroup::Entity::find()
            .filter(allgroup::Column::Id.is_in(ids.iter().copied()))
            .order_by_asc(allgroup::Column::Id)
            .all(&self.db)
            .await?;
        let rows = groupuser::Entity::find()
            .filter(groupuser::Column::Groupid.is_in(ids.iter().copied()))
            .order_by_asc(groupuser::Column::Id)
            .all(&self.db)
            .await?;
        let user_ids: Vec<i64> = rows.iter().map(|r| r.userid).collect();
        let names = self.user_names(&user_ids).await?;
        let mut members: HashMap<i64, Vec<Member>> = HashMap::new();
        for r in rows {
            if let Some(name) = names.get(&r.userid) {
                members.entry(r.groupid).or_default().push(Member {
                    id: r.userid,
                    name: name.clone(),
                    role: r.grouprole,
                });
            }
        }
        Ok(groups
            .into_iter()
            .map(|g| GroupInfo {
                members: members.remove(&g.id).unwrap_or_default(),
                id: g.id,
                groupname: g.groupname,
                groupdesc: g.groupdesc,
                template: OnceLock::new(),
            })
            .collect())
    }

    /// Distinct ids of everyone sharing a group with `uid` (including `uid` when in a group).
    pub async fn co_member_ids(&self, uid: i64) -> Result<Vec<i64>, StoreError> {
        let mut sub = Query::select();
        sub.column(groupuser::Column::Groupid)
            .from(groupuser::Entity)
            .and_where(groupuser::Column::Userid.eq(uid));
        Ok(groupuser::Entity::find()
            .select_only()
            .column(groupuser::Column::Userid)
            .distinct()
            .filter(groupuser::Column::Groupid.in_subquery(sub))
            .into_tuple()
            .all(&self.db)
            .await?)
    }

    /// Adds `uid` to `gid` as a normal member, its read cursor at the group's last seq.
    pub async fn join_group(&self, gid: i64, uid: i64) -> Result<JoinOutcome, StoreError> {
        let txn = self.db.begin().await?;
        let Some(conv) = lock_group(&txn, gid).await? else {
            return Ok(JoinOutcome::NoSuchGroup);
        };
        let already = groupuser::Entity::find()
            .filter(groupuser::Column::Groupid.eq(gid))
            .filter(groupuser::Column::Userid.eq(uid))
            .one(&txn)
            .await?;
        if already.is_some() {
            return Ok(JoinOutcome::AlreadyMember);
        }
        groupuser::Entity::insert(groupuser::ActiveModel {
            id: NotSet,
            groupid: Set(gid),
            userid: Set(uid),
            grouprole: Set(ROLE_NORMAL.to_owned()),
        })
        .exec(&txn)
        .await?;
        set_cursor(&txn, uid, conv.id, conv.last_seq).await?;
        txn.commit().await?;
        Ok(JoinOutcome::Joined)
    }

    /// Removes `uid` from `gid`: the creator role passes to the earliest-joined remaining member;
    /// the last member leaving deletes the group, its messages and cursors.
    pub async fn quit_group(&self, gid: i64, uid: i64) -> Result<QuitOutcome, StoreError> {
        let txn = self.db.begin().await?;
        let Some(conv) = lock_group(&txn, gid).await? else {
            return Ok(QuitOutcome::NoSuchGroup);
        };
        let Some(me) = groupuser::Entity::find()
            .filter(groupuser::Column::Groupid.eq(gid))
            .filter(groupuser::Column::Userid.eq(uid))
            .one(&txn)
            .await?
        else {
            return Ok(QuitOutcome::NotMember);
        };
        groupuser::Entity::delete_by_id(me.id).exec(&txn).await?;
        read_cursor::Entity::delete_by_id((uid, conv.id))
            .exec(&txn)
            .await?;
        let next = groupuser::Entity::find()
            .filter(groupuser::Column::Groupid.eq(gid))
            .order_by_asc(groupuser::Column::Id)
            .one(&txn)
            .await?;
        let deleted = match next {
            Some(next) => {
                if me.grouprole == ROLE_CREATOR {
                    groupuser::Entity::update_many()
                        .col_expr(groupuser::Column::Grouprole, Expr::value(ROLE_CREATOR))
                        .filter(groupuser::Column::Id.eq(next.id))
                        .exec(&txn)
                        .await?;
                }
                false
            }
            None => {
                message::Entity::delete_many()
                    .filter(message::Column::Conv.eq(conv.id))
                    .exec(&txn)
                    .await?;
                read_cursor::Entity::delete_many()
                    .filter(read_cursor::Column::Conv.eq(conv.id))
                    .exec(&txn)
                    .await?;
                conversation::Entity::delete_by_id(conv.id)
                    .exec(&txn)
                    .await?;
                allgroup::Entity::delete_by_id(gid).exec(&txn).await?;
                true
            }
        };
        txn.commit().await?;
        Ok(QuitOutcome::Left { deleted })
    }
}

/// Write-locks the group's conversation row and returns it (`None`: no such group).
async fn lock_group(
    txn: &DatabaseTransaction,
    gid: i64,
) -> Result<Option<conversation::Model>, StoreError> {
    conversation::Entity::update_many()
        .col_expr(
            conversation::Column::LastSeq,
            Expr::col(conversation::Column::LastSeq),
        )
        .filter(conversation::Column::Groupid.eq(gid))
        .exec(txn)
        .await?;
    Ok(conversation::Entity::find()
        .filter(conversation::Column::Groupid.eq(gid))
        .one(txn)
        .await?)
}

/// Sets `uid`'s cursor in `conv` to `seq`, creating it if needed.
pub(super) async fn set_cursor(
    db: &impl ConnectionTrait,
    uid: i64,
    conv: i64,
    seq: i64,
) -> Result<(), StoreError> {
    read_cursor::Entity::insert(read_cursor::ActiveModel {
        userid: Set(uid),
        conv: Set(conv),
        seq: Set(seq),
    })
    .on_conflict(
        OnConflict::columns([read_cursor::Column::Userid, read_cursor::Column::Conv])
            .update_column(read_cursor::Column::Seq)
            .to_owned(),
    )
    .exec_without_returning(db)
    .await?;
    Ok(())
}
