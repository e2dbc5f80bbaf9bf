//! Conversations, message writes in batches (group commit), history pages, read cursors and
//! the unread backlog of the login reply.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use sea_orm::ActiveValue::{NotSet, Set};
use sea_orm::sea_query::{
    CaseStatement, Expr, ExprTrait, Func, OnConflict, Query, SelectStatement, UpdateStatement,
};
use sea_orm::{
    ColumnTrait, Condition, DatabaseBackend, DbErr, EntityTrait, QueryFilter, QueryOrder,
    QuerySelect, QueryTrait,
};

use super::batch::BatchTxn;
use super::entities::{conversation, message, read_cursor};
use super::file_writer::{Batch, FileWriter, Outcome, Row};
use super::{Store, any_pair};
use crate::error::StoreError;
use crate::protocol::HistoryPage;

/// Unread messages per conversation offered at login.
pub const UNREAD_PER_CONVERSATION: u64 = 200;

/// Rows per INSERT statement of a batch written through sea-orm (8 parameters each, well under
/// every database's limit): 400-row INSERTs and one for the rest, each a round trip to
/// MariaDB or PostgreSQL, where fewer statements beat fewer statement texts (a SQLite file's
/// writer thread cuts its batches into fewer shapes instead: `file_writer::insert_chunks`).
pub(super) const INSERT_CHUNK: usize = 400;

/// Number of rows → text of the multi-row message INSERT, made once each and shared by the
/// store and a database file's writer thread (every count is at most `INSERT_CHUNK`).
pub(super) type InsertTexts = Arc<Mutex<HashMap<usize, Arc<str>>>>;

/// The columns a batch writes, in the order of each row's values (the id is the database's).
pub(super) const MESSAGE_COLUMNS: [message::Column; 8] = [
    message::Column::Conv,
    message::Column::Seq,
    message::Column::Sender,
    message::Column::Toid,
    message::Column::Groupid,
    message::Column::Msg,
    message::Column::SentAt,
    message::Column::Txnid,
];

/// A message to store, its conversation already resolved.
#[derive(Debug, Clone)]
pub struct NewMessage<'a> {
    /// Sender (the session's user).
    pub sender: i64,
    /// Conversation id.
    pub conv: i64,
    /// Recipient of a 1:1 message.
    pub toid: Option<i64>,
    /// Group of a group message.
    pub groupid: Option<i64>,
    /// Text.
    pub msg: &'a str,
    /// Idempotency key.
    pub txnid: Option<&'a str>,
}

/// What became of one message of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Written {
    /// Stored now.
    Stored(message::Model),
    /// Its txnid was used before for the same target and text: the stored message.
    Duplicate(message::Model),
    /// Its txnid was used before for another target or text.
    TxnidReused,
    /// The conversation no longer exists (group deleted meanwhile).
    Gone,
}

/// Which 1:1 conversation a pair of users has: (smaller id, larger id).
pub fn pair_key(a: i64, b: i64) -> (i64, i64) {
    if a <= b { (a, b) } else { (b, a) }
}

/// 1:1 pairs read or created in one statement.
const PAIRS_PER_QUERY: usize = 500;

impl Store {
    /// The conversation id of the 1:1 pair, created on first use when `create`.
    pub async fn pair_conversation(
        &self,
        a: i64,
        b: i64,
        create: bool,
    ) -> Result<Option<i64>, StoreError> {
        let found = self.pair_conversations(&[(a, b)], create).await?;
        Ok(found.get(&pair_key(a, b)).copied())
    }

    /// The conversation ids of many 1:1 pairs, by `pair_key`, those missing created when
    /// `create`: the pairs not cached yet are read in one query (and created in one statement)
    /// per 500, not one at a time — after a start, a batch of sends between many pairs waited
    /// ~0.5 ms a pair for its lookups.
    pub async fn pair_conversations(
        &self,
        pairs: &[(i64, i64)],
        create: bool,
    ) -> Result<HashMap<(i64, i64), i64>, StoreError> {
        let mut found = HashMap::with_capacity(pairs.len());
        let mut missing = Vec::new();
        if let Ok(cached) = self.pairs.lock() {
            for &(a, b) in pairs {
                let key = pair_key(a, b);
                match cached.get(&key) {
                    Some(&id) => {
                        found.insert(key, id);
                    }
                    None => missing.push(key),
                }
            }
        }
        if missing.is_empty() {
            return Ok(found);
        }
        missing.sort_unstable();
        missing.dedup();
        self.read_pairs(&missing, &mut found).await?;
        if create {
            missing.retain(|key| !found.contains_key(key));
            for chunk in missing.chunks(PAIRS_PER_QUERY) {
                let rows = chunk.iter().map(|&(lo, hi)| conversation::ActiveModel {
                    id: NotSet,
                    user_lo: Set(Some(lo)),
                    user_hi: Set(Some(hi)),
                    groupid: Set(None),
                    last_seq: Set(0),
                });
                // Another replica may create the same pair meanwhile: read back either way.
                conversation::Entity::insert_many(rows)
                    .on_conflict(
                        OnConflict::columns([
                            conversation::Column::UserLo,
                            conversation::Column::UserHi,
                        ])
                        .do_nothing_on([conversation::Column::UserLo])
                        .to_owned(),
                    )
                    .exec_without_returning(&self.db)
                    .await?;
            }
            self.read_pairs(&missing, &mut found).await?;
        }
        Ok(found)
    }

