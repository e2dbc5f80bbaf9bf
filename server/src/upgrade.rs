//! The WebSocket handshake (RFC 6455 §4.2) on an HTTP/1.1 request, done here rather than by
//! axum so that the connection is served over [`socket::Gathered`] with frames we choose.

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};

use crate::socket::{Gathered, Socket};

/// Why a request cannot be upgraded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UpgradeError {
    /// Not a WebSocket handshake (headers missing or wrong).
    #[error("expected a WebSocket upgrade: {0}")]
    NotWebSocket(&'static str),
    /// A WebSocket version other than 13.
    #[error("only WebSocket version 13 is supported")]
    Version,
    /// The HTTP connection cannot be taken over (not HTTP/1.1 through hyper).
    #[error("this connection cannot be upgraded")]
    NotUpgradable,
}

impl IntoResponse for UpgradeError {
    fn into_response(self) -> Response {
        let status = match self {
            Self::Version => StatusCode::UPGRADE_REQUIRED,
            Self::NotWebSocket(_) | Self::NotUpgradable => StatusCode::BAD_REQUEST,
        };
        let mut response = (status, format!("{self}\n")).into_response();
        if self == Self::Version {
            response.headers_mut().insert(
                header::SEC_WEBSOCKET_VERSION,
                HeaderValue::from_static("13"),
            );
        }
        response
    }
}

/// An accepted handshake: the 101 response to send and the connection to take over after it.
pub struct Accepted {
    accept_key: String,
    on_upgrade: OnUpgrade,
}

/// Checks the handshake headers of `request` and takes its connection.
pub fn accept(request: &mut Request<Body>) -> Result<Accepted, UpgradeError> {
    let key = handshake_key(request.headers())?;
    let on_upgrade = request
        .extensions_mut()
        .remove::<OnUpgrade>()
        .ok_or(UpgradeError::NotUpgradable)?;
    Ok(Accepted {
        accept_key: derive_accept_key(key.as_bytes()),
        on_upgrade,
    })
}

/// The `Sec-WebSocket-Key` of a valid version-13 handshake.
fn handshake_key(headers: &HeaderMap) -> Result<HeaderValue, UpgradeError> {
    let has_token = |name: header::HeaderName, token: &str| {
        headers.get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    if !has_token(header::CONNECTION, "upgrade") {
        return Err(UpgradeError::NotWebSocket("no `Connection: upgrade`"));
    }
    if !has_token(header::UPGRADE, "websocket") {
        return Err(UpgradeError::NotWebSocket("no `Upgrade: websocket`"));
    }
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_none_or(|v| v.as_bytes() != b"13")
    {
        return Err(UpgradeError::Version);
    }
    headers
        .get(header::SEC_WEBSOCKET_KEY)
        .filter(|k| !k.is_empty())
        .cloned()
        .ok_or(UpgradeError::NotWebSocket("no `Sec-WebSocket-Key`"))
}

impl Accepted {
    /// Answers 101 and, once the client has it, serves the connection with `serve`.
    pub fn serve<F, Fut>(self, config: WebSocketConfig, serve: F) -> Response
    where
        F: FnOnce(Socket) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let on_upgrade = self.on_upgrade;
        tokio::spawn(async move {
            let Ok(upgraded) = on_upgrade.await else {
                return;
            };
            let hard_limit = config.max_frame_size.unwrap_or(usize::MAX);
            let io = Gathered::new(TokioIo::new(upgraded), hard_limit);
            let socket = WebSocketStream::from_raw_socket(io, Role::Server, Some(config)).await;
            serve(socket).await;
        });
        let accept = HeaderValue::from_str(&self.accept_key).expect("base64 is a header value");
        (
            StatusCode::SWITCHING_PROTOCOLS,
            [
                (header::CONNECTION, HeaderValue::from_static("upgrade")),
                (header::UPGRADE, HeaderValue::from_static("websocket")),
                (header::SEC_WEBSOCKET_ACCEPT, accept),
            ],
        )
            .into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    const GOOD: &[(&str, &str)] = &[
        ("connection", "keep-alive, Upgrade"),
        ("upgrade", "WebSocket"),
        ("sec-websocket-version", "13"),
        ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];

    #[test]
    fn a_browser_handshake_is_accepted_with_the_rfc_accept_key() {
        let key = handshake_key(&headers(GOOD)).unwrap();
        // RFC 6455 §1.3's example.
        assert_eq!(
            derive_accept_key(key.as_bytes()),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn handshakes_missing_a_header_or_of_another_version_are_refused() {
        for missing in 0..GOOD.len() {
            let partial: Vec<_> = GOOD
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != missing)
                .map(|(_, p)| *p)
                .collect();
            assert!(handshake_key(&headers(&partial)).is_err(), "{missing}");
        }
        let mut v8 = GOOD.to_vec();
        v8[2] = ("sec-websocket-version", "8");
        assert_eq!(handshake_key(&headers(&v8)), Err(UpgradeError::Version));
        let response = UpgradeError::Version.into_response();
        assert_eq!(response.status(), StatusCode::UPGRADE_REQUIRED);
        assert_eq!(response.headers()[header::SEC_WEBSOCKET_VERSION], "13");
    }
}
