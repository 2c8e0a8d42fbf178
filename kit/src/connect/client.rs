//! The client's side of Connect: a balanced upstream dials each instance over TLS with this
//! service's leaf, and accepts only a certificate naming the service it meant to call.

use discovery::balancer::{BoxedIo, Dial};
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::Connect;
use crate::coalesce::Coalesced;

impl Connect {
    /// A channel to one instance of `service` at `addr` (connected on first use).
    pub fn channel(&self, service: &str, addr: std::net::SocketAddr) -> tonic::transport::Channel {
        let dial = self.dialer(service);
        let endpoint = discovery::Endpoint {
            id: format!("{service}@{addr}").into(),
            addr,
            weight: 1,
        };
        tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .map(|e| {
                e.connect_with_connector_lazy(tower::service_fn(move |_: http::Uri| {
                    let connecting = dial.connect(&endpoint);
                    async move { connecting.await.map(hyper_util::rt::TokioIo::new) }
                }))
            })
            .unwrap_or_else(|_| unreachable!("socket addresses are valid URIs"))
    }

    /// Dials instances of `service`; each new connection uses the certificates in force.
    pub fn dialer(&self, service: &str) -> Dial {
        // The verifier checks the SPIFFE URI's service against this name. Consul service
        // names are DNS labels; another name can never match a certificate.
        let name = ServerName::try_from(service.to_owned()).map_err(|e| {
            tracing::error!(service, error = %e, "not a Connect service name: no call can reach it");
            std::io::Error::new(std::io::ErrorKind::InvalidInput, e)
        });
        let connect = self.clone();
        Dial::new(move |endpoint| {
            let connector = TlsConnector::from(connect.client_config());
            let name = name
                .as_ref()
                .map(Clone::clone)
                .map_err(|e| std::io::Error::new(e.kind(), e.to_string()));
            let addr = endpoint.addr;
            Box::pin(async move {
                let name = name?;
                let tcp = TcpStream::connect(addr).await?;
                tcp.set_nodelay(true)?;
                let tls = connector.connect(name, tcp).await?;
                Ok(Box::new(Coalesced::new(tls)) as BoxedIo)
            })
        })
    }
}
