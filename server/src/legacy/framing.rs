//! Framing of the original TCP protocol, made robust: a streaming reader that cuts a byte stream
//! into JSON objects whatever the reads look like.
//!
//! The original client sends each request as one JSON object followed by one NUL byte, and the
//! original server assumed "one read = one message". Here any number of objects may come in one
//! read, an object may be split over many reads, and objects may be separated by NUL bytes,
//! whitespace, both or nothing. The reader only finds where an object ends (braces and brackets
//! counted outside strings); whether its text is valid JSON is decided afterwards, by the
//! protocol parser.
//!
//! What is not an object is dropped, in runs: bytes up to the next NUL, newline or `{` form one
//! junk run. A NUL byte inside an object ends it early (the original client puts a NUL after
//! every request, so an object cut short by one is a truncated request): it is dropped and the
//! reader resynchronises on the next object. An object longer than `max_object` is skipped to
//! its end without being buffered; one longer than `hard_limit` makes [`Framer::feed`] fail so
//! that the connection can be closed.

/// Bytes of a dropped run or object kept for the log line.
const HEAD: usize = 48;

/// What the reader found in the byte stream.
#[derive(Debug, PartialEq, Eq)]
pub enum Item {
    /// One complete object, from `{` to its matching `}`, not yet parsed.
    Object(Vec<u8>),
    /// Bytes that are not a request; they are dropped.
    Dropped(Dropped),
}

/// Why bytes were dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// Bytes outside any object.
    Junk,
    /// An object ended early by a NUL byte.
    Truncated,
    /// An object longer than the limit.
    TooLarge,
}

impl DropReason {
    /// A short label for logs and metrics.
    pub fn label(self) -> &'static str {
        match self {
            DropReason::Junk => "junk",
            DropReason::Truncated => "truncated",
            DropReason::TooLarge => "too_large",
        }
    }
}

/// A dropped run or object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dropped {
    /// Why it was dropped.
    pub reason: DropReason,
    /// Its length in bytes.
    pub len: usize,
    /// Its first bytes, for the log line.
    pub head: Vec<u8>,
}

/// An object grew past the hard limit: the connection should be closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooBig;

/// Where the reader is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Between objects: NUL bytes and whitespace are skipped.
    Between,
    /// Inside an object that is being buffered.
    Object,
    /// Inside an object past `max_object`: counted, not buffered.
    Oversized,
    /// Inside a junk run.
    Junk,
}

/// The streaming reader of one connection.
#[derive(Debug)]
pub struct Framer {
    /// Longest object passed on, in bytes.
    max_object: usize,
    /// Longest object tolerated at all; past it [`Framer::feed`] fails.
    hard_limit: usize,
    mode: Mode,
    /// The object being read (in [`Mode::Object`]).
    buf: Vec<u8>,
    /// Bytes of the current object or junk run so far.
    len: usize,
    /// The first bytes of the current object or junk run.
    head: Vec<u8>,
    /// Open braces and brackets of the current object.
    depth: usize,
    /// Inside a JSON string.
    in_string: bool,
    /// The previous byte was a backslash inside a string.
    escaped: bool,
}

impl Framer {
    /// A reader passing on objects of at most `max_object` bytes and failing past `hard_limit`.
    pub fn new(max_object: usize, hard_limit: usize) -> Self {
        Framer {
            max_object,
            hard_limit: hard_limit.max(max_object),
            mode: Mode::Between,
            buf: Vec::new(),
            len: 0,
            head: Vec::new(),
            depth: 0,
            in_string: false,
            escaped: false,
        }
    }

    /// Whether the reader is in the middle of an object or junk run.
    pub fn is_mid_object(&self) -> bool {
        self.mode != Mode::Between
    }

