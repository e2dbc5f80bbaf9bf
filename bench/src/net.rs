//! Connecting: WebSocket targets on loopback, and the spread of client sockets over loopback
//! source addresses (127.0.0.2, .3, …) so that more than ~28,000 connections can be opened
//! (each source address has its own range of ephemeral ports).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{Context, bail};
use futures_util::{FutureExt, Stream, StreamExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{WebSocketStream, client_async_with_config};

/// A client WebSocket.
pub type Ws = WebSocketStream<TcpStream>;

/// The next item `stream` yields without waiting, when a burst that has handled `handled`
/// items may handle one more (`handled < max`); `None` ends the burst. Reading ahead only for
/// an item the burst will handle is what keeps the burst's last read from being dropped.
pub fn next_ready<S: Stream + Unpin>(
    stream: &mut S,
    handled: usize,
    max: usize,
) -> Option<Option<S::Item>> {
    if handled >= max {
        return None;
    }
    stream.next().now_or_never()
}

/// Read buffer of each client socket: small, so that 20,000 idle sockets cost little here,
/// and because tungstenite zero-fills the buffer's free capacity before every read (even one
/// that finds nothing): at 8 KiB that `memset` was 5 % of the generator at 50,000 msgs/s. A
/// chat frame is ~200 bytes; larger frames grow the buffer as they need.
const READ_BUFFER: usize = 2048;

/// One server endpoint: its `ws://` URL and resolved address.
#[derive(Debug, Clone)]
pub struct Target {
    /// The URL as given (`ws://127.0.0.1:8080/ws`).
    pub url: String,
    /// The address it resolves to (always loopback).
    pub addr: SocketAddr,
}

impl Target {
    /// Parses and resolves a `ws://host:port/path` URL; only loopback addresses are accepted
    /// (this tool measures a server on the same machine, and must never load anything else).
    pub async fn resolve(url: &str) -> anyhow::Result<Target> {
        let rest = url
            .strip_prefix("ws://")
            .with_context(|| format!("{url}: only ws:// URLs are supported"))?;
        let hostport = rest.split('/').next().unwrap_or(rest);
        let hostport = if hostport.contains(':') {
            hostport.to_owned()
        } else {
            format!("{hostport}:80")
        };
        let addr = tokio::net::lookup_host(&hostport)
            .await
            .with_context(|| format!("resolving {hostport}"))?
            .find(|a| a.is_ipv4())
            .with_context(|| format!("{hostport} has no IPv4 address"))?;
        if !addr.ip().is_loopback() {
            bail!("{url} is not a loopback address: chat-bench only loads servers on this machine");
        }
        Ok(Target {
            url: url.to_owned(),
            addr,
        })
    }

    /// The `http://host:port` base of this target (for `/metrics`).
    pub fn http_base(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// Hands out loopback source addresses round-robin.
#[derive(Debug, Clone)]
pub struct Sources {
    addrs: Arc<Vec<IpAddr>>,
    next: Arc<AtomicUsize>,
}

impl Sources {
    /// `count` addresses from 127.0.0.2 on (0: let the kernel choose, i.e. 127.0.0.1).
    pub fn new(count: usize) -> Sources {
        Sources::with_offset(0, count)
    }

    /// `count` addresses from 127.0.0.(2 + offset) on, wrapping within 127.0.0.2–.251.
    pub fn with_offset(offset: usize, count: usize) -> Sources {
        let addrs = (0..count.min(250))
            .map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + ((offset + i) % 250) as u8)))
            .collect();
        Sources {
            addrs: Arc::new(addrs),
            next: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// The next source address, if any are configured.
    pub fn next(&self) -> Option<IpAddr> {
        if self.addrs.is_empty() {
            return None;
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        Some(self.addrs[i % self.addrs.len()])
    }

    /// How many source addresses are in use (0: the kernel's choice).
    pub fn len(&self) -> usize {
        self.addrs.len()
    }

    /// Whether the kernel chooses the source address.
    pub fn is_empty(&self) -> bool {
        self.addrs.is_empty()
    }
}

/// Opens a WebSocket to `target` from the next source address.
pub async fn connect(target: &Target, sources: &Sources) -> anyhow::Result<Ws> {
    let socket = TcpSocket::new_v4().context("creating a socket")?;
    if let Some(ip) = sources.next() {
        socket
            .bind(SocketAddr::new(ip, 0))
            .with_context(|| format!("binding a source port on {ip}"))?;
    }
    let stream = socket
        .connect(target.addr)
        .await
        .with_context(|| format!("connecting to {}", target.addr))?;
    stream.set_nodelay(true)?;
    let config = WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .max_message_size(Some(64 << 20))
        .max_frame_size(Some(64 << 20));
    let (ws, _) = client_async_with_config(target.url.as_str(), stream, Some(config))
        .await
        .with_context(|| format!("WebSocket handshake with {}", target.url))?;
    Ok(ws)
}

/// `GET path` on an HTTP base (`http://127.0.0.1:8080`), without a client library: the body.
pub async fn http_get(base: &str, path: &str) -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let host = base.strip_prefix("http://").unwrap_or(base);
    let mut stream = TcpStream::connect(host).await?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    stream.write_all(req.as_bytes()).await?;
    let mut body = Vec::new();
    stream.read_to_end(&mut body).await?;
    let text = String::from_utf8_lossy(&body).into_owned();
    let (head, rest) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        bail!(
            "GET {path}: {}",
            head.lines().next().unwrap_or("no status line")
        );
    }
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        return Ok(dechunk(rest));
    }
    Ok(rest.to_owned())
}

/// Decodes a chunked HTTP body.
fn dechunk(mut rest: &str) -> String {
    let mut out = String::new();
    while let Some((size, after)) = rest.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || after.len() < n {
            break;
        }
        out.push_str(&after[..n]);
        rest = after[n..].trim_start_matches("\r\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn only_loopback_targets_are_accepted() {
        assert!(Target::resolve("ws://127.0.0.1:8080/ws").await.is_ok());
        assert!(Target::resolve("ws://10.0.0.1:8080/ws").await.is_err());
        assert!(Target::resolve("http://127.0.0.1:8080/ws").await.is_err());
    }

    #[test]
    fn a_burst_reads_no_item_beyond_the_last_it_handles() {
        let mut stream = futures_util::stream::iter(1..=5).chain(futures_util::stream::pending());
        let mut handled = Vec::new();
        let mut item = Some(0);
        for count in 1.. {
            handled.extend(item);
            match next_ready(&mut stream, count, 3) {
                Some(next) => item = next,
                None => break,
            }
        }
        assert_eq!(handled, [0, 1, 2]);
        assert_eq!(stream.next().now_or_never(), Some(Some(3)));
        assert_eq!(next_ready(&mut stream, 0, 3), Some(Some(4)));
        assert_eq!(next_ready(&mut stream, 0, 3), Some(Some(5)));
        assert_eq!(
            next_ready(&mut stream, 0, 3),
            None,
            "nothing ready: the burst ends"
        );
    }

    #[test]
    fn sources_rotate_from_127_0_0_2() {
        let s = Sources::new(2);
        let got: Vec<_> = (0..3).map(|_| s.next().unwrap().to_string()).collect();
        assert_eq!(got, ["127.0.0.2", "127.0.0.3", "127.0.0.2"]);
        assert!(Sources::new(0).next().is_none());
    }

    #[test]
    fn chunked_bodies_are_decoded() {
        assert_eq!(
            dechunk("5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"),
            "hello world"
        );
    }
}
