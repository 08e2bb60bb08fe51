//! Frames over byte streams: the one frame reader every stream uses, the
//! writer, and the stream operations the protocol needs beyond bytes.
//!
//! [`FrameReader`] is [`wire`]'s [`FrameDecoder`] over any [`RecvHalf`]: it
//! reads what arrived into one buffer and cuts whole frames off its front, so
//! a frame's payload shares the buffer's memory. Memory grows only with bytes
//! that arrived: a header's declared length is a ceiling checked before
//! anything is read for it, never an allocation.
//!
//! [`RecvHalf`] and [`SendHalf`] are what a protocol stream needs of its
//! transport: bytes in order, plus QUIC's stream controls (finish and wait
//! until the peer acknowledged everything, reset, stop), with errors that say
//! who ended what ([`StreamError`]). iroh's QUIC streams implement them
//! ([`quic`]); so do in-memory pipes ([`pipe`]), so the engine runs in tests
//! without sockets.

use std::future::Future;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::wire::{self, Frame, FrameDecoder, FrameError, Violation, HEADER_LEN};

pub mod pipe;
pub mod quic;

/// Most bytes reserved for one read beyond what already arrived: the buffer
/// of a stream never runs ahead of its data by more than this.
pub const READ_AHEAD: usize = 256 * 1024;
/// Fewest bytes asked for in one read, so small frames do not cost a read each.
const MIN_READ: usize = 16 * 1024;

/// Why a stream could not be read or written: the transport's word, never a
/// protocol judgement.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StreamError {
    /// The peer closed the connection on purpose, with an application code.
    #[error("connection closed by the peer with code {code}: {reason}")]
    ClosedByPeer {
        /// The application code.
        code: u64,
        /// The reason it gave.
        reason: String,
    },
    /// This node closed the connection.
    #[error("connection closed by this node")]
    ClosedLocally,
    /// The connection is gone for a transport reason (timeout, reset, an
    /// unreachable peer).
    #[error("connection lost: {0}")]
    Lost(String),
    /// The peer abandoned the stream it was sending, with a code.
    #[error("the peer reset the stream with code {0}")]
    Reset(u64),
    /// The peer asked us to stop sending on the stream, with a code.
    #[error("the peer stopped the stream with code {0}")]
    Stopped(u64),
}

impl StreamError {
    /// True when either side closed the connection on purpose after a
    /// complete session or for a shutdown: an ending, not an error.
    pub fn is_clean_close(&self) -> bool {
        match self {
            Self::ClosedLocally => true,
            Self::ClosedByPeer { code, .. } => {
                *code == u64::from(wire::CLOSE_DONE) || *code == u64::from(wire::CLOSE_SHUTDOWN)
            }
            _ => false,
        }
    }
}

/// The receiving half of a stream.
pub trait RecvHalf: AsyncRead + Unpin + Send + 'static {
    /// Asks the peer to stop sending, with an application code.
    fn stop(&mut self, code: u32);

    /// What a read error of this stream stands for.
    fn classify(&self, err: std::io::Error) -> StreamError {
        StreamError::Lost(err.to_string())
    }
}

/// The sending half of a stream.
pub trait SendHalf: Send + Unpin + 'static {
    /// Writes `bytes` in order after what was written before (without copying
    /// where the transport allows).
    fn write_bytes(&mut self, bytes: Bytes)
        -> impl Future<Output = Result<(), StreamError>> + Send;

    /// Ends the stream and waits until the peer has received every byte, so
    /// that closing the connection afterwards loses nothing.
    fn finish(&mut self) -> impl Future<Output = Result<(), StreamError>> + Send;

    /// Abandons the stream with an application code: the peer's reads fail
    /// with it instead of seeing a clean (and misleadingly short) end.
    fn reset(&mut self, code: u32);
}

