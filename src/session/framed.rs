//! Frames over iroh QUIC streams: the async edge around the sans-IO codec of
//! [`crate::wire`].
//!
//! [`FrameReader`] reads the 5-byte header, validates tag and length with
//! [`wire::parse_header`] *before* allocating the payload, then reads exactly the
//! payload. A stream that ends between frames is a clean end (`Ok(None)`); one
//! that ends inside a frame is [`SessionError::Frame`] with a truncation error.

use bytes::{Bytes, BytesMut};
use iroh::endpoint::{
    ConnectionError, ReadExactError, RecvStream, SendStream, StoppedError, VarInt,
};

use super::SessionError;
use crate::wire::{self, FrameError, FrameType, HEADER_LEN};

/// Reads frames from one receive stream, counting the bytes it read.
pub struct FrameReader {
    stream: RecvStream,
    max_len: u32,
    /// Header and payload bytes read so far.
    pub bytes_read: u64,
}

impl FrameReader {
    /// Wraps `stream`, refusing frames whose payload exceeds `max_len`.
    pub fn new(stream: RecvStream, max_len: u32) -> Self {
        Self {
            stream,
            max_len,
            bytes_read: 0,
        }
    }

    /// The next frame, or `None` when the peer finished the stream cleanly
    /// between frames.
    pub async fn next(&mut self) -> Result<Option<(FrameType, Bytes)>, SessionError> {
        let mut header = [0u8; HEADER_LEN];
        match self.stream.read_exact(&mut header).await {
            Ok(()) => {}
            Err(ReadExactError::FinishedEarly(0)) => return Ok(None),
            Err(ReadExactError::FinishedEarly(got)) => {
                return Err(FrameError::Truncated {
                    expected: HEADER_LEN,
                    got,
                }
                .into())
            }
            Err(ReadExactError::ReadError(err)) => return Err(SessionError::Read(err)),
        }
        let (frame_type, len) = wire::parse_header(header, self.max_len)?;
        let mut payload = BytesMut::zeroed(len as usize);
        match self.stream.read_exact(&mut payload).await {
            Ok(()) => {}
            Err(ReadExactError::FinishedEarly(got)) => {
                return Err(FrameError::Truncated {
                    expected: HEADER_LEN + len as usize,
                    got: HEADER_LEN + got,
                }
                .into())
            }
            Err(ReadExactError::ReadError(err)) => return Err(SessionError::Read(err)),
        }
        self.bytes_read += (HEADER_LEN + len as usize) as u64;
        Ok(Some((frame_type, payload.freeze())))
    }

    /// Expects the stream to end here: after `DONE` a sender finishes its stream.
    pub async fn expect_end(&mut self) -> Result<(), SessionError> {
        match self.next().await? {
            None => Ok(()),
            Some((frame_type, _)) => Err(SessionError::Protocol(format!(
                "frame {frame_type:?} after DONE"
            ))),
        }
    }

    /// Changes the largest payload accepted from here on: a stream whose
    /// first frames are control messages may carry data frames after them.
    pub fn set_max_len(&mut self, max_len: u32) {
        self.max_len = max_len;
    }

    /// Tells the peer to stop sending on this stream, with an error code.
    pub fn stop(&mut self, code: u32) {
        // Already finished or reset: nothing left to stop.
        let _ = self.stream.stop(code.into());
    }
}

/// Writes frames to one send stream, counting the bytes it wrote.
pub struct FrameWriter {
    stream: SendStream,
    buf: BytesMut,
    /// Header and payload bytes written so far.
    pub bytes_written: u64,
}

impl FrameWriter {
    /// Wraps `stream`.
    pub fn new(stream: SendStream) -> Self {
        Self {
            stream,
            buf: BytesMut::new(),
            bytes_written: 0,
        }
    }

    /// Writes one frame.
    pub async fn send(
        &mut self,
        frame_type: FrameType,
        payload: &[u8],
    ) -> Result<(), SessionError> {
        self.buf.clear();
        wire::encode_frame(frame_type, payload, &mut self.buf)
            .map_err(|err| SessionError::Protocol(err.to_string()))?;
        self.stream
            .write_all(&self.buf)
            .await
            .map_err(SessionError::Write)?;
        self.bytes_written += self.buf.len() as u64;
        Ok(())
    }

    /// Writes a frame already encoded (header included), without copying it.
    pub async fn send_encoded(&mut self, frame: Bytes) -> Result<(), SessionError> {
        let len = frame.len() as u64;
        self.stream
            .write_chunk(frame)
            .await
            .map_err(SessionError::Write)?;
        self.bytes_written += len;
        Ok(())
    }

    /// Writes one protobuf message as a frame.
    pub async fn send_msg(
        &mut self,
        frame_type: FrameType,
        message: &impl prost::Message,
    ) -> Result<(), SessionError> {
        self.send(frame_type, &message.encode_to_vec()).await
    }

    /// Abandons the stream with an error code: the peer's reads fail with
    /// it instead of seeing a clean (and so misleadingly short) end.
    pub fn reset(&mut self, code: u32) {
        // Already finished or reset: nothing left to abandon.
        let _ = self.stream.reset(code.into());
    }

    /// Finishes the stream and waits until the peer has acknowledged every byte,
    /// so closing the connection afterwards loses nothing.
    pub async fn finish(&mut self) -> Result<(), SessionError> {
        self.stream
            .finish()
            .map_err(|err| SessionError::Protocol(format!("finishing stream: {err}")))?;
        match self.stream.stopped().await {
            Ok(None) => Ok(()),
            // The peer closed the connection saying the session is complete:
            // it had everything it needed from this stream.
            Err(StoppedError::ConnectionLost(ConnectionError::ApplicationClosed(close)))
                if close.error_code == VarInt::from_u32(super::CLOSE_DONE) =>
            {
                Ok(())
            }
            Ok(Some(code)) => Err(SessionError::Stopped(code.into_inner())),
            Err(StoppedError::ConnectionLost(err)) => Err(SessionError::Connection(err)),
            Err(err) => Err(SessionError::Protocol(format!(
                "stream not acknowledged: {err}"
            ))),
        }
    }
}
