//! `--send TOID:TEXT`: log in, send one 1:1 message, wait for its ack, and report, without
//! drawing anything (for scripts).

use std::str::FromStr;
use std::time::Duration;

use crate::commands;
use crate::connection::{Connection, ConnectionConfig};
use crate::protocol::{LoginBy, Password, Request, ServerMessage, describe};
use crate::session::{ConnEvent, LinkStatus};

/// A message to send: `TOID:TEXT` (the text keeps any further colons).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendSpec {
    /// The recipient's user id.
    pub toid: i64,
    /// The text.
    pub text: String,
}

/// Why `TOID:TEXT` could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendSpecError {
    /// No colon.
    #[error("expected TOID:TEXT, e.g. 2:hello")]
    Shape,
    /// The id is not a number.
    #[error("TOID must be a user id (a number), not {0:?}")]
    Id(String),
    /// The text is empty or too long.
    #[error(transparent)]
    Text(#[from] commands::CommandError),
}

impl FromStr for SendSpec {
    type Err = SendSpecError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (id, text) = s.split_once(':').ok_or(SendSpecError::Shape)?;
        let toid = id
            .trim()
            .parse()
            .map_err(|_| SendSpecError::Id(id.to_owned()))?;
        Ok(SendSpec {
            toid,
            text: commands::message(text)?,
        })
    }
}

/// What the server said about the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    /// The stored message's id.
    pub message_id: i64,
    /// Its seq in the conversation.
    pub seq: i64,
    /// Its time.
    pub time: String,
}

/// Why the message was not sent; `exit_code` says how a script sees it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// The login was refused.
    #[error("login refused: {0}")]
    Login(String),
    /// The server refused the message.
    #[error("message refused (errno {errno}): {errmsg}")]
    Refused {
        /// The error number.
        errno: i64,
        /// The server's words.
        errmsg: String,
    },
    /// The link dropped while a request could not be resent.
    #[error("{0}")]
    Failed(String),
    /// No answer in time.
    #[error("no answer from the server within {secs}s (last problem: {last})")]
    Timeout {
        /// The time allowed.
        secs: u64,
        /// The last link problem seen.
        last: String,
    },
}

impl SendError {
    /// 1 when the server said no, 3 when it could not be reached in time.
    pub fn exit_code(&self) -> u8 {
        match self {
            SendError::Login(_) | SendError::Refused { .. } | SendError::Failed(_) => 1,
            SendError::Timeout { .. } => 3,
        }
    }
}

/// Logs in, sends `spec`, and waits for the ack (reconnecting and resending by txnid if the
/// link drops), for at most `timeout`.
pub async fn send_once(
    url: &str,
    who: LoginBy,
    password: Password,
    spec: SendSpec,
    timeout: Duration,
) -> Result<Receipt, SendError> {
    let (connection, mut events) = Connection::spawn(ConnectionConfig::new(url));
    connection.send(Request::Login { who, password });
    let deadline = tokio::time::sleep(timeout);
    tokio::pin!(deadline);
    let mut last = "none".to_owned();
    let result = loop {
        let event = tokio::select! {
            e = events.recv() => e,
            _ = &mut deadline => break Err(SendError::Timeout { secs: timeout.as_secs(), last }),
        };
        let Some(event) = event else {
            break Err(SendError::Failed("the connection task ended".into()));
        };
        match event {
            ConnEvent::Status(LinkStatus::Reconnecting { reason, .. }) => last = reason,
            ConnEvent::Reply {
                request: Request::Login { .. },
                reply,
            } => {
                let (errno, errmsg) = reply.status();
                if errno != 0 {
                    break Err(SendError::Login(describe(errno, errmsg)));
                }
                connection.send(Request::OneChat {
                    toid: spec.toid,
                    msg: spec.text.clone(),
                    txnid: None,
                });
            }
            ConnEvent::Reply {
                request: Request::OneChat { .. },
                reply,
            } => match reply {
                ServerMessage::Ack(a) if a.errno == 0 => {
                    break Ok(Receipt {
                        message_id: a.message_id.unwrap_or_default(),
                        seq: a.seq.unwrap_or_default(),
                        time: a.time.unwrap_or_default(),
                    });
                }
                other => {
                    let (errno, errmsg) = other.status();
                    break Err(SendError::Refused {
                        errno,
                        errmsg: describe(errno, errmsg),
                    });
                }
            },
            ConnEvent::Failed { reason, .. } => break Err(SendError::Failed(reason)),
            ConnEvent::LoggedOut { reason } => break Err(SendError::Login(reason)),
            _ => {}
        }
    };
    connection.close().await;
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_send_spec_is_an_id_and_text_that_keeps_its_colons() {
        assert_eq!(
            "2:at 10:30".parse(),
            Ok(SendSpec {
                toid: 2,
                text: "at 10:30".into()
            })
        );
        assert_eq!("hello".parse::<SendSpec>(), Err(SendSpecError::Shape));
        assert!(matches!(
            "bob:hi".parse::<SendSpec>(),
            Err(SendSpecError::Id(_))
        ));
        assert!(matches!(
            "2:".parse::<SendSpec>(),
            Err(SendSpecError::Text(_))
        ));
    }

    #[tokio::test]
    async fn an_unreachable_server_times_out_with_the_reason() {
        let err = send_once(
            "ws://127.0.0.1:1/ws",
            LoginBy::Id(1),
            Password("pw".into()),
            "2:hi".parse().unwrap(),
            Duration::from_millis(600),
        )
        .await
        .unwrap_err();
        assert_eq!(err.exit_code(), 3);
        assert!(err.to_string().contains("cannot connect"), "{err}");
    }
}
