//! The `text/event-stream` (server-sent events) form of change events, both ways.
//!
//! `GET /sync/events` sends one SSE event per entry of the store's
//! change log:
//!
//! ```text
//! id: 42
//! data: {"kind":"asset","hash":"<64 hex>","ts":1700000000000}
//!
//! ```
//!
//! The `id` is the change's sequence number, so a client that reconnects with
//! `Last-Event-ID: 42` gets everything after it. Lines that start with `:` are
//! comments; the server sends one now and then to keep idle connections alive.
//!
//! - [`encode_event`] and [`encode_comment`] write that format (server side);
//! - [`SseParser`] reads it (client side). It is sans-IO: feed it bytes as they
//!   arrive with [`SseParser::feed`], take complete messages out with
//!   [`SseParser::next_message`], and turn each into a [`ChangeEvent`] with
//!   [`decode_change`]. It follows the WHATWG parsing rules: LF, CRLF or CR end
//!   a line (also when split across chunks), `data:` lines of one event are
//!   joined with `\n`, unknown fields are ignored, and an incomplete event at
//!   the end of the stream is dropped. A line (or the data of one event) longer
//!   than the parser's limit is an error, so a hostile server cannot make a
//!   client buffer without bound.

use bytes::{Buf, BytesMut};

use super::ChangeEvent;

/// The MIME type of an event stream.
pub const CONTENT_TYPE: &str = "text/event-stream";

/// Default bound on one line, and on the data of one event, in bytes. A change
/// event is about 120 bytes; this leaves room for future fields.
pub const DEFAULT_MAX_LINE: usize = 64 * 1024;

/// The SSE form of one change event: `id: SEQ\ndata: JSON\n\n`.
pub fn encode_event(event: &ChangeEvent) -> String {
    let data = serde_json::to_string(event).expect("a change event always serializes");
    format!("id: {}\ndata: {data}\n\n", event.seq)
}

/// An SSE comment (ignored by clients; used as a keep-alive). Line breaks in
/// `text` are replaced by spaces so the comment stays one line.
pub fn encode_comment(text: &str) -> String {
    let line: String = text
        .chars()
        .map(|c| if c == '\n' || c == '\r' { ' ' } else { c })
        .collect();
    format!(": {line}\n\n")
}

/// Why an event stream could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SseError {
    /// A line, or the data of one event, is longer than the parser's limit.
    #[error("event stream line or event longer than {limit} bytes")]
    TooLong {
        /// The parser's limit in bytes.
        limit: usize,
    },
    /// A complete event that is not a valid change event.
    #[error("bad change event: {0}")]
    BadEvent(String),
}

/// One dispatched SSE message, before interpretation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SseMessage {
    /// The last event id in effect when the message was dispatched (ids carry
    /// over to later messages that set none, as in the SSE specification).
    pub id: Option<String>,
    /// The `event:` type, when one was given.
    pub event: Option<String>,
    /// The `data:` lines joined by `\n`.
    pub data: String,
}

/// An incremental parser of `text/event-stream` bytes.
///
/// Call [`feed`](Self::feed) with each chunk received, then
/// [`next_message`](Self::next_message) until it returns `Ok(None)`. After an
/// error the parser is unusable: drop the connection and start a new parser.
#[derive(Debug)]
pub struct SseParser {
    /// Bytes received and not yet consumed as whole lines.
    buf: BytesMut,
    /// How far `buf` was already searched for a line end (nothing before is one).
    scanned: usize,
    /// The previous line ended with CR: a LF that follows belongs to it.
    skip_lf: bool,
    /// A UTF-8 byte order mark may still start the stream.
    at_start: bool,
    /// The bound on a line and on one event's data.
    max_line: usize,
    /// The id of the last message dispatched (a blank line ends a message,
    /// with or without data): what a client resumes after. Persists across
    /// messages.
    last_id: Option<String>,
    /// The id the message being built carries so far (the spec's "last
    /// event ID buffer"); it becomes [`Self::last_id`] only when the message
    /// ends, so a message cut mid-way never moves the resume point.
    id_buffer: Option<String>,
    /// The `event:` field of the message being built.
    event: Option<String>,
    /// The data of the message being built.
    data: String,
    /// At least one `data:` line was seen for the message being built.
    has_data: bool,
}

