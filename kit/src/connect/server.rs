//! The server's side of Connect: every connection is a TLS handshake that requires a client
//! certificate chaining to the CA roots, and every call is authorized by the caller's SPIFFE
//! identity against Consul's intentions (`PERMISSION_DENIED` when refused).

use std::{
    collections::HashMap,
    io,
    pin::Pin,
    sync::{Arc, Mutex, PoisonError},
    task::{Context, Poll},
    time::{Duration, Instant},
};

use discovery::consul::SpiffeId;
use futures_util::Stream;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::mpsc,
};
use tokio_rustls::{TlsAcceptor, server::TlsStream};
use tonic::{Status, transport::server::Connected};

use super::{Connect, verify};
use crate::{
    coalesce::Coalesced,
    gate::{Check, Gate, Verdict},
};

/// Who is on the other end of a connection: the calling service, as its certificate names
/// it. tonic puts it in every request's extensions.
#[derive(Debug, Clone)]
pub struct Peer {
    pub caller: Option<Arc<SpiffeId>>,
}

/// One accepted connection after its handshake.
#[derive(Debug)]
pub struct TlsConn {
    stream: Coalesced<TlsStream<TcpStream>>,
    peer: Peer,
}

impl Connected for TlsConn {
    type ConnectInfo = Peer;

    fn connect_info(&self) -> Peer {
        self.peer.clone()
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// The connections a Connect server serves: accepted on the kept listener, each handshake
/// on a task of its own (a slow or silent client holds up no one), with the certificate
/// in force when it arrives. Dropping it closes the listener.
pub type TlsIncoming = Pin<Box<dyn Stream<Item = io::Result<TlsConn>> + Send>>;

impl Connect {
    /// Serves TLS on `listener`; a handshake longer than `timeout` is dropped.
    pub fn incoming(&self, listener: TcpListener, timeout: Duration) -> TlsIncoming {
        let (tx, rx) = mpsc::channel::<io::Result<TlsConn>>(64);
        let connect = self.clone();
        tokio::spawn(async move {
            loop {
                let (tcp, remote) = tokio::select! {
                    accepted = crate::lifecycle::accept(&listener) => accepted,
                    // The server stopped listening: close the port.
                    () = tx.closed() => return,
                };
                let acceptor = TlsAcceptor::from(connect.server_config());
                let tx = tx.clone();
                tokio::spawn(async move {
                    let stream = match tokio::time::timeout(timeout, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => stream,
                        Ok(Err(e)) => {
                            tracing::warn!(%remote, error = %e, "TLS handshake refused");
                            return;
                        }
                        Err(_) => {
                            tracing::warn!(%remote, ?timeout, "TLS handshake timed out");
                            return;
                        }
                    };
                    let caller = stream
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|chain| chain.first())
                        .and_then(|cert| verify::spiffe_id(cert).ok())
                        .map(Arc::new);
                    let peer = Peer { caller };
                    let stream = Coalesced::new(stream);
                    let _ = tx.send(Ok(TlsConn { stream, peer })).await;
                });
            }
        });
        Box::pin(futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|conn| (conn, rx))
        }))
    }

    /// The per-call authorization of this server's callers. Every `every`, the decisions
    /// for the services that called in the last minute are asked again in the background, so
    /// an intention change reaches open connections within that, however sparse the calls.
    pub fn authorizer(&self, every: Duration) -> Gate<Arc<Authorizer>> {
        let authorizer = Arc::new(Authorizer {
            connect: self.clone(),
            decisions: Mutex::new(HashMap::new()),
        });
        tokio::spawn(refresh(Arc::downgrade(&authorizer), every));
        Gate(authorizer)
    }
}

/// An `authorize` answer for one calling service.
#[derive(Debug, Clone)]
struct Decision {
    caller: Arc<SpiffeId>,
    allowed: bool,
    reason: Arc<str>,
    /// When the agent gave it.
    asked: Instant,
    /// When a call last used it: a service that stopped calling is forgotten.
    used: Instant,
}

/// Answers older than this are not used when the agent cannot be asked again: the caller
/// gets `UNAVAILABLE` rather than a stale allow.
const STALE_LIMIT: Duration = Duration::from_secs(60);
/// A service that has not called for this long is no longer asked about.
const IDLE_LIMIT: Duration = Duration::from_secs(60);
/// One `authorize` round trip at most.
const ASK_TIMEOUT: Duration = Duration::from_secs(2);

