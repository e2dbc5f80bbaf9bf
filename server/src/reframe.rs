//! The read side of a connection: large client frames handed to tungstenite as fragments.
//!
//! tungstenite reserves a frame's whole length in its input buffer and keeps that capacity for
//! the life of the connection, so one 1 MiB frame (answered 413, the connection staying open,
//! as the protocol requires) would leave 1 MiB behind per connection: an easy way to exhaust
//! memory without even logging in. Here every masked data frame longer than [`READ_CHUNK`] is
//! cut into fragments of that size on its way in (same opcode, then continuations; the last
//! keeps the original FIN; the same mask key, since every cut is at a multiple of 4 bytes).
//! tungstenite reassembles the message in a buffer it frees afterwards, and every limit still
//! applies to the whole message. Frames past the hard limit, control frames and unmasked
//! frames pass unchanged, for tungstenite to refuse as before.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, ReadBuf};

/// Largest client frame payload handed on in one piece (a multiple of 4, for the mask).
pub const READ_CHUNK: usize = 4 * 1024;
/// Bytes read from the socket at a time.
const READ_SIZE: usize = 4096;

/// A parsed client frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Header {
    /// First byte: FIN, RSV bits, opcode.
    b0: u8,
    /// Payload length.
    len: u64,
    /// The mask key, when masked.
    mask: Option<[u8; 4]>,
    /// Bytes of the header itself.
    size: usize,
}

impl Header {
    /// Parses a header at the start of `bytes` (`None`: not all of it is there yet).
    fn parse(bytes: &[u8]) -> Option<Header> {
        let (&b0, rest) = bytes.split_first()?;
        let (&b1, rest) = rest.split_first()?;
        let (len, ext) = match b1 & 0x7F {
            126 => (
                u64::from(u16::from_be_bytes(rest.get(..2)?.try_into().ok()?)),
                2,
            ),
            127 => (u64::from_be_bytes(rest.get(..8)?.try_into().ok()?), 8),
            n => (u64::from(n), 0),
        };
        let masked = b1 & 0x80 != 0;
        let mask = if masked {
            Some(rest.get(ext..ext + 4)?.try_into().ok()?)
        } else {
            None
        };
        Some(Header {
            b0,
            len,
            mask,
            size: 2 + ext + if masked { 4 } else { 0 },
        })
    }

    /// Encodes a masked header with this first byte and length.
    fn encode(b0: u8, len: usize, mask: [u8; 4]) -> ([u8; 14], usize) {
        let mut out = [0u8; 14];
        out[0] = b0;
        let at = if len <= 125 {
            out[1] = 0x80 | len as u8;
            2
        } else if let Ok(short) = u16::try_from(len) {
            out[1] = 0x80 | 126;
            out[2..4].copy_from_slice(&short.to_be_bytes());
            4
        } else {
            out[1] = 0x80 | 127;
            out[2..10].copy_from_slice(&(len as u64).to_be_bytes());
            10
        };
        out[at..at + 4].copy_from_slice(&mask);
        (out, at + 4)
    }
}

/// A large frame being handed on as fragments.
#[derive(Debug)]
struct Large {
    /// Payload bytes not yet handed on.
    left: u64,
    /// The original first byte (FIN, RSV, opcode).
    b0: u8,
    mask: [u8; 4],
    /// Whether the first fragment has been handed on.
    started: bool,
}

/// The state of the inbound byte stream.
#[derive(Debug, Default)]
pub struct Reframer {
    /// Bytes read from the socket and not yet handed on (from `pos`); freed when drained.
    raw: Vec<u8>,
    pos: usize,
    /// Header bytes to hand on before anything else.
    header: ([u8; 14], usize, usize),
    /// Bytes to hand on unchanged (the rest of a small frame).
    pass: u64,
    /// Payload bytes of the current fragment still to hand on.
    chunk: u64,
    /// The large frame being cut, if any.
    large: Option<Large>,
    /// The hard limit: frames longer than it pass unchanged (tungstenite refuses them).
    hard_limit: u64,
    /// The socket has ended.
    eof: bool,
}

impl Reframer {
    /// A reframer passing frames over `hard_limit` bytes unchanged.
    pub fn new(hard_limit: usize) -> Self {
        Self {
            hard_limit: hard_limit as u64,
            ..Self::default()
        }
    }

    /// Capacity held between reads (zero once everything read was handed on).
    pub fn buffered_capacity(&self) -> usize {
        self.raw.capacity()
    }

