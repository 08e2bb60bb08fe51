//! In-memory streams for tests: a [`SendHalf`] and a [`RecvHalf`] joined by a
//! bounded pipe, with QUIC's resets and stops. Backpressure is real (a writer
//! waits while the pipe is full), so pipeline tests see a slow reader as one.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWriteExt, DuplexStream, ReadBuf};

use super::{RecvHalf, SendHalf, StreamError};

/// What one side of a pipe tells the other beyond bytes.
#[derive(Debug, Default)]
struct Signals {
    /// The sender reset the stream with this code.
    reset: Option<u32>,
    /// The receiver stopped the stream with this code.
    stopped: Option<u32>,
}

/// The sending end of a [`pipe`].
#[derive(Debug)]
pub struct PipeSender {
    /// `None` once finished or reset.
    inner: Option<DuplexStream>,
    signals: Arc<Mutex<Signals>>,
}

/// The receiving end of a [`pipe`].
#[derive(Debug)]
pub struct PipeReceiver {
    inner: DuplexStream,
    signals: Arc<Mutex<Signals>>,
}

/// A one-way stream holding at most `capacity` bytes in flight.
pub fn pipe(capacity: usize) -> (PipeSender, PipeReceiver) {
    let (writer, reader) = tokio::io::duplex(capacity.max(1));
    let signals = Arc::new(Mutex::new(Signals::default()));
    (
        PipeSender {
            inner: Some(writer),
            signals: signals.clone(),
        },
        PipeReceiver {
            inner: reader,
            signals,
        },
    )
}

/// The error a reset stream's reader gets, carried through `io::Error`.
#[derive(Debug, thiserror::Error)]
#[error("stream reset with code {0}")]
struct ResetMarker(u32);

impl PipeSender {
    fn stopped(&self) -> Result<(), StreamError> {
        match self.signals.lock().expect("pipe signals").stopped {
            Some(code) => Err(StreamError::Stopped(code.into())),
            None => Ok(()),
        }
    }
}

impl SendHalf for PipeSender {
    async fn write_bytes(&mut self, bytes: Bytes) -> Result<(), StreamError> {
        self.stopped()?;
        let inner = self
            .inner
            .as_mut()
            .ok_or_else(|| StreamError::Lost("write after finish".into()))?;
        inner
            .write_all(&bytes)
            .await
            .map_err(|err| StreamError::Lost(err.to_string()))
    }

    async fn finish(&mut self) -> Result<(), StreamError> {
        self.stopped()?;
        if let Some(mut inner) = self.inner.take() {
            inner
                .shutdown()
                .await
                .map_err(|err| StreamError::Lost(err.to_string()))?;
        }
        Ok(())
    }

    fn reset(&mut self, code: u32) {
        self.signals.lock().expect("pipe signals").reset = Some(code);
        // Dropping the writer ends the bytes; the reader then sees the reset.
        self.inner.take();
    }
}

impl AsyncRead for PipeReceiver {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) if buf.filled().len() == before => {
                match self.signals.lock().expect("pipe signals").reset {
                    Some(code) => Poll::Ready(Err(io::Error::other(ResetMarker(code)))),
                    None => Poll::Ready(Ok(())),
                }
            }
            other => other,
        }
    }
}

impl RecvHalf for PipeReceiver {
    fn stop(&mut self, code: u32) {
        self.signals.lock().expect("pipe signals").stopped = Some(code);
    }

    fn classify(&self, err: io::Error) -> StreamError {
        match err.get_ref().and_then(|e| e.downcast_ref::<ResetMarker>()) {
            Some(ResetMarker(code)) => StreamError::Reset((*code).into()),
            None => StreamError::Lost(err.to_string()),
        }
    }
}
