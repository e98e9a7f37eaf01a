//! Response bodies that drive their backend connection and give it back to the pool when read to the end.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::backend::{Backend, InFlight};
use crate::pool::{BoxError, Conn};

/// What to do when a response body ends: return the connection (clean end) or drop it.
pub(crate) struct Finisher {
    pub(crate) conn: Option<Conn>,
    pub(crate) backend: Arc<Backend>,
    pub(crate) _in_flight: InFlight,
}

impl Finisher {
    fn finish_clean(mut self) {
        if let Some(c) = self.conn.take() {
            self.backend.pool.checkin(c);
        }
    }
}

/// A backend response body streamed to the client. Polling it also polls the backend connection, which
/// feeds it: the whole exchange runs on the client connection's task.
pub(crate) struct Tracked {
    inner: Incoming,
    finisher: Option<Finisher>,
}

impl Tracked {
    pub(crate) fn new(inner: Incoming, finisher: Finisher) -> Tracked {
        let mut t = Tracked {
            inner,
            finisher: Some(finisher),
        };
        if t.inner.is_end_stream() {
            // Nothing to read (HEAD, 204, Content-Length: 0): the connection is free now.
            if let Some(f) = t.finisher.take() {
                f.finish_clean();
            }
        }
        t
    }
}

impl Body for Tracked {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if let Some(conn) = this.finisher.as_mut().and_then(|f| f.conn.as_mut()) {
            conn.poll_driver(cx);
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(None) => {
                if let Some(f) = this.finisher.take() {
                    f.finish_clean();
                }
                Poll::Ready(None)
            }
            Poll::Ready(Some(Ok(frame))) => {
                if this.inner.is_end_stream() {
                    if let Some(f) = this.finisher.take() {
                        f.finish_clean();
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                // The connection is broken: dropping the finisher drops it.
                this.finisher = None;
                Poll::Ready(Some(Err(Box::new(e))))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
