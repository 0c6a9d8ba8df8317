//! What a connection is doing, seen from inside hyper's way of serving it.
//!
//! This module owns the two thin wrappers that move a connection's
//! [`Slot`] between its states as hyper serves it:
//!
//! * [`TrackedStream`], around the socket: hyper's first read attempt
//!   marks a new connection as polled, and a flush that finds nothing left to write
//!   after a response marks it idle again (from that moment: the same
//!   moment hyper restarts its header read timer for the next request);
//! * [`TrackedBody`], around a response body: dropping it (hyper does as
//!   soon as the last byte is in its write buffer) marks the response as
//!   handed over.
//!
//! The start of a request is marked by the service itself (see
//! [`super::connections`]), as hyper calls it once a complete head is read.
//! This module does not decide anything from the states (that is
//! [`super::admission`]), nor time anything.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper::body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::admission::Slot;

/// A socket that tells its slot when it is first read and when a response
/// has been written out.
#[derive(Debug)]
pub(super) struct TrackedStream<S> {
    inner: S,
    slot: Arc<Slot>,
}

impl<S> TrackedStream<S> {
    pub(super) fn new(inner: S, slot: Arc<Slot>) -> Self {
        TrackedStream { inner, slot }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for TrackedStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        this.slot.polled();
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for TrackedStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    /// hyper flushes the socket only once its own write buffer is empty.
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let r = Pin::new(&mut this.inner).poll_flush(cx);
        if matches!(r, Poll::Ready(Ok(()))) {
            this.slot.flushed();
        }
        r
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A response body that tells its slot when hyper is done with it.
#[derive(Debug)]
pub(super) struct TrackedBody<B> {
    inner: B,
    slot: Arc<Slot>,
}

impl<B> TrackedBody<B> {
    pub(super) fn new(inner: B, slot: Arc<Slot>) -> Self {
        TrackedBody { inner, slot }
    }
}

impl<B> Drop for TrackedBody<B> {
    fn drop(&mut self) {
        self.slot.response_handed_over();
    }
}

impl<B: Body + Unpin> Body for TrackedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::super::admission::SlotState;
    use super::*;
    use http_body_util::{BodyExt, Full};
    use hyper::body::Bytes;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn a_request_moves_the_slot_through_its_states() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            let slot = Slot::new();
            let (a, mut b) = tokio::io::duplex(64);
            let mut s = TrackedStream::new(a, slot.clone());
            assert_eq!(slot.state(), SlotState::New);
            b.write_all(b"x").await.unwrap();
            let mut one = [0u8; 1];
            s.read_exact(&mut one).await.unwrap();
            assert_eq!(slot.state(), SlotState::Idle);
            let before = slot.idle_since_us();
            // A flush while idle changes nothing.
            s.flush().await.unwrap();
            assert_eq!(slot.idle_since_us(), before);
            slot.request_started();
            let body = TrackedBody::new(Full::new(Bytes::from_static(b"ok")), slot.clone());
            assert_eq!(body.size_hint().exact(), Some(2));
            let bytes = body.collect().await.unwrap().to_bytes();
            assert_eq!(&bytes[..], b"ok");
            assert_eq!(slot.state(), SlotState::Sending);
            std::thread::sleep(std::time::Duration::from_millis(2));
            s.write_all(b"ok").await.unwrap();
            s.flush().await.unwrap();
            assert_eq!(slot.state(), SlotState::Idle);
            assert!(slot.idle_since_us() > before);
        });
    }
}
