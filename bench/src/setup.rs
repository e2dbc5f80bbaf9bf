//! Setting up a scenario through the protocol itself: register users, log them in (spread over
//! the URLs), befriend, create and join groups. Names carry the run's unique prefix, so that
//! runs against the same database never collide.

use std::sync::Arc;

use anyhow::Context;
use futures_util::{StreamExt, TryStreamExt, stream};
use serde_json::{Value, json};

use crate::client::Client;
use crate::progress::Progress;
use crate::scenario::Ctx;

/// A logged-in setup client and its login reply.
pub struct LoggedIn {
    /// Its connection (further setup requests, then the scenario's loop).
    pub client: Client,
    /// The LOGIN_MSG_ACK.
    pub reply: Value,
}

/// A prefix no other run uses: `b` + time + process id, in base 36.
pub fn unique_prefix() -> String {
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    format!(
        "b{}{}-",
        base36(millis % 36u64.pow(8)),
        base36(u64::from(std::process::id()) % 36u64.pow(3))
    )
}

fn base36(mut n: u64) -> String {
    const DIGITS: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        out.push(DIGITS[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8(out).unwrap_or_default()
}

/// Registers `names` (each on its own short connection, `setup_concurrency` at a time); their
/// ids in the same order. Counter `counter` of `progress` counts registrations.
pub async fn register(
    ctx: &Ctx,
    names: &[String],
    progress: &Arc<Progress>,
    counter: usize,
) -> anyhow::Result<Vec<i64>> {
    progress.phase("register");
    stream::iter(names.iter().enumerate())
        .map(|(i, name)| {
            let progress = progress.clone();
            async move {
                let mut client = Client::open(ctx.target_of(i), &ctx.sources).await?;
                let id = client
                    .register(name)
                    .await
                    .with_context(|| format!("registering {name}"))?;
                progress.add(counter, 1);
                anyhow::Ok(id)
            }
        })
        .buffered(ctx.common.setup_concurrency.max(1))
        .try_collect()
        .await
}

/// Opens a connection per user (user `i` on URL `i mod n`) and logs it in.
pub async fn login(
    ctx: &Ctx,
    ids: &[i64],
    progress: &Arc<Progress>,
    counter: usize,
) -> anyhow::Result<Vec<LoggedIn>> {
    progress.phase("login");
    stream::iter(ids.iter().enumerate())
        .map(|(i, &id)| {
            let progress = progress.clone();
            async move {
                let mut client = Client::open(ctx.target_of(i), &ctx.sources).await?;
                let reply = client
                    .login(id)
                    .await
                    .with_context(|| format!("logging in user {id}"))?;
                progress.add(counter, 1);
                anyhow::Ok(LoggedIn { client, reply })
            }
        })
        .buffered(ctx.common.setup_concurrency.max(1))
        .try_collect()
        .await
}

/// Sends `requests[i]` (a list each) on `clients[i]`, clients in parallel, each list in order;
/// every request must succeed. The replies, in the same shape.
pub async fn each(
    ctx: &Ctx,
    clients: &mut [LoggedIn],
    requests: Vec<Vec<Value>>,
    progress: &Arc<Progress>,
    counter: usize,
) -> anyhow::Result<Vec<Vec<Value>>> {
    stream::iter(clients.iter_mut().zip(requests))
        .map(|(c, reqs)| {
            let progress = progress.clone();
            async move {
                let mut replies = Vec::with_capacity(reqs.len());
                for req in reqs {
                    replies.push(c.client.call(req).await?);
                    progress.add(counter, 1);
                }
                anyhow::Ok(replies)
            }
        })
        .buffered(ctx.common.setup_concurrency.max(1))
        .try_collect()
        .await
}

/// CREATE_GROUP_MSG; the new group's id.
pub async fn create_group(client: &mut Client, name: &str) -> anyhow::Result<i64> {
    let reply = client
        .call(json!({"msgid": 8, "groupname": name, "groupdesc": "chat-bench"}))
        .await?;
    reply["group"]["id"]
        .as_i64()
        .context("CREATE_GROUP ack without group.id")
}

/// ADD_GROUP_MSG.
pub fn join_group(gid: i64) -> Value {
    json!({"msgid": 9, "groupid": gid})
}

/// ADD_FRIEND_MSG.
pub fn add_friend(id: i64) -> Value {
    json!({"msgid": 7, "friendid": id})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_are_short_and_distinct() {
        let a = unique_prefix();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = unique_prefix();
        assert_ne!(a, b);
        assert!(a.len() < 16 && a.starts_with('b') && a.ends_with('-'));
        assert_eq!(base36(35), "z");
        assert_eq!(base36(36), "10");
    }
}