impl Default for SseParser {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_LINE)
    }
}

impl SseParser {
    /// A parser that rejects lines (and event data) longer than `max_line` bytes.
    pub fn new(max_line: usize) -> Self {
        Self {
            buf: BytesMut::new(),
            scanned: 0,
            skip_lf: false,
            at_start: true,
            max_line,
            last_id: None,
            id_buffer: None,
            event: None,
            data: String::new(),
            has_data: false,
        }
    }

    /// The id of the last message that ended, if any (never one still
    /// arriving).
    pub fn last_event_id(&self) -> Option<&str> {
        self.last_id.as_deref()
    }

    /// Appends received bytes. Nothing is parsed until
    /// [`next_message`](Self::next_message).
    pub fn feed(&mut self, chunk: &[u8]) {
        self.buf.extend_from_slice(chunk);
    }

    /// The next complete message in the bytes fed so far, or `Ok(None)` when
    /// more bytes are needed.
    pub fn next_message(&mut self) -> Result<Option<SseMessage>, SseError> {
        while let Some(line) = self.next_line()? {
            if let Some(message) = self.handle_line(&line)? {
                return Ok(Some(message));
            }
        }
        Ok(None)
    }

    /// Takes the next whole line out of the buffer, without its line end.
    fn next_line(&mut self) -> Result<Option<String>, SseError> {
        if self.at_start {
            const BOM: &[u8] = b"\xEF\xBB\xBF";
            let n = self.buf.len().min(BOM.len());
            if self.buf[..n] != BOM[..n] {
                self.at_start = false;
            } else if n == BOM.len() {
                self.buf.advance(BOM.len());
                self.at_start = false;
            } else {
                return Ok(None);
            }
        }
        if self.skip_lf && !self.buf.is_empty() {
            if self.buf[0] == b'\n' {
                self.buf.advance(1);
            }
            self.skip_lf = false;
        }
        let found = self.buf[self.scanned..]
            .iter()
            .position(|&b| b == b'\n' || b == b'\r')
            .map(|at| at + self.scanned);
        let Some(end) = found else {
            self.scanned = self.buf.len();
            if self.buf.len() > self.max_line {
                return Err(SseError::TooLong {
                    limit: self.max_line,
                });
            }
            return Ok(None);
        };
        if end > self.max_line {
            return Err(SseError::TooLong {
                limit: self.max_line,
            });
        }
        let line = self.buf.split_to(end);
        self.skip_lf = self.buf[0] == b'\r';
        self.buf.advance(1);
        self.scanned = 0;
        Ok(Some(String::from_utf8_lossy(&line).into_owned()))
    }

    /// Applies one line; returns a message when the line was the blank line
    /// that dispatches one.
    fn handle_line(&mut self, line: &str) -> Result<Option<SseMessage>, SseError> {
        if line.is_empty() {
            let event = self.event.take();
            self.last_id.clone_from(&self.id_buffer);
            if !self.has_data {
                return Ok(None);
            }
            self.has_data = false;
            let mut data = std::mem::take(&mut self.data);
            if data.ends_with('\n') {
                data.pop();
            }
            return Ok(Some(SseMessage {
                id: self.last_id.clone(),
                event,
                data,
            }));
        }
        if line.starts_with(':') {
            return Ok(None);
        }
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line, ""),
        };
        match field {
            "data" => {
                if self.data.len() + value.len() + 1 > self.max_line {
                    return Err(SseError::TooLong {
                        limit: self.max_line,
                    });
                }
                self.data.push_str(value);
                self.data.push('\n');
                self.has_data = true;
            }
            "id" if !value.contains('\0') => self.id_buffer = Some(value.to_owned()),
            "event" => self.event = Some(value.to_owned()),
            // `retry` and unknown fields: nothing we act on.
            _ => {}
        }
        Ok(None)
    }
}

