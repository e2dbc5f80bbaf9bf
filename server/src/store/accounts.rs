//! Users and friendships.

use std::collections::HashMap;
use std::sync::Arc;

use sea_orm::ActiveValue::{NotSet, Set};
use sea_orm::sea_query::{Alias, Expr, ExprTrait, Query, UnionType};
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QuerySelect, QueryTrait, TransactionTrait};

use super::Store;
use super::entities::{friend, groupuser, session_token, user};
use crate::error::StoreError;

/// The ids a user is tied to: its groups and its friends.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ties {
    /// Groups the user belongs to.
    pub groups: Vec<i64>,
    /// The user's friends.
    pub friends: Vec<i64>,
}

/// A user as other users see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRow {
    /// User id.
    pub id: i64,
    /// Name.
    pub name: Arc<str>,
}

impl Store {
    /// Creates an account; `Err(Duplicate)` when the name is taken.
    pub async fn create_user(&self, name: &str, password_hash: &str) -> Result<i64, StoreError> {
        let res = user::Entity::insert(user::ActiveModel {
            id: NotSet,
            name: Set(name.to_owned()),
            password: Set(password_hash.to_owned()),
            state: Set("offline".to_owned()),
        })
        .exec(&self.db)
        .await?;
        let id = res.last_insert_id;
        self.cache_name(id, name);
        Ok(id)
    }

    /// The account with this id.
    pub async fn user_by_id(&self, id: i64) -> Result<Option<user::Model>, StoreError> {
        Ok(user::Entity::find_by_id(id).one(&self.db).await?)
    }

    /// The account with exactly this name.
    pub async fn user_by_name(&self, name: &str) -> Result<Option<user::Model>, StoreError> {
        Ok(user::Entity::find()
            .filter(user::Column::Name.eq(name))
            .one(&self.db)
            .await?)
    }

    fn cache_name(&self, id: i64, name: &str) {
        if let Ok(mut names) = self.names.lock() {
            names.entry(id).or_insert_with(|| Arc::from(name));
        }
    }

    /// Names of the given users that exist (cached: names never change).
    pub async fn user_names(&self, ids: &[i64]) -> Result<HashMap<i64, Arc<str>>, StoreError> {
        let mut found = HashMap::with_capacity(ids.len());
        let mut missing = Vec::new();
        if let Ok(names) = self.names.lock() {
            for id in ids {
                match names.get(id) {
                    Some(n) => {
                        found.insert(*id, n.clone());
                    }
                    None => missing.push(*id),
                }
            }
        }
        missing.sort_unstable();
        missing.dedup();
        for chunk in missing.chunks(500) {
            let rows: Vec<(i64, String)> = user::Entity::find()
                .select_only()
                .column(user::Column::Id)
                .column(user::Column::Name)
                .filter(user::Column::Id.is_in(chunk.iter().copied()))
                .into_tuple()
                .all(&self.db)
                .await?;
            for (id, name) in rows {
                self.cache_name(id, &name);
                found.insert(id, Arc::from(name));
            }
        }
        Ok(found)
    }

    /// The name of one user, if the user exists.
    pub async fn user_name(&self, id: i64) -> Result<Option<Arc<str>>, StoreError> {
        Ok(self.user_names(&[id]).await?.remove(&id))
    }

    /// Records the last presence transitions in `user.state` (informational only), in one
    /// transaction.
    pub async fn set_states(&self, online: &[i64], offline: &[i64]) -> Result<(), StoreError> {
        if online.is_empty() && offline.is_empty() {
            return Ok(());
        }
        let txn = self.db.begin().await?;
        for (ids, state) in [(online, "online"), (offline, "offline")] {
            for chunk in ids.chunks(500) {
                user::Entity::update_many()
                    .col_expr(user::Column::State, sea_orm::sea_query::Expr::value(state))
                    .filter(user::Column::Id.is_in(chunk.iter().copied()))
                    .exec(&txn)
                    .await?;
            }
        }
        txn.commit().await?;
        Ok(())
    }

    /// Ids of the user's friends.
    pub async fn friend_ids(&self, id: i64) -> Result<Vec<i64>, StoreError> {
        let query = friend::Entity::find()
            .select_only()
            .filter(friend::Column::Userid.eq(id))
            .into_query();
        self.ids(query, Expr::col(friend::Column::Friendid)).await
    }

