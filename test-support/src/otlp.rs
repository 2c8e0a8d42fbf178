//! An OTLP trace collector for tests and benchmarks: a tonic server implementing
//! `opentelemetry.proto.collector.trace.v1.TraceService` on a free port, keeping (or, for
//! benchmarks, only counting) every span it receives, with the service that sent it.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
};

use opentelemetry_proto::tonic::{
    collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_server::{TraceService, TraceServiceServer},
    },
    common::v1::any_value::Value,
};
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};

/// One received span, its ids in lower-case hex as in `traceparent`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// `service.name` of the resource that sent it.
    pub service: String,
    pub name: String,
    pub trace_id: String,
    pub span_id: String,
    /// Empty for a root span.
    pub parent_span_id: String,
    /// 2 is OpenTelemetry's `STATUS_CODE_ERROR`.
    pub status_code: i32,
    /// String, integer and boolean attributes, as text.
    pub attributes: HashMap<String, String>,
}

#[derive(Debug, Default)]
struct Sink {
    keep: bool,
    spans: Mutex<Vec<Received>>,
    count: AtomicU64,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn text(value: Option<&Value>) -> Option<String> {
    match value? {
        Value::StringValue(s) => Some(s.clone()),
        Value::IntValue(i) => Some(i.to_string()),
        Value::BoolValue(b) => Some(b.to_string()),
        Value::DoubleValue(d) => Some(d.to_string()),
        _ => None,
    }
}

/// The service side, sharing the sink with the [`Collector`].
#[derive(Debug)]
struct Service(Arc<Sink>);

#[tonic::async_trait]
impl TraceService for Service {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        for resource_spans in request.into_inner().resource_spans {
            let service = resource_spans
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|a| a.key == "service.name")
                .and_then(|a| text(a.value.as_ref().and_then(|v| v.value.as_ref())))
                .unwrap_or_default();
            for span in resource_spans.scope_spans.into_iter().flat_map(|s| s.spans) {
                self.0.count.fetch_add(1, Ordering::Relaxed);
                if !self.0.keep {
                    continue;
                }
                let attributes = span
                    .attributes
                    .iter()
                    .filter_map(|a| {
                        let value = text(a.value.as_ref().and_then(|v| v.value.as_ref()))?;
                        Some((a.key.clone(), value))
                    })
                    .collect();
                let received = Received {
                    service: service.clone(),
                    name: span.name,
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent_span_id: hex(&span.parent_span_id),
                    status_code: span.status.map_or(0, |s| s.code),
                    attributes,
                };
                self.0
                    .spans
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(received);
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// A running collector; stops when dropped.
#[derive(Debug)]
pub struct Collector {
    addr: SocketAddr,
    sink: Arc<Sink>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Collector {
    /// A collector that keeps every span (for tests).
    pub async fn start() -> std::io::Result<Self> {
        Self::serve("127.0.0.1:0", true).await
    }

    /// On `addr`; `keep: false` only counts spans (for benchmarks).
    pub async fn serve(addr: &str, keep: bool) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let sink = Arc::new(Sink {
            keep,
            ..Sink::default()
        });
        let (stop, stopped) = oneshot::channel::<()>();
        let service = TraceServiceServer::new(Service(Arc::clone(&sink)));
        let task = tokio::spawn(async move {
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
            let _ = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = stopped.await;
                })
                .await;
        });
        Ok(Self {
            addr,
            sink,
            stop: Some(stop),
            task,
        })
    }

    /// `http://ip:port`, for `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every span kept so far.
    pub fn spans(&self) -> Vec<Received> {
        self.sink
            .spans
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// How many spans arrived, kept or not.
    pub fn count(&self) -> u64 {
        self.sink.count.load(Ordering::Relaxed)
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.abort();
    }
}
