//! iroh's QUIC streams as [`RecvHalf`] and [`SendHalf`], and iroh's errors as
//! [`StreamError`]s.

use std::io;

use bytes::Bytes;
use iroh::endpoint::{
    ConnectionError, ReadError, RecvStream, SendStream, StoppedError, VarInt, WriteError,
};

use super::{RecvHalf, SendHalf, StreamError};
use crate::wire::CLOSE_DONE;

impl From<ConnectionError> for StreamError {
    fn from(err: ConnectionError) -> Self {
        match err {
            ConnectionError::ApplicationClosed(close) => Self::ClosedByPeer {
                code: close.error_code.into_inner(),
                reason: String::from_utf8_lossy(&close.reason).into_owned(),
            },
            ConnectionError::LocallyClosed => Self::ClosedLocally,
            other => Self::Lost(other.to_string()),
        }
    }
}

impl From<ReadError> for StreamError {
    fn from(err: ReadError) -> Self {
        match err {
            ReadError::Reset(code) => Self::Reset(code.into_inner()),
            ReadError::ConnectionLost(err) => err.into(),
            other => Self::Lost(other.to_string()),
        }
    }
}

impl From<WriteError> for StreamError {
    fn from(err: WriteError) -> Self {
        match err {
            WriteError::Stopped(code) => Self::Stopped(code.into_inner()),
            WriteError::ConnectionLost(err) => err.into(),
            other => Self::Lost(other.to_string()),
        }
    }
}

impl RecvHalf for RecvStream {
    fn stop(&mut self, code: u32) {
        // Already finished or reset: nothing left to stop.
        let _ = Self::stop(self, code.into());
    }

    fn classify(&self, err: io::Error) -> StreamError {
        // The stream's reads fail with a `ReadError` inside the `io::Error`.
        match err.into_inner().map(|inner| inner.downcast::<ReadError>()) {
            Some(Ok(read)) => (*read).into(),
            Some(Err(other)) => StreamError::Lost(other.to_string()),
            None => StreamError::Lost("read failed".into()),
        }
    }
}

impl SendHalf for SendStream {
    async fn write_bytes(&mut self, bytes: Bytes) -> Result<(), StreamError> {
        Ok(self.write_chunk(bytes).await?)
    }

    async fn finish(&mut self) -> Result<(), StreamError> {
        Self::finish(self).map_err(|_| StreamError::Lost("stream already closed".into()))?;
        match self.stopped().await {
            Ok(None) => Ok(()),
            Ok(Some(code)) => Err(StreamError::Stopped(code.into_inner())),
            // The peer closed the connection saying the session is complete:
            // it had everything it needed from this stream.
            Err(StoppedError::ConnectionLost(ConnectionError::ApplicationClosed(close)))
                if close.error_code == VarInt::from_u32(CLOSE_DONE) =>
            {
                Ok(())
            }
            Err(StoppedError::ConnectionLost(err)) => Err(err.into()),
            Err(other) => Err(StreamError::Lost(other.to_string())),
        }
    }

    fn reset(&mut self, code: u32) {
        // Already finished or reset: nothing left to abandon.
        let _ = Self::reset(self, code.into());
    }
}