    /// The user's groups and friends, read together (one query: a login needs both).
    pub async fn ties(&self, uid: i64) -> Result<Ties, StoreError> {
        const GROUP: i64 = 0;
        const FRIEND: i64 = 1;
        let (kind, id) = (Alias::new("kind"), Alias::new("id"));
        let mut both = Query::select()
            .expr_as(Expr::val(GROUP), kind.clone())
            .expr_as(Expr::col(groupuser::Column::Groupid), id.clone())
            .from(groupuser::Entity)
            .and_where(Expr::col(groupuser::Column::Userid).eq(uid))
            .take();
        both.union(
            UnionType::All,
            Query::select()
                .expr_as(Expr::val(FRIEND), kind.clone())
                .expr_as(Expr::col(friend::Column::Friendid), id.clone())
                .from(friend::Entity)
                .and_where(Expr::col(friend::Column::Userid).eq(uid))
                .take(),
        );
        let base = Query::select().from_subquery(both, "ties").take();
        let rows: Vec<(i64, i64)> = self.rows(base, [Expr::col(kind), Expr::col(id)]).await?;
        let mut ties = Ties::default();
        for (kind, id) in rows {
            match kind {
                GROUP => ties.groups.push(id),
                _ => ties.friends.push(id),
            }
        }
        Ok(ties)
    }

    /// The user's friends with their names, by id.
    pub async fn friends(&self, id: i64) -> Result<Vec<UserRow>, StoreError> {
        let ids = self.friend_ids(id).await?;
        self.rows_of(ids).await
    }

    /// `UserRow`s of existing users among `ids`, sorted by id.
    pub async fn rows_of(&self, mut ids: Vec<i64>) -> Result<Vec<UserRow>, StoreError> {
        ids.sort_unstable();
        ids.dedup();
        let names = self.user_names(&ids).await?;
        Ok(ids
            .into_iter()
            .filter_map(|id| {
                names.get(&id).map(|n| UserRow {
                    id,
                    name: n.clone(),
                })
            })
            .collect())
    }

    /// Whether `a` has `b` as a friend.
    pub async fn is_friend(&self, a: i64, b: i64) -> Result<bool, StoreError> {
        Ok(friend::Entity::find_by_id((a, b))
            .one(&self.db)
            .await?
            .is_some())
    }

    /// Makes `a` and `b` friends both ways; `false` when they already were (also when another
    /// request made them friends at the same moment: the unique key decides).
    pub async fn add_friend(&self, a: i64, b: i64) -> Result<bool, StoreError> {
        if self.is_friend(a, b).await? {
            return Ok(false);
        }
        // Rows in one order for every request, so concurrent ones wait instead of deadlocking.
        let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
        let rows = [(lo, hi), (hi, lo)].map(|(userid, friendid)| friend::ActiveModel {
            userid: Set(userid),
            friendid: Set(friendid),
        });
        let txn = self.db.begin().await?;
        match friend::Entity::insert_many(rows)
            .exec_without_returning(&txn)
            .await
        {
            Ok(_) => {
                txn.commit().await?;
                Ok(true)
            }
            Err(e) => match StoreError::from(e) {
                StoreError::Duplicate(_) => Ok(false),
                other => Err(other),
            },
        }
    }

    /// Ends the friendship both ways; `false` when there was none.
    pub async fn del_friend(&self, a: i64, b: i64) -> Result<bool, StoreError> {
        let res = friend::Entity::delete_many()
            .filter(
                sea_orm::Condition::any()
                    .add(
                        sea_orm::Condition::all()
                            .add(friend::Column::Userid.eq(a))
                            .add(friend::Column::Friendid.eq(b)),
                    )
                    .add(
                        sea_orm::Condition::all()
                            .add(friend::Column::Userid.eq(b))
                            .add(friend::Column::Friendid.eq(a)),
                    ),
            )
            .exec(&self.db)
            .await?;
        Ok(res.rows_affected > 0)
    }
}

impl Store {
    /// Stores a resume token's hash for `uid`, valid until `expires_at` (ms); drops the user's
    /// expired tokens.
    pub async fn create_token(
        &self,
        uid: i64,
        token_hash: &str,
        expires_at: i64,
    ) -> Result<(), StoreError> {
        let now = chrono::Utc::now().timestamp_millis();
        session_token::Entity::delete_many()
            .filter(session_token::Column::Userid.eq(uid))
            .filter(session_token::Column::ExpiresAt.lt(now))
            .exec(&self.db)
            .await?;
        session_token::Entity::insert(session_token::ActiveModel {
            token_hash: Set(token_hash.to_owned()),
            userid: Set(uid),
            expires_at: Set(expires_at),
        })
        .exec_without_returning(&self.db)
        .await?;
        Ok(())
    }

    /// The user of an unexpired token.
    pub async fn token_user(&self, token_hash: &str) -> Result<Option<UserRow>, StoreError> {
        let now = chrono::Utc::now().timestamp_millis();
        let Some(token) = session_token::Entity::find_by_id(token_hash.to_owned())
            .filter(session_token::Column::ExpiresAt.gt(now))
            .one(&self.db)
            .await?
        else {
            return Ok(None);
        };
        // The name usually comes from the cache: one query per token login.
        Ok(self.rows_of(vec![token.userid]).await?.pop())
    }

    /// Revokes a token.
    pub async fn delete_token(&self, token_hash: &str) -> Result<(), StoreError> {
        session_token::Entity::delete_by_id(token_hash.to_owned())
            .exec(&self.db)
            .await?;
        Ok(())
    }
}