    /// Reads the conversations of `keys` (`pair_key`s) that exist into `found` and the cache.
    async fn read_pairs(
        &self,
        keys: &[(i64, i64)],
        found: &mut HashMap<(i64, i64), i64>,
    ) -> Result<(), StoreError> {
        for chunk in keys.chunks(PAIRS_PER_QUERY) {
            let any = any_pair(
                conversation::Column::UserLo,
                conversation::Column::UserHi,
                chunk.iter().copied(),
            );
            let rows: Vec<(i64, Option<i64>, Option<i64>)> = conversation::Entity::find()
                .select_only()
                .column(conversation::Column::Id)
                .column(conversation::Column::UserLo)
                .column(conversation::Column::UserHi)
                .filter(any)
                .into_tuple()
                .all(&self.db)
                .await?;
            let mut cached = self.pairs.lock().ok();
            for (id, lo, hi) in rows {
                let (Some(lo), Some(hi)) = (lo, hi) else {
                    continue;
                };
                found.insert((lo, hi), id);
                if let Some(cached) = cached.as_mut() {
                    cached.insert((lo, hi), id);
                }
            }
        }
        Ok(())
    }

    /// The conversation of a group, if the group exists.
    pub async fn group_conversation(
        &self,
        gid: i64,
    ) -> Result<Option<conversation::Model>, StoreError> {
        Ok(conversation::Entity::find()
            .filter(conversation::Column::Groupid.eq(gid))
            .one(&self.db)
            .await?)
    }

    /// group id → conversation id, for those of `groups` that exist (one query per 500).
    pub async fn group_conversations(
        &self,
        groups: &[i64],
    ) -> Result<HashMap<i64, i64>, StoreError> {
        let mut found = HashMap::with_capacity(groups.len());
        for chunk in groups.chunks(500) {
            let rows: Vec<(i64, Option<i64>)> = conversation::Entity::find()
                .select_only()
                .column(conversation::Column::Id)
                .column(conversation::Column::Groupid)
                .filter(conversation::Column::Groupid.is_in(chunk.iter().copied()))
                .into_tuple()
                .all(&self.db)
                .await?;
            found.extend(rows.into_iter().filter_map(|(conv, g)| Some((g?, conv))));
        }
        Ok(found)
    }

    /// The last seq of a conversation (0 when it has none).
    pub async fn last_seq(&self, conv: i64) -> Result<i64, StoreError> {
        Ok(conversation::Entity::find_by_id(conv)
            .one(&self.db)
            .await?
            .map_or(0, |c| c.last_seq))
    }

