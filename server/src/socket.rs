//! An upgraded connection's bytes as tungstenite sees them: writes gathered into one write per
//! burst, the buffer released once flushed, long messages cut into fragments, and large client
//! frames handed on as fragments ([`crate::reframe`]), so that an idle connection keeps no
//! buffer sized by the largest message it ever sent or received.
//!
//! tungstenite keeps the capacity of its buffers for the life of the connection: after one
//! 200 KB login reply an idle connection would hold 200 KB more. Here tungstenite writes each
//! frame at once (`write_buffer_size` 0) into [`Gathered`], frames are at most [`FRAGMENT`]
//! bytes, and [`Gathered`] drops its buffer after each flush.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Bytes;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};

use crate::reframe::Reframer;

/// A served WebSocket connection.
pub type Socket = WebSocketStream<Gathered<TokioIo<Upgraded>>>;

/// Largest payload of one outgoing frame; longer messages are sent in fragments.
pub const FRAGMENT: usize = 2048;
/// Bytes gathered before a write waits for the socket to take them (backpressure).
const GATHER_LIMIT: usize = 64 * 1024;
/// Capacity the buffer starts a burst with (a burst of small frames then grows it once or
/// twice rather than from a few bytes up).
const GATHER_START: usize = 8 * 1024;

/// A byte stream whose writes are gathered in a buffer until flushed (the buffer is freed
/// once it has all been written) and whose large incoming frames are cut into fragments.
#[derive(Debug)]
pub struct Gathered<S> {
    inner: S,
    out: Vec<u8>,
    /// Bytes of `out` already written.
    sent: usize,
    reframe: Reframer,
}

impl<S> Gathered<S> {
    /// Wraps `inner`; incoming frames up to `hard_limit` bytes are cut into fragments.
    pub fn new(inner: S, hard_limit: usize) -> Self {
        Self {
            inner,
            out: Vec::new(),
            sent: 0,
            reframe: Reframer::new(hard_limit),
        }
    }

    /// Capacity of the write buffer (zero once flushed).
    pub fn buffered_capacity(&self) -> usize {
        self.out.capacity()
    }

    /// Capacity held on the read side between reads.
    pub fn read_capacity(&self) -> usize {
        self.reframe.buffered_capacity()
    }
}