/// Why the next frame could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The peer's bytes are not frames.
    #[error(transparent)]
    Violation(#[from] Violation),
    /// The stream or its connection failed.
    #[error(transparent)]
    Stream(#[from] StreamError),
}

impl From<FrameError> for ReadError {
    fn from(err: FrameError) -> Self {
        Self::Violation(Violation::Frame(err))
    }
}

/// Reads frames from one stream with [`wire`]'s decoder, counting bytes.
#[derive(Debug)]
pub struct FrameReader<R> {
    stream: R,
    decoder: FrameDecoder,
    /// Bytes read and not yet cut into frames.
    buf: BytesMut,
    /// The peer finished the stream: what is in `buf` is all there is.
    ended: bool,
    /// Header and payload bytes of the frames returned so far.
    bytes_read: u64,
}

impl<R: RecvHalf> FrameReader<R> {
    /// Reads `stream`, refusing frames whose payload exceeds `max_len`.
    pub fn new(stream: R, max_len: u32) -> Self {
        Self {
            stream,
            decoder: FrameDecoder::new(max_len),
            buf: BytesMut::new(),
            ended: false,
            bytes_read: 0,
        }
    }

    /// The next frame, or `None` when the peer finished the stream cleanly
    /// between frames. A stream that ends inside a frame is
    /// [`FrameError::Truncated`]. Cancel-safe: a cancelled call loses nothing.
    pub async fn next(&mut self) -> Result<Option<Frame>, ReadError> {
        loop {
            let frame = if self.ended {
                self.decoder.decode_eof(&mut self.buf)?
            } else {
                self.decoder.decode(&mut self.buf)?
            };
            if let Some(frame) = frame {
                self.bytes_read += frame.encoded_len() as u64;
                return Ok(Some(frame));
            }
            if self.ended {
                return Ok(None);
            }
            let want = self.decoder.missing(&self.buf).clamp(MIN_READ, READ_AHEAD);
            self.buf.reserve(want);
            match self.stream.read_buf(&mut self.buf).await {
                Ok(0) => self.ended = true,
                Ok(_) => {}
                Err(err) => return Err(self.stream.classify(err).into()),
            }
        }
    }

    /// The largest payload accepted from here on: a stream whose first frames
    /// are control messages may carry data frames after them.
    pub fn set_max_len(&mut self, max_len: u32) {
        self.decoder = FrameDecoder::new(max_len);
    }

    /// The largest payload accepted now.
    pub fn max_len(&self) -> u32 {
        self.decoder.max_len()
    }

    /// Asks the peer to stop sending on this stream.
    pub fn stop(&mut self, code: u32) {
        self.stream.stop(code);
    }

    /// Header and payload bytes of the frames read so far.
    pub fn bytes_read(&self) -> u64 {
        self.bytes_read
    }
}

/// Writes of coalesced frames are at least this large (unless the sender runs
/// dry, see [`FrameWriter::coalesce`]): the QUIC stack then packs them into
/// full packets, whatever the frame sizes.
pub const COALESCE_MIN: usize = 32 * 1024;

/// Writes frames to one stream, counting bytes.
///
/// Frames go out in the order given, either at once ([`send`](Self::send),
/// [`send_payload`](Self::send_payload)) or gathered into larger writes
/// ([`coalesce`](Self::coalesce)). Gathering is what keeps a stream of tiny
/// frames from becoming a stream of tiny packets: the receiving QUIC stack
/// keeps each packet's piece of a stream as its own buffer while its reader
/// lags, and fails the connection past 1,024 of them. A write of
/// at least [`COALESCE_MIN`] bytes fills its packets, so a stream window of
/// `W` bytes holds at most `W / packet + W / COALESCE_MIN` pieces.
#[derive(Debug)]
pub struct FrameWriter<W> {
    stream: W,
    /// Frames gathered and not yet written.
    pending: BytesMut,
    /// When the oldest of them was gathered.
    pending_since: Option<tokio::time::Instant>,
    bytes_written: u64,
}

impl<W: SendHalf> FrameWriter<W> {
    /// Writes to `stream`.
    pub fn new(stream: W) -> Self {
        Self {
            stream,
            pending: BytesMut::new(),
            pending_since: None,
            bytes_written: 0,
        }
    }

    /// Writes one encoded frame (header included), after any gathered ones.
    pub async fn send(&mut self, frame: Bytes) -> Result<(), StreamError> {
        debug_assert!(frame.len() >= HEADER_LEN, "a frame has a header");
        self.flush().await?;
        self.write(frame).await
    }

    /// Gathers one encoded frame into a larger write: written once
    /// [`COALESCE_MIN`] bytes are gathered, at the next [`flush`](Self::flush),
    /// or before the next frame that is sent at once. A frame of at least
    /// [`COALESCE_MIN`] bytes is written as it is, without a copy.
    pub async fn coalesce(&mut self, frame: Bytes) -> Result<(), StreamError> {
        debug_assert!(frame.len() >= HEADER_LEN, "a frame has a header");
        if frame.len() >= COALESCE_MIN {
            return self.send(frame).await;
        }
        if self.pending.is_empty() {
            self.pending_since = Some(tokio::time::Instant::now());
        }
        self.pending.extend_from_slice(&frame);
        if self.pending.len() >= COALESCE_MIN {
            self.flush().await?;
        }
        Ok(())
    }

    /// Whether gathered frames wait for a write.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// When the oldest gathered frame was gathered, if any waits.
    pub fn pending_since(&self) -> Option<tokio::time::Instant> {
        self.pending_since
    }

    /// Writes the gathered frames.
    pub async fn flush(&mut self) -> Result<(), StreamError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        self.pending_since = None;
        let gathered = self.pending.split().freeze();
        self.write(gathered).await
    }

    async fn write(&mut self, bytes: Bytes) -> Result<(), StreamError> {
        let len = bytes.len() as u64;
        self.stream.write_bytes(bytes).await?;
        self.bytes_written += len;
        Ok(())
    }

    /// Writes one frame of `frame_type` around `payload` without copying the
    /// payload: the header and the payload go to the transport as they are.
    pub async fn send_payload(
        &mut self,
        frame_type: wire::FrameType,
        payload: Bytes,
    ) -> Result<(), StreamError> {
        self.flush().await?;
        let mut header = BytesMut::with_capacity(HEADER_LEN);
        wire::encode_frame(frame_type, &[], &mut header).expect("an empty payload fits");
        let len = u32::try_from(payload.len()).expect("payloads here are below 4 GiB");
        header[1..].copy_from_slice(&len.to_be_bytes());
        self.write(header.freeze()).await?;
        self.write(payload).await
    }

    /// Writes what is gathered, finishes the stream and waits until the peer
    /// has every byte.
    pub async fn finish(&mut self) -> Result<(), StreamError> {
        self.flush().await?;
        self.stream.finish().await
    }

    /// Abandons the stream with a code (gathered frames are dropped).
    pub fn reset(&mut self, code: u32) {
        self.pending.clear();
        self.pending_since = None;
        self.stream.reset(code);
    }

    /// Frame bytes handed to the transport so far.
    pub fn bytes_written(&self) -> u64 {
        self.bytes_written
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::FrameType;

    fn frame(frame_type: FrameType, payload: &[u8]) -> Bytes {
        wire::data_stream::frame(frame_type, payload)
    }

    #[tokio::test]
    async fn frames_cross_a_pipe_whole_and_in_order() {
        let (send, recv) = pipe::pipe(64);
        let mut writer = FrameWriter::new(send);
        let mut reader = FrameReader::new(recv, 1 << 20);
        let big = vec![7u8; 300_000];
        let writing = async {
            writer.send(frame(FrameType::AssetChunk, &big)).await?;
            writer.send(frame(FrameType::Done, &[])).await?;
            writer.finish().await?;
            Ok::<_, StreamError>(writer.bytes_written())
        };
        let reading = async {
            let mut frames = Vec::new();
            while let Some(frame) = reader.next().await? {
                frames.push(frame);
            }
            Ok::<_, ReadError>(frames)
        };
        let (written, frames) = tokio::join!(writing, reading);
        let frames = frames.unwrap();
        assert_eq!(frames.len(), 2);
        assert_eq!(frames[0].payload.len(), 300_000);
        assert_eq!(frames[1].frame_type, FrameType::Done);
        assert_eq!(written.unwrap(), reader.bytes_read());
    }

    #[tokio::test]
    async fn gathered_frames_go_out_in_order_in_large_writes() {
        let (send, recv) = pipe::pipe(1 << 20);
        let mut writer = FrameWriter::new(send);
        let mut reader = FrameReader::new(recv, 1 << 20);
        let tiny = frame(FrameType::AssetBundle, &[1u8; 100]);
        let count = 2 * COALESCE_MIN / tiny.len() + 3;
        for _ in 0..count {
            writer.coalesce(tiny.clone()).await.unwrap();
        }
        // Two full writes went out; the rest waits for a flush.
        assert!(writer.has_pending());
        assert!(writer.bytes_written() >= 2 * COALESCE_MIN as u64);
        assert!(writer.bytes_written() < (count * tiny.len()) as u64);
        // A frame sent at once goes after what was gathered.
        writer.send(frame(FrameType::Done, &[])).await.unwrap();
        assert!(!writer.has_pending());
        writer.finish().await.unwrap();
        let mut frames = Vec::new();
        while let Some(frame) = reader.next().await.unwrap() {
            frames.push(frame.frame_type);
        }
        assert_eq!(frames.len(), count + 1);
        assert!(frames[..count].iter().all(|t| *t == FrameType::AssetBundle));
        assert_eq!(frames[count], FrameType::Done);
        assert_eq!(writer.bytes_written(), reader.bytes_read());
    }

    #[tokio::test]
    async fn a_declared_length_is_never_an_allocation() {
        let (mut send, recv) = pipe::pipe(64);
        // A header declaring 1 GiB, then silence: the reader must refuse it at
        // its limit, and below the limit must not reserve for it.
        let mut header = vec![FrameType::AssetChunk as u8];
        header.extend_from_slice(&(1u32 << 30).to_be_bytes());
        send.write_bytes(Bytes::from(header.clone())).await.unwrap();
        let mut reader = FrameReader::new(recv, 1 << 20);
        assert!(matches!(
            reader.next().await,
            Err(ReadError::Violation(Violation::Frame(
                FrameError::Oversized { .. }
            )))
        ));

        let (mut send, recv) = pipe::pipe(64);
        send.write_bytes(Bytes::from(header)).await.unwrap();
        let mut reader = FrameReader::new(recv, u32::MAX);
        let pending =
            tokio::time::timeout(std::time::Duration::from_millis(50), reader.next()).await;
        assert!(pending.is_err(), "still waiting for the payload");
        assert!(
            reader.buf.capacity() <= READ_AHEAD + HEADER_LEN + MIN_READ,
            "reserved {} bytes",
            reader.buf.capacity()
        );
    }

    #[tokio::test]
    async fn an_end_inside_a_frame_is_truncation_and_a_reset_is_reported() {
        let (mut send, recv) = pipe::pipe(64);
        let whole = frame(FrameType::AssetBundle, b"0123456789");
        send.write_bytes(whole.slice(..8)).await.unwrap();
        send.finish().await.unwrap();
        let mut reader = FrameReader::new(recv, 1024);
        assert!(matches!(
            reader.next().await,
            Err(ReadError::Violation(Violation::Frame(
                FrameError::Truncated {
                    expected: 15,
                    got: 8
                }
            )))
        ));

        let (mut send, recv) = pipe::pipe(64);
        send.write_bytes(whole).await.unwrap();
        send.reset(wire::RESET_LOCAL_FAILURE);
        let mut reader = FrameReader::new(recv, 1024);
        assert!(reader.next().await.unwrap().is_some());
        assert!(matches!(
            reader.next().await,
            Err(ReadError::Stream(StreamError::Reset(5)))
        ));
    }
}