/// The per-call authorization of a server's callers (a [`Check`]), with its decisions by
/// calling service.
#[derive(Debug)]
pub struct Authorizer {
    connect: Connect,
    /// By calling service: intentions are between services, not instances.
    decisions: Mutex<HashMap<String, Decision>>,
}

/// Asks again, every `every`, about each service that called recently, until the server
/// (the last holder of the authorizer) is gone.
async fn refresh(authorizer: std::sync::Weak<Authorizer>, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        let Some(authorizer) = authorizer.upgrade() else {
            return;
        };
        let callers: Vec<Arc<SpiffeId>> = {
            let mut decisions = authorizer
                .decisions
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            decisions.retain(|_, d| d.used.elapsed() < IDLE_LIMIT);
            decisions.values().map(|d| Arc::clone(&d.caller)).collect()
        };
        for caller in callers {
            let _ = authorizer.ask(&caller).await;
        }
    }
}

impl Authorizer {
    /// The decision for `caller`, unless there is none or it is too old to stand for the
    /// agent's (the refresher keeps it young while the agent answers).
    fn cached(&self, caller: &SpiffeId) -> Option<Result<(), Status>> {
        let mut decisions = self
            .decisions
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let decision = decisions.get_mut(&caller.service)?;
        if decision.asked.elapsed() > STALE_LIMIT {
            return None;
        }
        decision.used = Instant::now();
        Some(self.verdict(caller, decision.allowed, &decision.reason))
    }

    fn verdict(&self, caller: &SpiffeId, allowed: bool, reason: &str) -> Result<(), Status> {
        if allowed {
            Ok(())
        } else {
            Err(Status::permission_denied(format!(
                "{} may not call {}: {reason}",
                caller.service,
                self.connect.service()
            )))
        }
    }

    /// Asks the agent, remembers the answer, and logs a change of mind. When the agent
    /// cannot answer, the last decision stands while it is young enough.
    async fn ask(&self, caller: &Arc<SpiffeId>) -> Result<(), Status> {
        let asked = tokio::time::timeout(
            ASK_TIMEOUT,
            self.connect
                .consul()
                .connect_authorize(self.connect.service(), caller, ""),
        )
        .await;
        let mut decisions = self
            .decisions
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let answer = match asked {
            Ok(Ok(answer)) => answer,
            failed => {
                let why = match failed {
                    Ok(Err(e)) => e.to_string(),
                    _ => format!("no answer within {ASK_TIMEOUT:?}"),
                };
                tracing::warn!(caller = %caller, error = why, "cannot authorize with the agent");
                return match decisions.get(&caller.service) {
                    Some(d) if d.asked.elapsed() <= STALE_LIMIT => {
                        self.verdict(caller, d.allowed, &d.reason)
                    }
                    _ => Err(Status::unavailable("cannot authorize the caller now")),
                };
            }
        };
        let before = decisions.get(&caller.service).map(|d| d.allowed);
        if before != Some(answer.authorized) {
            if answer.authorized {
                tracing::info!(caller = %caller, reason = answer.reason, "caller authorized");
            } else {
                tracing::warn!(caller = %caller, reason = answer.reason, "caller refused by intentions");
            }
        }
        let now = Instant::now();
        let used = decisions.get(&caller.service).map_or(now, |d| d.used);
        let reason: Arc<str> = answer.reason.into();
        decisions.insert(
            caller.service.clone(),
            Decision {
                caller: Arc::clone(caller),
                allowed: answer.authorized,
                reason: Arc::clone(&reason),
                asked: now,
                used,
            },
        );
        self.verdict(caller, answer.authorized, &reason)
    }
}

impl Check for Arc<Authorizer> {
    type Pass = ();

    fn check<B>(&self, request: &http::Request<B>) -> Verdict<()> {
        let Some(caller) = request
            .extensions()
            .get::<Peer>()
            .and_then(|p| p.caller.clone())
        else {
            return Verdict::Refuse(Status::permission_denied(
                "no Connect identity: call with the caller's Consul Connect certificate",
            ));
        };
        match self.cached(&caller) {
            Some(Ok(())) => Verdict::Pass(()),
            Some(Err(status)) => Verdict::Refuse(status),
            None => {
                // The first call from this service: ask the agent before answering.
                let authorizer = Arc::clone(self);
                Verdict::Ask(Box::pin(async move { authorizer.ask(&caller).await }))
            }
        }
    }
}