/// Interprets one message as a change event: `id` is the sequence number and
/// `data` the JSON `{"kind","hash","ts"}` (unknown JSON fields are ignored).
pub fn decode_change(message: &SseMessage) -> Result<ChangeEvent, SseError> {
    let id = message
        .id
        .as_deref()
        .ok_or_else(|| SseError::BadEvent("event without an id".into()))?;
    let seq: u64 = id
        .trim()
        .parse()
        .map_err(|_| SseError::BadEvent(format!("id {id:?} is not a sequence number")))?;
    let mut event: ChangeEvent = serde_json::from_str(&message.data)
        .map_err(|err| SseError::BadEvent(format!("data: {err}")))?;
    event.seq = seq;
    Ok(event)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::asset::AssetHash;
    use crate::can::ChangeKind;

    fn event(seq: u64, kind: ChangeKind, data: &[u8]) -> ChangeEvent {
        ChangeEvent {
            seq,
            kind,
            hash: AssetHash::of(data),
            ts: 1_700_000_000_000 + seq as i64,
        }
    }

    /// Feeds `chunks` one by one and collects every message.
    fn parse_chunks(parser: &mut SseParser, chunks: &[&[u8]]) -> Vec<SseMessage> {
        let mut out = Vec::new();
        for chunk in chunks {
            parser.feed(chunk);
            while let Some(message) = parser.next_message().expect("valid stream") {
                out.push(message);
            }
        }
        out
    }

    fn changes(messages: &[SseMessage]) -> Vec<ChangeEvent> {
        messages
            .iter()
            .map(|m| decode_change(m).expect("change event"))
            .collect()
    }

    #[test]
    fn encodes_the_documented_format() {
        let e = event(7, ChangeKind::Asset, b"a");
        let text = encode_event(&e);
        assert_eq!(
            text,
            format!(
                "id: 7\ndata: {{\"kind\":\"asset\",\"hash\":\"{}\",\"ts\":{}}}\n\n",
                e.hash, e.ts
            )
        );
        assert_eq!(encode_comment("keep-alive"), ": keep-alive\n\n");
        assert_eq!(encode_comment("a\nb"), ": a b\n\n");
    }

    #[test]
    fn round_trips_events_and_skips_comments() {
        let events = [
            event(1, ChangeKind::Asset, b"a"),
            event(2, ChangeKind::Meta, b"a"),
            event(3, ChangeKind::Asset, b"b"),
        ];
        let mut text = String::new();
        for e in &events {
            text.push_str(&encode_event(e));
            text.push_str(&encode_comment("keep-alive"));
        }
        let mut parser = SseParser::default();
        let parsed = parse_chunks(&mut parser, &[text.as_bytes()]);
        assert_eq!(changes(&parsed), events);
        assert_eq!(parser.last_event_id(), Some("3"));
    }

    #[test]
    fn events_split_at_every_byte_boundary() {
        let events = [
            event(10, ChangeKind::Asset, b"x"),
            event(11, ChangeKind::Meta, b"y"),
        ];
        let text: String = events.iter().map(encode_event).collect();
        let bytes = text.as_bytes();
        for split in 0..=bytes.len() {
            let mut parser = SseParser::default();
            let parsed = parse_chunks(&mut parser, &[&bytes[..split], &bytes[split..]]);
            assert_eq!(changes(&parsed), events, "split at {split}");
        }
        // And one byte at a time.
        let mut parser = SseParser::default();
        let singles: Vec<&[u8]> = bytes.chunks(1).collect();
        assert_eq!(changes(&parse_chunks(&mut parser, &singles)), events);
    }

    #[test]
    fn crlf_and_lone_cr_line_ends() {
        let e = event(5, ChangeKind::Meta, b"z");
        let lf = encode_event(&e);
        for text in [lf.replace('\n', "\r\n"), lf.replace('\n', "\r")] {
            let bytes = text.as_bytes();
            for split in 0..=bytes.len() {
                let mut parser = SseParser::default();
                let parsed = parse_chunks(&mut parser, &[&bytes[..split], &bytes[split..]]);
                assert_eq!(
                    changes(&parsed),
                    vec![e.clone()],
                    "{text:?} split at {split}"
                );
            }
        }
    }

    #[test]
    fn spec_field_rules() {
        let mut parser = SseParser::default();
        let input = "\u{feff}: comment\nretry: 10\nunknown: x\nevent: ping\ndata:no-space\n\
                     data:  two spaces\nid: 9\n\ndata\n\nid: 12\n\n";
        let parsed = parse_chunks(&mut parser, &[input.as_bytes()]);
        assert_eq!(
            parsed,
            vec![
                SseMessage {
                    id: Some("9".into()),
                    event: Some("ping".into()),
                    data: "no-space\n two spaces".into(),
                },
                // A bare `data` line is an empty data field; the id carries over.
                SseMessage {
                    id: Some("9".into()),
                    event: None,
                    data: String::new(),
                },
            ]
        );
        // An id-only block dispatches nothing but moves the last id.
        assert_eq!(parser.last_event_id(), Some("12"));
    }

    /// Found by a burst over SSE (`tests/http_api.rs`): a message cut after
    /// its `id:` line made the client resume past it, then skip it whole
    /// when the rest arrived.
    #[test]
    fn a_message_cut_after_its_id_does_not_move_the_resume_point() {
        let text = encode_event(&event(7, ChangeKind::Asset, b"a"));
        let cut = text.find("data").expect("a data line");
        let mut parser = SseParser::default();
        parser.feed(&text.as_bytes()[..cut]);
        assert!(parser.next_message().unwrap().is_none());
        assert_eq!(parser.last_event_id(), None, "the message has not ended");
        parser.feed(&text.as_bytes()[cut..]);
        let message = parser.next_message().unwrap().expect("the whole message");
        assert_eq!(decode_change(&message).unwrap().seq, 7);
        assert_eq!(parser.last_event_id(), Some("7"));
    }

    #[test]
    fn incomplete_event_is_not_dispatched() {
        let text = encode_event(&event(1, ChangeKind::Asset, b"a"));
        let mut parser = SseParser::default();
        let parsed = parse_chunks(&mut parser, &[&text.as_bytes()[..text.len() - 1]]);
        assert!(parsed.is_empty());
    }

    #[test]
    fn unknown_json_fields_are_ignored() {
        let hash = AssetHash::of(b"q");
        let text = format!(
            "id: 3\ndata: {{\"kind\":\"meta\",\"hash\":\"{hash}\",\"ts\":4,\"new\":1}}\n\n"
        );
        let mut parser = SseParser::default();
        let parsed = parse_chunks(&mut parser, &[text.as_bytes()]);
        assert_eq!(
            changes(&parsed),
            vec![ChangeEvent {
                seq: 3,
                kind: ChangeKind::Meta,
                hash,
                ts: 4
            }]
        );
    }

    #[test]
    fn bad_events_are_errors() {
        let no_id = SseMessage {
            data: "{}".into(),
            ..Default::default()
        };
        assert!(matches!(decode_change(&no_id), Err(SseError::BadEvent(_))));
        let bad_id = SseMessage {
            id: Some("x".into()),
            data: encode_event(&event(1, ChangeKind::Asset, b"a")),
            ..Default::default()
        };
        assert!(matches!(decode_change(&bad_id), Err(SseError::BadEvent(_))));
        let bad_json = SseMessage {
            id: Some("1".into()),
            data: "{\"kind\":\"other\"}".into(),
            ..Default::default()
        };
        assert!(matches!(
            decode_change(&bad_json),
            Err(SseError::BadEvent(_))
        ));
    }

    #[test]
    fn overlong_line_is_an_error_even_without_a_line_end() {
        let mut parser = SseParser::new(16);
        parser.feed(b"data: 0123456789");
        assert_eq!(parser.next_message(), Ok(None));
        parser.feed(b"abcdef");
        assert_eq!(parser.next_message(), Err(SseError::TooLong { limit: 16 }));

        let mut parser = SseParser::new(16);
        parser.feed(b"data: 0123456789abcdef\n\n");
        assert_eq!(parser.next_message(), Err(SseError::TooLong { limit: 16 }));
    }

    #[test]
    fn many_data_lines_cannot_exceed_the_limit() {
        let mut parser = SseParser::new(16);
        parser.feed(b"data: 12345\ndata: 12345\ndata: 12345\n");
        assert_eq!(parser.next_message(), Err(SseError::TooLong { limit: 16 }));
    }
}