    /// Reads `data`, appending what it completes to `out`. Incomplete objects are kept for the
    /// next call.
    pub fn feed(&mut self, data: &[u8], out: &mut Vec<Item>) -> Result<(), TooBig> {
        for &b in data {
            match self.mode {
                Mode::Between => match b {
                    0 | b' ' | b'\t' | b'\r' | b'\n' => {}
                    b'{' => self.start_object(),
                    _ => self.start_junk(b),
                },
                Mode::Junk => match b {
                    0 | b'\n' => self.end_junk(out),
                    b'{' => {
                        self.end_junk(out);
                        self.start_object();
                    }
                    _ => {
                        self.len += 1;
                        self.keep_head(b);
                    }
                },
                Mode::Object | Mode::Oversized => {
                    if b == 0 {
                        self.drop_object(DropReason::Truncated, out);
                        continue;
                    }
                    self.len += 1;
                    if self.len > self.hard_limit {
                        return Err(TooBig);
                    }
                    if self.mode == Mode::Object {
                        if self.len > self.max_object {
                            self.mode = Mode::Oversized;
                            self.buf = Vec::new();
                        } else {
                            self.buf.push(b);
                        }
                    }
                    self.keep_head(b);
                    if self.scan(b) {
                        if self.mode == Mode::Object {
                            out.push(Item::Object(std::mem::take(&mut self.buf)));
                            self.reset();
                        } else {
                            self.drop_object(DropReason::TooLarge, out);
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Tracks strings and nesting; true when `b` closes the object.
    fn scan(&mut self, b: u8) -> bool {
        if self.in_string {
            if self.escaped {
                self.escaped = false;
            } else if b == b'\\' {
                self.escaped = true;
            } else if b == b'"' {
                self.in_string = false;
            }
            return false;
        }
        match b {
            b'"' => self.in_string = true,
            b'{' | b'[' => self.depth += 1,
            b'}' | b']' => {
                self.depth = self.depth.saturating_sub(1);
                return self.depth == 0;
            }
            _ => {}
        }
        false
    }

    fn start_object(&mut self) {
        self.mode = Mode::Object;
        self.buf.clear();
        self.buf.push(b'{');
        self.head.clear();
        self.head.push(b'{');
        self.len = 1;
        self.depth = 1;
        self.in_string = false;
        self.escaped = false;
    }

    fn start_junk(&mut self, b: u8) {
        self.mode = Mode::Junk;
        self.head.clear();
        self.head.push(b);
        self.len = 1;
    }

    fn end_junk(&mut self, out: &mut Vec<Item>) {
        out.push(Item::Dropped(Dropped {
            reason: DropReason::Junk,
            len: self.len,
            head: std::mem::take(&mut self.head),
        }));
        self.reset();
    }

    fn drop_object(&mut self, reason: DropReason, out: &mut Vec<Item>) {
        out.push(Item::Dropped(Dropped {
            reason,
            len: self.len,
            head: std::mem::take(&mut self.head),
        }));
        self.buf = Vec::new();
        self.reset();
    }

    fn keep_head(&mut self, b: u8) {
        if self.head.len() < HEAD {
            self.head.push(b);
        }
    }

    fn reset(&mut self) {
        self.mode = Mode::Between;
        self.len = 0;
        self.depth = 0;
        self.in_string = false;
        self.escaped = false;
        if self.buf.capacity() > 8192 {
            self.buf = Vec::new();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn objects(items: &[Item]) -> Vec<String> {
        items
            .iter()
            .filter_map(|i| match i {
                Item::Object(b) => Some(String::from_utf8(b.clone()).expect("utf-8")),
                Item::Dropped(_) => None,
            })
            .collect()
    }

    fn drops(items: &[Item]) -> Vec<DropReason> {
        items
            .iter()
            .filter_map(|i| match i {
                Item::Dropped(d) => Some(d.reason),
                Item::Object(_) => None,
            })
            .collect()
    }

    fn feed_all(framer: &mut Framer, chunks: &[&[u8]]) -> Vec<Item> {
        let mut out = Vec::new();
        for c in chunks {
            framer.feed(c, &mut out).expect("within the hard limit");
        }
        out
    }

    #[test]
    fn nul_terminated_objects_in_one_read_are_all_found() {
        let mut f = Framer::new(1000, 2000);
        let out = feed_all(&mut f, &[b"{\"a\":1}\0{\"b\":2}\0{\"c\":3}\0"]);
        assert_eq!(objects(&out), ["{\"a\":1}", "{\"b\":2}", "{\"c\":3}"]);
        assert!(drops(&out).is_empty());
        assert!(!f.is_mid_object());
    }

    #[test]
    fn objects_split_anywhere_are_reassembled() {
        let stream = b"{\"msg\":\"a}\\\"{b\",\"n\":[1,{\"x\":2}]}\0{\"k\":\"\\\\\"}\0";
        for cut in 0..stream.len() {
            let mut f = Framer::new(1000, 2000);
            let out = feed_all(&mut f, &[&stream[..cut], &stream[cut..]]);
            assert_eq!(
                objects(&out),
                [
                    "{\"msg\":\"a}\\\"{b\",\"n\":[1,{\"x\":2}]}",
                    "{\"k\":\"\\\\\"}"
                ],
                "cut at {cut}"
            );
        }
        let mut f = Framer::new(1000, 2000);
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(objects(&feed_all(&mut f, &bytes)).len(), 2);
    }

    #[test]
    fn whitespace_or_nothing_may_separate_objects() {
        let mut f = Framer::new(1000, 2000);
        let out = feed_all(
            &mut f,
            &[b"  {\"a\":1}\n\r\t{\"b\":2}{\"c\":3} \0 \0{\"d\":4}"],
        );
        assert_eq!(
            objects(&out),
            ["{\"a\":1}", "{\"b\":2}", "{\"c\":3}", "{\"d\":4}"]
        );
    }

    #[test]
    fn junk_is_dropped_in_runs_and_objects_after_it_survive() {
        let mut f = Framer::new(1000, 2000);
        let out = feed_all(&mut f, &[b"hello world\0[1,2]\n42{\"a\":1}\0"]);
        assert_eq!(objects(&out), ["{\"a\":1}"]);
        assert_eq!(drops(&out), [DropReason::Junk; 3]);
        match &out[0] {
            Item::Dropped(d) => assert_eq!((d.len, d.head.as_slice()), (11, &b"hello world"[..])),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_nul_inside_an_object_drops_it_and_the_next_one_is_read() {
        let mut f = Framer::new(1000, 2000);
        let out = feed_all(&mut f, &[b"{\"msgid\":1,\"id\":\0{\"msgid\":4}\0"]);
        assert_eq!(objects(&out), ["{\"msgid\":4}"]);
        assert_eq!(drops(&out), [DropReason::Truncated]);
    }

    #[test]
    fn oversized_objects_are_skipped_without_buffering() {
        let mut f = Framer::new(16, 1000);
        let big = format!("{{\"msg\":\"{}\"}}", "x".repeat(100));
        let out = feed_all(
            &mut f,
            &[
                &big.as_bytes()[..50],
                &big.as_bytes()[50..],
                b"\0{\"ok\":1}",
            ],
        );
        assert_eq!(objects(&out), ["{\"ok\":1}"]);
        assert_eq!(drops(&out), [DropReason::TooLarge]);
        match &out[0] {
            Item::Dropped(d) => {
                assert_eq!(d.len, big.len());
                assert_eq!(d.head.len(), HEAD);
            }
            other => panic!("{other:?}"),
        }
        // An object of exactly the limit passes.
        let exact = format!("{{\"m\":\"{}\"}}", "y".repeat(16 - 8));
        assert_eq!(exact.len(), 16);
        let out = feed_all(&mut f, &[exact.as_bytes()]);
        assert_eq!(objects(&out), [exact]);
    }

    #[test]
    fn past_the_hard_limit_feeding_fails() {
        let mut f = Framer::new(16, 64);
        let mut out = Vec::new();
        let big = format!("{{\"msg\":\"{}", "x".repeat(100));
        assert_eq!(f.feed(big.as_bytes(), &mut out), Err(TooBig));
    }

    #[test]
    fn an_incomplete_object_waits_for_more() {
        let mut f = Framer::new(1000, 2000);
        let out = feed_all(&mut f, &[b"{\"a\":\"}"]);
        assert!(out.is_empty());
        assert!(f.is_mid_object());
        let out = feed_all(&mut f, &[b"\"}"]);
        assert_eq!(objects(&out), ["{\"a\":\"}\"}"]);
    }
}
