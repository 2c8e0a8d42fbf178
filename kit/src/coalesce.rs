//! One write where HTTP/2 would make two. hyper's connection task flushes what it has
//! each time it runs, and a call's body (client) or a response's trailers (server) come from
//! another task a moment later; so a call went out as two writes, and over Connect's TLS as
//! two records, each encrypted, sent, woken on and decrypted. [`Coalesced`] holds a flush
//! back for one turn of the scheduler, so that what the other task adds meanwhile goes out
//! with it. Every gRPC connection of the kit, plain or mutual TLS, both sides, runs on it.

use std::{
    io,
    pin::Pin,
    task::{Context, Poll, ready},
};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::server::Connected;

/// Past this much held back, a write goes out without waiting for the flush.
const HELD_AT_MOST: usize = 64 * 1024;

/// A stream whose writes are held until a flush, and whose flush waits one turn of the
/// scheduler before it writes them out together.
#[derive(Debug)]
pub struct Coalesced<IO> {
    io: IO,
    held: Vec<u8>,
    /// How much of `held` the stream has taken (a write may take part of it).
    sent: usize,
    /// The current flush already gave the other tasks their turn.
    waited: bool,
}

impl<IO> Coalesced<IO> {
    pub fn new(io: IO) -> Self {
        Self {
            io,
            held: Vec::new(),
            sent: 0,
            waited: false,
        }
    }

    pub fn get_ref(&self) -> &IO {
        &self.io
    }
}

impl<IO: AsyncWrite + Unpin> Coalesced<IO> {
    /// Writes out what is held.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.held.len() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.held[self.sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
        }
        self.held.clear();
        self.sent = 0;
        Poll::Ready(Ok(()))
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Coalesced<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Coalesced<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[io::IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.held.len() >= HELD_AT_MOST {
            ready!(this.poll_send(cx))?;
        }
        let mut n = 0;
        for buf in bufs {
            this.held.extend_from_slice(buf);
            n += buf.len();
        }
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.sent < this.held.len() && !this.waited {
            // Back of the run queue: the tasks this one just woke (a body, trailers) run
            // first and add their frames.
            this.waited = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        ready!(this.poll_send(cx))?;
        this.waited = false;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send(cx))?;
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

impl<IO: Connected> Connected for Coalesced<IO> {
    type ConnectInfo = IO::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

/// Dials instances over plain TCP (no delay), coalesced: what an upstream uses with
/// Connect off.
pub fn plain_dial() -> discovery::balancer::Dial {
    discovery::balancer::Dial::new(|endpoint| {
        let addr = endpoint.addr;
        Box::pin(async move {
            let tcp = tokio::net::TcpStream::connect(addr).await?;
            tcp.set_nodelay(true)?;
            Ok(Box::new(Coalesced::new(tcp)) as discovery::balancer::BoxedIo)
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// Records each write it is given.
    #[derive(Default)]
    struct Writes(Vec<Vec<u8>>);

    impl AsyncWrite for Writes {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.0.push(buf.to_vec());
            Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn frames_written_before_a_flush_go_out_as_one_write() {
        let mut s = Coalesced::new(Writes::default());
        s.write_all(b"headers").await.expect("held");
        let taken = s
            .write_vectored(&[io::IoSlice::new(b"+data"), io::IoSlice::new(b"+trailers")])
            .await
            .expect("held");
        assert_eq!(taken, 14, "every slice is taken whole");
        assert!(s.get_ref().0.is_empty(), "nothing goes out before a flush");
        s.flush().await.expect("flushed");
        assert_eq!(s.get_ref().0, [b"headers+data+trailers".to_vec()]);
        // A flush with nothing held writes nothing; a shutdown sends what is held.
        s.flush().await.expect("flushed");
        s.write_all(b"bye").await.expect("held");
        s.shutdown().await.expect("shut");
        assert_eq!(s.get_ref().0.len(), 2);
        assert_eq!(s.get_ref().0[1], b"bye");
    }

    #[tokio::test]
    async fn a_flush_lets_the_tasks_it_woke_add_their_frames_first() {
        use std::sync::{Arc, Mutex};
        // Two tasks share the stream, as hyper's connection and a body's task share a
        // connection: the second writes after the first asked to flush, and both frames go
        // out in the first task's one write.
        let s = Arc::new(Mutex::new(Coalesced::new(Writes::default())));
        let (first, second) = (Arc::clone(&s), Arc::clone(&s));
        let flushing = tokio::spawn(std::future::poll_fn(move |cx| {
            let mut s = first
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if s.held.is_empty() && s.get_ref().0.is_empty() {
                let _ = Pin::new(&mut *s).poll_write(cx, b"headers");
            }
            Pin::new(&mut *s).poll_flush(cx)
        }));
        let adding = tokio::spawn(std::future::poll_fn(move |cx| {
            let mut s = second
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            Pin::new(&mut *s).poll_write(cx, b"+trailers")
        }));
        adding.await.expect("the second task").expect("held");
        flushing.await.expect("the first task").expect("flushed");
        let s = s.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        assert_eq!(s.get_ref().0, [b"headers+trailers".to_vec()]);
    }
}