impl<S: AsyncWrite + Unpin> Gathered<S> {
    /// Writes everything gathered, then frees the buffer.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.out.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.out[self.sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
        }
        self.out = Vec::new();
        self.sent = 0;
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Gathered<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        this.reframe.poll_read(Pin::new(&mut this.inner), cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Gathered<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.out.len() - self.sent >= GATHER_LIMIT {
            ready!(self.poll_drain(cx))?;
        }
        if self.out.capacity() == 0 {
            self.out.reserve(GATHER_START.max(buf.len()));
        }
        self.out.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A text shared by every recipient of a push, as frame payload without a copy.
struct SharedText(Arc<str>);

impl AsRef<[u8]> for SharedText {
    fn as_ref(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

/// The frames of a text message that all recipients share.
pub fn shared_text_frames(text: Arc<str>) -> TextFrames {
    TextFrames::new(Bytes::from_owner(SharedText(text)))
}

/// The frames of a text message.
pub fn text_frames(text: String) -> TextFrames {
    TextFrames::new(Bytes::from(text))
}

/// The frames of one text message: one frame when it is short, else fragments of at most
/// [`FRAGMENT`] bytes, each cut at a character boundary.
#[derive(Debug)]
pub struct TextFrames {
    /// UTF-8 text not yet framed.
    rest: Bytes,
    /// Whether the first frame has been produced.
    started: bool,
}

impl TextFrames {
    fn new(text: Bytes) -> Self {
        Self {
            rest: text,
            started: false,
        }
    }
}

impl Iterator for TextFrames {
    type Item = Message;

    fn next(&mut self) -> Option<Message> {
        if self.started && self.rest.is_empty() {
            return None;
        }
        let mut cut = self.rest.len().min(FRAGMENT);
        // Never split a character: continuation bytes are 0b10xx_xxxx.
        while cut < self.rest.len() && cut > 0 && self.rest[cut] & 0xC0 == 0x80 {
            cut -= 1;
        }
        let payload = self.rest.split_to(cut);
        let opcode = if self.started {
            OpCode::Data(Data::Continue)
        } else {
            OpCode::Data(Data::Text)
        };
        self.started = true;
        Some(Message::Frame(Frame::message(
            payload,
            opcode,
            self.rest.is_empty(),
        )))
    }
}

/// Whether `reader` stays silent for 50 ms (tests: nothing was handed on yet).
#[cfg(test)]
pub(crate) async fn reads_nothing(reader: &mut (impl AsyncRead + Unpin)) -> bool {
    let mut buf = [0u8; 512];
    tokio::time::timeout(
        std::time::Duration::from_millis(50),
        tokio::io::AsyncReadExt::read(reader, &mut buf),
    )
    .await
    .is_err()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    fn frames(text: &str) -> Vec<Frame> {
        text_frames(text.to_owned())
            .map(|m| match m {
                Message::Frame(f) => f,
                other => panic!("not a frame: {other:?}"),
            })
            .collect()
    }

    #[test]
    fn a_short_text_is_one_final_text_frame() {
        let f = frames("{\"msgid\":5}");
        assert_eq!(f.len(), 1);
        assert!(f[0].header().is_final);
        assert_eq!(f[0].header().opcode, OpCode::Data(Data::Text));
        assert_eq!(f[0].payload(), b"{\"msgid\":5}");
        let empty = frames("");
        assert_eq!(empty.len(), 1);
        assert!(empty[0].header().is_final && empty[0].payload().is_empty());
    }

    #[test]
    fn a_long_text_is_cut_at_character_boundaries_and_reassembles() {
        let text: String = "é€😀a".repeat(2_000);
        let f = frames(&text);
        assert!(f.len() > 1);
        assert_eq!(f[0].header().opcode, OpCode::Data(Data::Text));
        let mut whole = Vec::new();
        for (i, frame) in f.iter().enumerate() {
            assert!(frame.payload().len() <= FRAGMENT);
            assert!(std::str::from_utf8(frame.payload()).is_ok(), "frame {i}");
            assert_eq!(frame.header().is_final, i == f.len() - 1);
            if i > 0 {
                assert_eq!(frame.header().opcode, OpCode::Data(Data::Continue));
            }
            whole.extend_from_slice(frame.payload());
        }
        assert_eq!(whole, text.as_bytes());
        let shared: Vec<Message> = shared_text_frames(Arc::from(text.as_str())).collect();
        assert_eq!(shared.len(), f.len());
    }

    #[tokio::test]
    async fn writes_are_gathered_until_flushed_then_the_buffer_is_freed() {
        let (client, mut server) = tokio::io::duplex(1 << 20);
        let mut io = Gathered::new(client, 1 << 20);
        for _ in 0..50 {
            io.write_all(&[7u8; 1000]).await.unwrap();
        }
        assert!(io.buffered_capacity() >= 50_000);
        assert!(
            reads_nothing(&mut server).await,
            "bytes were written before the flush"
        );
        io.flush().await.unwrap();
        assert_eq!(io.buffered_capacity(), 0);
        let mut got = vec![0u8; 50_000];
        tokio::io::AsyncReadExt::read_exact(&mut server, &mut got)
            .await
            .unwrap();
        assert!(got.iter().all(|&b| b == 7));
    }

    #[tokio::test]
    async fn a_peer_that_does_not_read_blocks_the_writer() {
        let (client, _server) = tokio::io::duplex(1024);
        let mut io = Gathered::new(client, 1 << 20);
        let blocked = tokio::time::timeout(std::time::Duration::from_millis(200), async {
            loop {
                io.write_all(&[1u8; 4096]).await.unwrap();
            }
        })
        .await;
        assert!(blocked.is_err(), "writes never blocked");
        assert!(io.buffered_capacity() < 4 * GATHER_LIMIT);
    }
}
