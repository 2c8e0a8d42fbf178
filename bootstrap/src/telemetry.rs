//! OpenTelemetry traces: `tracing` spans exported over OTLP/gRPC, and W3C `traceparent`
//! carried across the tiers. Configured only by the standard variables
//! (`OTEL_EXPORTER_OTLP_ENDPOINT` or `…_TRACES_ENDPOINT`, `OTEL_SERVICE_NAME`,
//! `OTEL_TRACES_SAMPLER`/`…_ARG`, `OTEL_SDK_DISABLED`); off when no endpoint is set, and then
//! no span is bridged and the helpers below return at once.

use std::{
    sync::{
        OnceLock,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
};

use opentelemetry::{
    propagation::{Extractor, Injector, TextMapPropagator},
    trace::{TraceContextExt, TracerProvider as _},
};
use opentelemetry_sdk::{Resource, propagation::TraceContextPropagator, trace::SdkTracerProvider};
use tracing::Subscriber;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::registry::LookupSpan;

/// The variables read here (deployment files are checked against them).
pub const ENV: &[&str] = &[
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_HEADERS",
    "OTEL_EXPORTER_OTLP_TIMEOUT",
    "OTEL_SERVICE_NAME",
    "OTEL_RESOURCE_ATTRIBUTES",
    "OTEL_TRACES_SAMPLER",
    "OTEL_TRACES_SAMPLER_ARG",
    "OTEL_SDK_DISABLED",
    "OTEL_BSP_SCHEDULE_DELAY",
    "OTEL_BSP_MAX_QUEUE_SIZE",
];

static ENABLED: AtomicBool = AtomicBool::new(false);
static PROPAGATOR: OnceLock<TraceContextPropagator> = OnceLock::new();

/// Whether spans are exported: one relaxed load, so call sites can skip all tracing work
/// when they are not.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Whether the environment asks for traces (an OTLP endpoint, and the SDK not disabled).
pub fn wanted(env: impl Fn(&str) -> Option<String>) -> bool {
    let set = |name: &str| env(name).is_some_and(|v| !v.trim().is_empty());
    let disabled = env("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"));
    !disabled && (set("OTEL_EXPORTER_OTLP_ENDPOINT") || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
}

/// Keeps the exporter running; dropping it sends what is still buffered, then stops it.
#[derive(Debug)]
pub struct TelemetryGuard {
    provider: SdkTracerProvider,
    export: Option<(tokio::sync::oneshot::Sender<()>, JoinHandle<()>)>,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Err(e) = self.provider.shutdown() {
            eprintln!("traces: shutdown: {e}");
        }
        if let Some((stop, thread)) = self.export.take() {
            let _ = stop.send(());
            let _ = thread.join();
        }
    }
}

/// The layer that exports spans as `service`'s (unless `OTEL_SERVICE_NAME` names it), or
/// `None` when traces are off or the exporter cannot be made (said on stderr: the log
/// subscriber is not installed yet).
pub fn layer<S>(
    service: &str,
) -> Option<(
    tracing_opentelemetry::OpenTelemetryLayer<S, opentelemetry_sdk::trace::Tracer>,
    TelemetryGuard,
)>
where
    S: Subscriber + for<'span> LookupSpan<'span>,
{
    if !wanted(|name| std::env::var(name).ok()) {
        return None;
    }
    // The exporter's gRPC channel runs on a small runtime of its own, so exporting never
    // competes with requests on the service's runtime, and can start before it.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("traces off: cannot start the export runtime: {e}");
            return None;
        }
    };
    let exporter = {
        let _entered = runtime.enter();
        opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .build()
    };
    let exporter = match exporter {
        Ok(e) => e,
        Err(e) => {
            eprintln!("traces off: cannot make the OTLP exporter: {e}");
            return None;
        }
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("otlp-export".into())
        .spawn(move || {
            runtime.block_on(async {
                let _ = stopped.await;
            });
        });
    let thread = match thread {
        Ok(t) => t,
        Err(e) => {
            eprintln!("traces off: cannot start the export thread: {e}");
            return None;
        }
    };
    let mut resource = Resource::builder();
    if std::env::var("OTEL_SERVICE_NAME").is_err() {
        resource = resource.with_service_name(service.to_owned());
    }
    // The sampler comes from OTEL_TRACES_SAMPLER (the SDK reads it; parent-based always-on
    // by default).
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource.build())
        .build();
    let tracer = provider.tracer(service.to_owned());
    let _ = PROPAGATOR.set(TraceContextPropagator::new());
    ENABLED.store(true, Ordering::Relaxed);
    let layer = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_tracked_inactivity(false);
    Some((
        layer,
        TelemetryGuard {
            provider,
            export: Some((stop, thread)),
        },
    ))
}

struct Get<'a, F>(F, std::marker::PhantomData<&'a str>);

impl<'a, F: Fn(&str) -> Option<&'a str>> Extractor for Get<'a, F> {
    fn get(&self, key: &str) -> Option<&str> {
        (self.0)(key)
    }

    fn keys(&self) -> Vec<&str> {
        Vec::new()
    }
}

struct Set<F>(F);

impl<F: FnMut(&'static str, String)> Injector for Set<F> {
    fn set(&mut self, key: &str, value: String) {
        // The W3C propagator writes only these two.
        let key = match key {
            "traceparent" => "traceparent",
            "tracestate" => "tracestate",
            _ => return,
        };
        (self.0)(key, value);
    }
}

/// Makes `span` continue the trace whose `traceparent` (and `tracestate`) `header` returns,
/// or start one, and records its `trace_id` and `span_id` fields (declared `Empty` by the
/// caller) so every log line inside it carries them. Nothing when traces are off.
pub fn continue_trace<'a>(span: &tracing::Span, header: impl Fn(&str) -> Option<&'a str>) {
    if !enabled() {
        return;
    }
    let Some(propagator) = PROPAGATOR.get() else {
        return;
    };
    let parent = propagator.extract(&Get(header, std::marker::PhantomData));
    if parent.span().span_context().is_valid() {
        let _ = span.set_parent(parent);
    }
    record_ids(span);
}

/// Records `span`'s `trace_id` and `span_id` fields (when traces are on).
pub fn record_ids(span: &tracing::Span) {
    if !enabled() {
        return;
    }
    let context = span.context();
    let ids = context.span().span_context().clone();
    if ids.is_valid() {
        span.record("trace_id", tracing::field::display(ids.trace_id()));
        span.record("span_id", tracing::field::display(ids.span_id()));
    }
}

/// Writes `span`'s context as `traceparent` (and `tracestate`) through `set`, for the next
/// tier. Nothing when traces are off.
pub fn inject(span: &tracing::Span, set: impl FnMut(&'static str, String)) {
    if !enabled() {
        return;
    }
    if let Some(propagator) = PROPAGATOR.get() {
        propagator.inject_context(&span.context(), &mut Set(set));
    }
}