    /// Reads from `inner` into `buf`, cutting large frames.
    pub fn poll_read<S: AsyncRead + Unpin>(
        &mut self,
        mut inner: Pin<&mut S>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            if self.produce(buf) > 0 || buf.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
            if self.eof {
                // Whatever is left is an incomplete frame: hand it on as it is, then EOF.
                let rest = &self.raw[self.pos..];
                let n = rest.len().min(buf.remaining());
                buf.put_slice(&rest[..n]);
                self.pos += n;
                self.release();
                return Poll::Ready(Ok(()));
            }
            // What is left is at most the start of a header: keep it at the front.
            self.raw.drain(..self.pos);
            self.pos = 0;
            let start = self.raw.len();
            self.raw.resize(start + READ_SIZE, 0);
            let mut read = ReadBuf::new(&mut self.raw[start..]);
            let polled = inner.as_mut().poll_read(cx, &mut read);
            let got = read.filled().len();
            self.raw.truncate(start + got);
            if let Poll::Pending | Poll::Ready(Err(_)) = polled {
                // An idle connection keeps no read buffer here (at most a partial header).
                self.release();
                self.raw.shrink_to_fit();
            }
            ready!(polled)?;
            if got == 0 {
                self.eof = true;
            }
        }
    }

    /// Frees the read buffer once everything in it was handed on.
    fn release(&mut self) {
        if self.pos >= self.raw.len() {
            self.raw = Vec::new();
            self.pos = 0;
        }
    }

    /// Hands on what the buffered bytes allow; the number of bytes put into `buf`.
    fn produce(&mut self, buf: &mut ReadBuf<'_>) -> usize {
        let before = buf.filled().len();
        while buf.remaining() > 0 {
            let (bytes, from, to) = self.header;
            if from < to {
                let n = (to - from).min(buf.remaining());
                buf.put_slice(&bytes[from..from + n]);
                self.header.1 += n;
                continue;
            }
            let avail = self.raw.len() - self.pos;
            if self.pass > 0 || self.chunk > 0 {
                let want = if self.pass > 0 { self.pass } else { self.chunk };
                let n = (want.min(avail as u64) as usize).min(buf.remaining());
                if n == 0 {
                    break;
                }
                buf.put_slice(&self.raw[self.pos..self.pos + n]);
                self.pos += n;
                if self.pass > 0 {
                    self.pass -= n as u64;
                } else {
                    self.chunk -= n as u64;
                }
                continue;
            }
            if let Some(large) = &mut self.large {
                if large.left == 0 {
                    self.large = None;
                    continue;
                }
                let take = large.left.min(READ_CHUNK as u64);
                large.left -= take;
                let fin = large.left == 0 && large.b0 & 0x80 != 0;
                let opcode = if large.started { 0 } else { large.b0 & 0x0F };
                let b0 = (large.b0 & 0x70) | opcode | if fin { 0x80 } else { 0 };
                large.started = true;
                let (bytes, len) = Header::encode(b0, take as usize, large.mask);
                self.header = (bytes, 0, len);
                self.chunk = take;
                continue;
            }
            // At a frame boundary.
            let Some(h) = Header::parse(&self.raw[self.pos..]) else {
                break;
            };
            let data = h.b0 & 0x08 == 0;
            match h.mask {
                Some(mask) if data && h.len > READ_CHUNK as u64 && h.len <= self.hard_limit => {
                    self.pos += h.size;
                    self.large = Some(Large {
                        left: h.len,
                        b0: h.b0,
                        mask,
                        started: false,
                    });
                }
                _ => self.pass = h.size as u64 + h.len,
            }
        }
        self.release();
        buf.filled().len() - before
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;
    use tokio_tungstenite::tungstenite::protocol::frame::FrameHeader;

    /// A masked client frame.
    fn frame(b0: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
        let (head, n) = Header::encode(b0, payload.len(), mask);
        let mut out = head[..n].to_vec();
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    /// Reads everything through a reframer, `step` bytes of output at a time.
    async fn through(input: Vec<u8>, step: usize) -> (Vec<u8>, Reframer) {
        struct R<'a>(&'a [u8], Reframer);
        impl AsyncRead for R<'_> {
            fn poll_read(
                mut self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &mut ReadBuf<'_>,
            ) -> Poll<io::Result<()>> {
                let this = &mut *self;
                // The socket gives at most 1,000 bytes per read.
                let mut src = &this.0[..this.0.len().min(1000)];
                let before = src.len();
                let polled = this.1.poll_read(Pin::new(&mut src), cx, buf);
                let used = before - src.len();
                this.0 = &this.0[used..];
                polled
            }
        }
        let mut r = R(&input, Reframer::new(1 << 20));
        let mut out = Vec::new();
        let mut piece = vec![0u8; step];
        loop {
            let n = r.read(&mut piece).await.unwrap();
            if n == 0 {
                break;
            }
            out.extend_from_slice(&piece[..n]);
        }
        (out, r.1)
    }

    /// Splits client frames: (first byte, unmasked payload).
    fn frames(mut bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
        let mut out = Vec::new();
        while !bytes.is_empty() {
            let h = Header::parse(bytes).expect("a whole header");
            let body = &bytes[h.size..h.size + h.len as usize];
            let mask = h.mask.unwrap_or([0; 4]);
            let payload = body.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]);
            out.push((h.b0, payload.collect()));
            bytes = &bytes[h.size + h.len as usize..];
        }
        out
    }

    #[test]
    fn headers_round_trip_and_agree_with_tungstenite() {
        for len in [0, 5, 125, 126, 65_535, 65_536, 1 << 20] {
            let (bytes, n) = Header::encode(0x81, len, [1, 2, 3, 4]);
            let h = Header::parse(&bytes[..n]).unwrap();
            assert_eq!(
                (h.b0, h.len, h.mask, h.size),
                (0x81, len as u64, Some([1, 2, 3, 4]), n)
            );
            assert!(Header::parse(&bytes[..n - 1]).is_none());
            let mut cursor = std::io::Cursor::new(&bytes[..n]);
            let (theirs, theirs_len) = FrameHeader::parse(&mut cursor).unwrap().unwrap();
            assert_eq!(theirs_len, len as u64);
            assert_eq!(theirs.mask, Some([1, 2, 3, 4]));
        }
    }

    #[tokio::test]
    async fn small_frames_pass_unchanged_whatever_the_read_sizes() {
        let mut input = Vec::new();
        for i in 0..50u8 {
            input.extend(frame(
                0x81,
                &vec![b'a' + i % 26; 100 + i as usize],
                [i, 7, 9, 11],
            ));
            input.extend(frame(0x89, b"ping", [1, 1, 1, 1]));
        }
        for step in [1, 7, 512, 4096] {
            let (out, r) = through(input.clone(), step).await;
            assert_eq!(out, input, "step {step}");
            assert_eq!(r.buffered_capacity(), 0);
        }
    }

    #[tokio::test]
    async fn a_large_frame_becomes_fragments_with_the_same_message() {
        let text: Vec<u8> = (0..200_003u32).map(|i| b'a' + (i % 26) as u8).collect();
        let mut input = frame(0x81, &text, [0x12, 0x34, 0x56, 0x78]);
        input.extend(frame(0x89, b"after", [9, 9, 9, 9]));
        for step in [3, 512, 70_000] {
            let (out, _) = through(input.clone(), step).await;
            let f = frames(&out);
            let n = text.len().div_ceil(READ_CHUNK);
            assert_eq!(f.len(), n + 1, "step {step}");
            assert_eq!(f[0].0, 0x01, "text, not final");
            for piece in &f[1..n - 1] {
                assert_eq!(piece.0, 0x00, "continuation, not final");
            }
            assert_eq!(f[n - 1].0, 0x80, "final continuation");
            let whole: Vec<u8> = f[..n].iter().flat_map(|p| p.1.clone()).collect();
            assert_eq!(whole, text);
            assert!(f[..n].iter().all(|p| p.1.len() <= READ_CHUNK));
            assert_eq!(f[n], (0x89, b"after".to_vec()));
        }
    }

    #[tokio::test]
    async fn a_large_fragment_keeps_its_place_in_the_message() {
        // Text not final (small), then a large continuation that is final.
        let mut input = frame(0x01, b"head", [1, 2, 3, 4]);
        input.extend(frame(0x80, &vec![b'x'; 40_000], [5, 6, 7, 8]));
        let (out, _) = through(input, 4096).await;
        let f = frames(&out);
        assert_eq!(f[0], (0x01, b"head".to_vec()));
        assert!(f[1..f.len() - 1].iter().all(|p| p.0 == 0x00));
        assert_eq!(f.last().unwrap().0, 0x80);
        assert_eq!(f[1..].iter().map(|p| p.1.len()).sum::<usize>(), 40_000);
    }

    #[tokio::test]
    async fn a_stalled_partial_header_keeps_only_its_bytes() {
        let (mut client, server) = tokio::io::duplex(64);
        let mut io = crate::socket::Gathered::new(server, 1 << 20);
        tokio::io::AsyncWriteExt::write_all(&mut client, &[0x81, 0xFE, 0x10])
            .await
            .unwrap();
        assert!(
            crate::socket::reads_nothing(&mut io).await,
            "nothing to hand on yet"
        );
        assert!(io.read_capacity() < 64, "{}", io.read_capacity());
    }

    #[tokio::test]
    async fn frames_past_the_hard_limit_and_unmasked_ones_pass_unchanged() {
        let mut big = frame(0x81, &vec![b'y'; (1 << 20) + 1], [1, 2, 3, 4]);
        let (out, _) = through(big.clone(), 4096).await;
        assert_eq!(out, big);
        big.clear();
        big.extend_from_slice(&[0x81, 126, 0x4E, 0x20]);
        big.extend(vec![b'z'; 20_000]);
        let (out, _) = through(big.clone(), 4096).await;
        assert_eq!(out, big);
    }
}