    /// Stores a batch of messages in one transaction, assigning contiguous seqs per conversation
    /// in batch order. Duplicated txnids (earlier or within the batch) store nothing.
    pub async fn write_batch(
        &self,
        items: &[NewMessage<'_>],
        now_ms: i64,
    ) -> Result<Vec<Written>, StoreError> {
        let mut out: Vec<Option<Written>> = vec![None; items.len()];

        // Idempotency: earlier messages with the same (sender, txnid).
        let mut by_txn: HashMap<(i64, &str), usize> = HashMap::new();
        let mut earlier: HashMap<(i64, String), message::Model> = HashMap::new();
        let with_txn: Vec<(i64, &str)> = items
            .iter()
            .filter_map(|m| m.txnid.map(|t| (m.sender, t)))
            .collect();
        if !with_txn.is_empty() {
            let cond = any_pair(
                message::Column::Sender,
                message::Column::Txnid,
                with_txn.iter().copied(),
            );
            for m in message::Entity::find().filter(cond).all(&self.db).await? {
                if let Some(t) = m.txnid.clone() {
                    earlier.insert((m.sender, t), m);
                }
            }
        }
        // (index in items) of the messages to insert, grouped by conversation.
        let mut per_conv: BTreeMap<i64, Vec<usize>> = BTreeMap::new();
        let mut twin_of: HashMap<usize, usize> = HashMap::new();
        for (i, m) in items.iter().enumerate() {
            if let Some(t) = m.txnid {
                if let Some(prev) = earlier.get(&(m.sender, t.to_owned())) {
                    out[i] = Some(if same_message(prev, m) {
                        Written::Duplicate(prev.clone())
                    } else {
                        Written::TxnidReused
                    });
                    continue;
                }
                if let Some(&first) = by_txn.get(&(m.sender, t)) {
                    twin_of.insert(i, first);
                    continue;
                }
                by_txn.insert((m.sender, t), i);
            }
            per_conv.entry(m.conv).or_default().push(i);
        }

        if !per_conv.is_empty() {
            match &self.file_writer {
                Some(writer) => {
                    self.write_to_file(writer, &per_conv, items, now_ms, &mut out)
                        .await?
                }
                None => {
                    self.write_in_transaction(&per_conv, items, now_ms, &mut out)
                        .await?
                }
            }
        }

        for (i, first) in twin_of {
            out[i] = Some(match &out[first] {
                Some(Written::Stored(m)) | Some(Written::Duplicate(m)) => {
                    if same_message(m, &items[i]) {
                        Written::Duplicate(m.clone())
                    } else {
                        Written::TxnidReused
                    }
                }
                other => other.clone().unwrap_or(Written::Gone),
            });
        }
        Ok(out
            .into_iter()
            .map(|w| w.unwrap_or(Written::Gone))
            .collect())
    }

    /// Writes the messages of `per_conv` (conversation → indexes in `items`) in one sea-orm
    /// transaction, and records each one's outcome in `out`.
    async fn write_in_transaction(
        &self,
        per_conv: &BTreeMap<i64, Vec<usize>>,
        items: &[NewMessage<'_>],
        now_ms: i64,
        out: &mut [Option<Written>],
    ) -> Result<(), StoreError> {
        let mut txn = BatchTxn::begin(&self.db).await?;
        let counts = per_conv.iter().map(|(&conv, idx)| (conv, idx.len()));
        let lasts = txn
            .reserve(reserve_seqs(counts), per_conv.keys().copied())
            .await?;
        // (conv, seq, message) in insertion order, and the index of each in `items`.
        let mut rows = Vec::with_capacity(items.len());
        let mut at = Vec::with_capacity(items.len());
        let mut ranges = Vec::new();
        for (conv, idx) in per_conv {
            let Some(last) = lasts.get(conv) else {
                for &i in idx {
                    out[i] = Some(Written::Gone);
                }
                continue;
            };
            let first = last - idx.len() as i64 + 1;
            ranges.push((*conv, first, *last));
            for (k, &i) in idx.iter().enumerate() {
                rows.push((*conv, first + k as i64, &items[i]));
                at.push(i);
            }
        }
        let ids = self
            .insert_messages(&mut txn, &rows, now_ms, &ranges)
            .await?;
        for ((&(conv, seq, m), &i), id) in rows.iter().zip(&at).zip(ids) {
            out[i] = id.map(|id| {
                Written::Stored(message::Model {
                    id,
                    conv,
                    seq,
                    sender: m.sender,
                    toid: m.toid,
                    groupid: m.groupid,
                    msg: m.msg.to_owned(),
                    sent_at: now_ms,
                    txnid: m.txnid.map(str::to_owned),
                })
            });
        }
        txn.commit().await?;
        Ok(())
    }

    /// Writes the messages of `per_conv` (conversation → indexes in `items`) through a SQLite
    /// file's writer thread, and records each one's outcome in `out`.
    async fn write_to_file(
        &self,
        writer: &FileWriter,
        per_conv: &BTreeMap<i64, Vec<usize>>,
        items: &[NewMessage<'_>],
        now_ms: i64,
        out: &mut [Option<Written>],
    ) -> Result<(), StoreError> {
        let mut batch = Batch {
            convs: Vec::with_capacity(per_conv.len()),
            rows: Vec::with_capacity(items.len()),
            now_ms,
        };
        for (&conv, idx) in per_conv {
            batch.convs.push((conv, idx.len()));
            batch.rows.extend(idx.iter().map(|&i| {
                let m = &items[i];
                Row {
                    sender: m.sender,
                    toid: m.toid,
                    groupid: m.groupid,
                    msg: m.msg.to_owned(),
                    txnid: m.txnid.map(str::to_owned),
                }
            }));
        }
        let Outcome { lasts, ids, rows } = writer.write(batch).await?;
        let (mut ids, mut rows) = (ids.into_iter(), rows.into_iter());
        for ((&conv, idx), last) in per_conv.iter().zip(lasts) {
            let mine = rows.by_ref().take(idx.len());
            let Some(last) = last else {
                mine.for_each(drop);
                for &i in idx {
                    out[i] = Some(Written::Gone);
                }
                continue;
            };
            let first = last - idx.len() as i64 + 1;
            for ((k, &i), row) in idx.iter().enumerate().zip(mine) {
                let id = ids.next().ok_or_else(|| {
                    StoreError::Other(DbErr::Custom("a stored message without an id".into()))
                })?;
                out[i] = Some(Written::Stored(message::Model {
                    id,
                    conv,
                    seq: first + k as i64,
                    sender: row.sender,
                    toid: row.toid,
                    groupid: row.groupid,
                    msg: row.msg,
                    sent_at: now_ms,
                    txnid: row.txnid,
                }));
            }
        }
        Ok(())
    }

    /// Inserts `rows` (`(conv, seq, message)`: the seqs `first..=last` of each
    /// `(conv, first, last)` of `ranges`, in that order) in multi-row INSERTs of `INSERT_CHUNK`
    /// rows and returns the id of each row, in order (`None`: not found when read back): a
    /// multi-row INSERT tells no ids, so they are read back.
    async fn insert_messages(
        &self,
        txn: &mut BatchTxn,
        rows: &[(i64, i64, &NewMessage<'_>)],
        now_ms: i64,
        ranges: &[(i64, i64, i64)],
    ) -> Result<Vec<Option<i64>>, StoreError> {
        for chunk in rows.chunks(INSERT_CHUNK) {
            let n = chunk.len();
            let inserted = txn
                .insert(&insert_sql(&self.inserts, self.backend(), n), chunk, now_ms)
                .await?;
            if inserted != n as u64 {
                return Err(StoreError::Other(DbErr::Custom(format!(
                    "inserted {inserted} of {n} messages"
                ))));
            }
        }
        if ranges.is_empty() {
            return Ok(Vec::new());
        }
        let mut cond = Condition::any();
        for (conv, first, last) in ranges {
            cond = cond.add(
                Condition::all()
                    .add(message::Column::Conv.eq(*conv))
                    .add(message::Column::Seq.between(*first, *last)),
            );
        }
        // Only the ids are new: everything else is already known.
        let found: HashMap<(i64, i64), i64> = message::Entity::find()
            .select_only()
            .column(message::Column::Conv)
            .column(message::Column::Seq)
            .column(message::Column::Id)
            .filter(cond)
            .into_tuple::<(i64, i64, i64)>()
            .all(txn.orm())
            .await?
            .into_iter()
            .map(|(conv, seq, id)| ((conv, seq), id))
            .collect();
        Ok(rows
            .iter()
            .map(|&(conv, seq, _)| found.get(&(conv, seq)).copied())
            .collect())
    }

    /// A page of a conversation, in ascending seq, and whether more exist beyond it.
    pub async fn history(
        &self,
        conv: i64,
        page: HistoryPage,
        limit: u32,
    ) -> Result<(Vec<message::Model>, bool), StoreError> {
        let q = message::Entity::find().filter(message::Column::Conv.eq(conv));
        let q = match page {
            HistoryPage::Newest => q.order_by_desc(message::Column::Seq),
            HistoryPage::Before(b) => q
                .filter(message::Column::Seq.lt(b))
                .order_by_desc(message::Column::Seq),
            HistoryPage::After(a) => q
                .filter(message::Column::Seq.gt(a))
                .order_by_asc(message::Column::Seq),
        };
        let q = q.select_only().limit(u64::from(limit) + 1).into_query();
        let mut rows = self.messages(q).await?;
        // The extra row, if any, is the one farthest from the cursor.
        rows.sort_unstable_by_key(|m| m.seq);
        let limit = limit as usize;
        let more = rows.len() > limit;
        if more {
            match page {
                HistoryPage::After(_) => rows.truncate(limit),
                _ => drop(rows.drain(..rows.len() - limit)),
            }
        }
        Ok((rows, more))
    }

    /// Moves `uid`'s cursor in `conv` forward to `seq` (never backward).
    pub async fn advance_cursor(&self, uid: i64, conv: i64, seq: i64) -> Result<(), StoreError> {
        let forward = || {
            read_cursor::Entity::update_many()
                .col_expr(read_cursor::Column::Seq, Expr::value(seq))
                .filter(read_cursor::Column::Userid.eq(uid))
                .filter(read_cursor::Column::Conv.eq(conv))
                .filter(read_cursor::Column::Seq.lt(seq))
                .exec(&self.db)
        };
        if forward().await?.rows_affected > 0 {
            return Ok(());
        }
        read_cursor::Entity::insert(read_cursor::ActiveModel {
            userid: Set(uid),
            conv: Set(conv),
            seq: Set(seq),
        })
        .on_conflict(
            OnConflict::columns([read_cursor::Column::Userid, read_cursor::Column::Conv])
                .do_nothing_on([read_cursor::Column::Userid])
                .to_owned(),
        )
        .exec_without_returning(&self.db)
        .await?;
        // If a row appeared meanwhile (the insert did nothing), move it forward if behind.
        forward().await?;
        Ok(())
    }

    /// The unread backlog of `uid`: in each 1:1 conversation and each of `groups`, the messages
    /// above the user's cursor among the conversation's newest 200 (seqs are contiguous), not
    /// sent by the user, ordered by (time, message_id).
    pub async fn unread(
        &self,
        uid: i64,
        groups: &[i64],
    ) -> Result<Vec<message::Model>, StoreError> {
        let mut out = if self.backend() == DatabaseBackend::Sqlite {
            // One query (each is a hand-off to SQLite's worker thread and back).
            self.messages(unread_messages(uid, groups)).await?
        } else {
            // MariaDB and PostgreSQL run the one-query join as a lookup on `conv` and test
            // `seq` row by row (100 conversations of 2,000 messages: all 200,000 read for the
            // 20,000 wanted): the conversations first, then their messages by explicit ranges.
            let (convs, [id, last_seq, cursor]) = unread_conversations(uid, groups);
            let found: Vec<(i64, i64, i64)> = self.rows(convs, [id, last_seq, cursor]).await?;
            let mut out = Vec::new();
            // A hundred conversations per query, each from where its backlog starts.
            for chunk in found.chunks(100) {
                let mut above = Condition::any();
                for &(conv, last_seq, cursor) in chunk {
                    let from = Ord::max(cursor, last_seq - UNREAD_PER_CONVERSATION as i64);
                    above = above.add(
                        Condition::all()
                            .add(message::Column::Conv.eq(conv))
                            .add(message::Column::Seq.gt(from)),
                    );
                }
                let select = message::Entity::find()
                    .select_only()
                    .filter(above)
                    .filter(message::Column::Sender.ne(uid));
                out.extend(self.messages(select.into_query()).await?);
            }
            out
        };
        out.sort_by_key(|m| (m.sent_at, m.id));
        Ok(out)
    }

    /// The messages `select` finds (its FROM, joins, filters, order and limit; no columns of
    /// its own), in no particular order: see [`Store::rows`].
    async fn messages(&self, select: SelectStatement) -> Result<Vec<message::Model>, StoreError> {
        use message::Column as C;
        let fields = [
            C::Id,
            C::Conv,
            C::Seq,
            C::Sender,
            C::Toid,
            C::Groupid,
            C::Msg,
            C::SentAt,
            C::Txnid,
        ]
        .map(|c| Expr::col((message::Entity, c)));
        let rows: Vec<MessageRow> = self.rows(select, fields).await?;
        Ok(rows
            .into_iter()
            .map(
                |(id, conv, seq, sender, toid, groupid, msg, sent_at, txnid)| message::Model {
                    id,
                    conv,
                    seq,
                    sender,
                    toid,
                    groupid,
                    msg,
                    sent_at,
                    txnid,
                },
            )
            .collect())
    }
}

/// The columns of `message`, in order, as [`Store::messages`] reads them.
type MessageRow = (
    i64,
    i64,
    i64,
    i64,
    Option<i64>,
    Option<i64>,
    String,
    i64,
    Option<String>,
);

/// The conversations of `uid` (1:1 and `groups`) with messages above the user's cursor, joined
/// to the cursor (no columns), and the expressions of their id, last seq and cursor.
fn unread_conversations(uid: i64, groups: &[i64]) -> (SelectStatement, [Expr; 3]) {
    let mut mine = Condition::any()
        .add(conversation::Column::UserLo.eq(uid))
        .add(conversation::Column::UserHi.eq(uid));
    if !groups.is_empty() {
        mine = mine.add(conversation::Column::Groupid.is_in(groups.iter().copied()));
    }
    let cursor = Expr::col((read_cursor::Entity, read_cursor::Column::Seq)).if_null(0i64);
    let last_seq = Expr::col((conversation::Entity, conversation::Column::LastSeq));
    let mut convs = conversation::Entity::find()
        .select_only()
        .filter(mine)
        .filter(last_seq.clone().gt(cursor.clone()))
        .into_query();
    convs.left_join(
        read_cursor::Entity,
        Expr::col((read_cursor::Entity, read_cursor::Column::Conv))
            .equals((conversation::Entity, conversation::Column::Id))
            .and(Expr::col((read_cursor::Entity, read_cursor::Column::Userid)).eq(uid)),
    );
    let id = Expr::col((conversation::Entity, conversation::Column::Id));
    (convs, [id, last_seq, cursor])
}

/// The unread backlog of `uid` as one query (no columns): [`unread_conversations`] joined to
/// their messages through the (conv, seq) index from where each backlog starts.
fn unread_messages(uid: i64, groups: &[i64]) -> SelectStatement {
    let (mut convs, [_, last_seq, cursor]) = unread_conversations(uid, groups);
    let start = Func::greatest([cursor, last_seq.sub(UNREAD_PER_CONVERSATION as i64)]);
    convs.inner_join(
        message::Entity,
        Expr::col((message::Entity, message::Column::Conv))
            .equals((conversation::Entity, conversation::Column::Id))
            .and(Expr::col((message::Entity, message::Column::Seq)).gt(start)),
    );
    convs.and_where(Expr::col((message::Entity, message::Column::Sender)).ne(uid));
    convs
}

/// The UPDATE that reserves the seqs of a batch: adds each `(conversation, count)`'s count to
/// that conversation's `last_seq`, in one statement. Its rows are locked in key order, so the
/// concurrent batches of two replicas wait rather than deadlock; it is the batch's first
/// statement, a write, which takes SQLite's lock up front.
pub(super) fn reserve_seqs(counts: impl Iterator<Item = (i64, usize)>) -> UpdateStatement {
    let mut convs = Vec::new();
    let mut case = CaseStatement::new();
    for (conv, count) in counts {
        case = case.case(
            Expr::col(conversation::Column::Id).eq(conv),
            Expr::val(count as i64),
        );
        convs.push(conv);
    }
    Query::update()
        .table(conversation::Entity)
        .value(
            conversation::Column::LastSeq,
            Expr::col(conversation::Column::LastSeq).add(case.finally(Expr::val(0i64))),
        )
        .and_where(Expr::col(conversation::Column::Id).is_in(convs))
        .to_owned()
}

/// The text of an INSERT of `rows` messages ([`MESSAGE_COLUMNS`], one parameter each) for
/// `backend`.
pub(super) fn insert_text(backend: DatabaseBackend, rows: usize) -> String {
    let mut insert = Query::insert();
    insert.into_table(message::Entity).columns(MESSAGE_COLUMNS);
    for _ in 0..rows {
        insert.values_panic([
            Expr::val(0i64),
            Expr::val(0i64),
            Expr::val(0i64),
            Expr::val(None::<i64>),
            Expr::val(None::<i64>),
            Expr::val(String::new()),
            Expr::val(0i64),
            Expr::val(None::<String>),
        ]);
    }
    let sql = backend.build(&insert).sql;
    if backend == DatabaseBackend::Sqlite {
        fail_on_conflict(sql)
    } else {
        sql
    }
}

/// The text of an INSERT of `rows` messages ([`MESSAGE_COLUMNS`], one parameter each),
/// built by sea-query once per number of rows and kept in `texts`: building the statement
/// with each batch's values (sea-orm models, then sea-query) cost the writer more CPU than
/// SQLite spent running it.
pub(super) fn insert_sql(texts: &InsertTexts, backend: DatabaseBackend, rows: usize) -> Arc<str> {
    let cached = texts.lock().ok().and_then(|t| t.get(&rows).cloned());
    if let Some(sql) = cached {
        return sql;
    }
    let sql: Arc<str> = insert_text(backend, rows).into();
    if let Ok(mut texts) = texts.lock()
        && rows <= INSERT_CHUNK
    {
        texts.insert(rows, sql.clone());
    }
    sql
}

/// SQLite's `INSERT` of `sql` as `INSERT OR FAIL`: a constraint it breaks still fails it (and
/// the writer rolls the batch back), but SQLite no longer keeps a statement journal for it. A
/// multi-row statement that may abort (each NOT NULL or UNIQUE check of a plain INSERT may)
/// must be undoable alone, so SQLite copied every page it changed, a chat batch's ~100 index
/// pages per statement, into a temporary file before changing it. sea-query has no
/// conflict clause for it; the text is a constant with one parameter per value.
fn fail_on_conflict(sql: String) -> String {
    match sql.strip_prefix("INSERT INTO ") {
        Some(rest) => format!("INSERT OR FAIL INTO {rest}"),
        None => sql,
    }
}

fn same_message(stored: &message::Model, new: &NewMessage<'_>) -> bool {
    stored.conv == new.conv
        && stored.toid == new.toid
        && stored.groupid == new.groupid
        && stored.msg == new.msg
}

#[cfg(test)]
mod tests {
    use sea_orm::sea_query::SqliteQueryBuilder;
    use sea_orm::{ConnectionTrait, DbBackend, Statement};

    use super::*;
    use crate::store::{SqliteTuning, TempDatabase};

    /// The two ways a SQLite store writes batches: an in-memory database (through sea-orm)
    /// and a database file (through its writer thread, the file removed with its guard).
    async fn sqlite_stores() -> Vec<(Store, Option<TempDatabase>)> {
        let memory = Store::connect("sqlite::memory:", 1, SqliteTuning::default())
            .await
            .expect("an in-memory database");
        let temp = TempDatabase::new("chat-batch");
        let file = Store::connect(&temp.url(), 2, SqliteTuning::default())
            .await
            .expect("a database file");
        assert!(file.file_writer.is_some());
        vec![(memory, None), (file, Some(temp))]
    }

    /// The plan SQLite picks for the one-query backlog: a bad join order would scan every
    /// message ever sent at each login.
    #[tokio::test]
    async fn sqlite_reads_the_backlog_from_each_conversation_through_the_message_index() {
        let store = Store::connect("sqlite::memory:", 1, SqliteTuning::default())
            .await
            .expect("an in-memory database");
        let mut query = unread_messages(7, &[1, 2]);
        query.column((message::Entity, message::Column::Id));
        let (sql, values) = query.build(SqliteQueryBuilder);
        let plan = store
            .db
            .query_all_raw(Statement::from_sql_and_values(
                DbBackend::Sqlite,
                format!("EXPLAIN QUERY PLAN {sql}"),
                values,
            ))
            .await
            .expect("a plan");
        let steps: Vec<String> = plan
            .iter()
            .map(|row| row.try_get_by_index::<String>(3).unwrap_or_default())
            .collect();
        let at = |needle: &str| steps.iter().position(|s| s.contains(needle));
        let message = at("SEARCH message USING INDEX ux_message_conv_seq (conv=? AND seq>?)");
        let cursor = at("SEARCH read_cursor");
        assert!(message.is_some(), "{steps:?}");
        assert!(at("SCAN").is_none(), "no table is scanned: {steps:?}");
        assert!(
            cursor < message,
            "conversations and cursors first: {steps:?}"
        );
    }

    /// A batch over several conversations, interleaved, with NULLs and a txnid sent twice:
    /// every message gets the id of its own row and contiguous seqs.
    #[tokio::test]
    async fn a_batch_gives_each_message_its_own_row_id_and_seq() {
        for (store, _file) in sqlite_stores().await {
            batch_ids_and_seqs(&store).await;
            store.close().await;
        }
    }

    async fn batch_ids_and_seqs(store: &Store) {
        let a = store.pair_conversation(1, 2, true).await.unwrap().unwrap();
        let b = store.pair_conversation(1, 3, true).await.unwrap().unwrap();
        let texts = ["plain", "a \"quote\"\n\u{0}é😀", "", "[1,2]", "null", "x"];
        let batch: Vec<NewMessage<'_>> = texts
            .iter()
            .enumerate()
            .map(|(i, msg)| NewMessage {
                sender: 1,
                conv: if i % 2 == 0 { a } else { b },
                toid: Some(if i % 2 == 0 { 2 } else { 3 }),
                groupid: None,
                msg,
                txnid: (i == 1 || i == 5).then_some("t-1"),
            })
            .collect();
        let mut twice = batch.clone();
        twice[5].msg = texts[1];
        twice[5].conv = b;
        let written = store.write_batch(&twice, 1_700_000_000_000).await.unwrap();
        let stored: HashMap<i64, message::Model> = message::Entity::find()
            .all(&store.db)
            .await
            .unwrap()
            .into_iter()
            .map(|m| (m.id, m))
            .collect();
        assert_eq!(stored.len(), 5, "the txnid's second use stores nothing");
        let mut seqs: HashMap<i64, Vec<i64>> = HashMap::new();
        for (i, w) in written.iter().enumerate() {
            let m = match w {
                Written::Stored(m) => m,
                Written::Duplicate(m) => {
                    assert_eq!(i, 5, "only the twin is a duplicate");
                    assert_eq!(m, &stored[&m.id]);
                    continue;
                }
                other => panic!("message {i}: {other:?}"),
            };
            assert_eq!(&stored[&m.id], m, "message {i} is its own row");
            assert_eq!(m.msg, twice[i].msg);
            seqs.entry(m.conv).or_default().push(m.seq);
        }
        assert_eq!(seqs[&a], vec![1, 2, 3]);
        assert_eq!(seqs[&b], vec![1, 2]);
        // The next batch continues both conversations.
        let written = store.write_batch(&batch[..2], 1).await.unwrap();
        let seqs: Vec<i64> = written
            .iter()
            .map(|w| match w {
                Written::Stored(m) | Written::Duplicate(m) => m.seq,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(seqs, vec![4, 1], "the second is t-1, stored the first time");
    }

    /// Many pairs' conversations in one call: those that exist are found whatever the order of
    /// each pair, by a store whose cache has never seen them; the missing ones are created
    /// only when asked, once each.
    #[tokio::test]
    async fn pairs_are_found_and_created_together_by_pair_key() {
        let file = TempDatabase::new("chat-pairs");
        let first = Store::connect(&file.url(), 2, SqliteTuning::default())
            .await
            .unwrap();
        let a = first.pair_conversation(1, 2, true).await.unwrap().unwrap();
        let b = first.pair_conversation(3, 1, true).await.unwrap().unwrap();
        first.close().await;

        let store = Store::connect(&file.url(), 2, SqliteTuning::default())
            .await
            .unwrap();
        let asked = [(2, 1), (1, 3), (5, 4), (2, 1)];
        let found = store.pair_conversations(&asked, false).await.unwrap();
        assert_eq!(found, HashMap::from([((1, 2), a), ((1, 3), b)]));
        let made = store.pair_conversations(&asked, true).await.unwrap();
        assert_eq!(made.len(), 3);
        assert_eq!((made[&(1, 2)], made[&(1, 3)]), (a, b));
        let new = made[&(4, 5)];
        assert!(new != a && new != b);
        assert_eq!(
            store.pair_conversation(4, 5, false).await.unwrap(),
            Some(new)
        );
        let count = conversation::Entity::find()
            .all(&store.db)
            .await
            .unwrap()
            .len();
        assert_eq!(count, 3, "each pair once");
        store.close().await;
    }

    /// A batch whose rows break a unique key fails as a duplicate, as through sea-orm (the
    /// pipeline retries those), and rolls back: nothing stored, no seq reserved.
    #[tokio::test]
    async fn a_batch_breaking_a_unique_key_is_a_duplicate_and_stores_nothing() {
        for (store, _file) in sqlite_stores().await {
            a_clash_stores_nothing(&store).await;
            store.close().await;
        }
    }

    async fn a_clash_stores_nothing(store: &Store) {
        let conv = store.pair_conversation(1, 2, true).await.unwrap().unwrap();
        let message = |msg| NewMessage {
            sender: 1,
            conv,
            toid: Some(2),
            groupid: None,
            msg,
            txnid: None,
        };
        store.write_batch(&[message("first")], 1).await.unwrap();
        // Forget the seq handed out: the next batch is given seq 1 again.
        conversation::Entity::update_many()
            .col_expr(conversation::Column::LastSeq, Expr::val(0i64))
            .exec(&store.db)
            .await
            .unwrap();
        let clash = store.write_batch(&[message("second")], 2).await;
        assert!(matches!(clash, Err(StoreError::Duplicate(_))), "{clash:?}");
        let stored = message::Entity::find().all(&store.db).await.unwrap();
        assert_eq!(stored.len(), 1);
        assert_eq!(stored[0].msg, "first");
        assert_eq!(
            store.last_seq(conv).await.unwrap(),
            0,
            "the reservation rolled back"
        );
        conversation::Entity::update_many()
            .col_expr(conversation::Column::LastSeq, Expr::val(1i64))
            .exec(&store.db)
            .await
            .unwrap();
        let written = store.write_batch(&[message("third")], 3).await.unwrap();
        assert!(
            matches!(&written[0], Written::Stored(m) if m.seq == 2),
            "{written:?}"
        );
    }

    /// The kept INSERT text has one parameter per column and row (NULLs included: a NULL
    /// written into the text would make it wrong for the next batch), and is reused.
    #[tokio::test]
    async fn the_insert_text_is_built_once_per_row_count_with_a_parameter_per_value() {
        let store = Store::connect("sqlite::memory:", 1, SqliteTuning::default())
            .await
            .expect("an in-memory database");
        let texts = &store.inserts;
        let sql = insert_sql(texts, store.backend(), 3);
        assert_eq!(sql.matches('?').count(), 3 * MESSAGE_COLUMNS.len(), "{sql}");
        assert!(!sql.contains("NULL"), "{sql}");
        assert!(sql.starts_with("INSERT OR FAIL INTO \"message\""), "{sql}");
        assert!(
            Arc::ptr_eq(&sql, &insert_sql(texts, store.backend(), 3)),
            "kept"
        );
        assert_eq!(
            insert_sql(texts, store.backend(), 1).matches('?').count(),
            MESSAGE_COLUMNS.len()
        );
    }
}
