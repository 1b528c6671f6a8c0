//! OpenTelemetry traces: one span per inquiry (agency, service, purpose, tracking code,
//! outcome — never subject data) with child spans for the decision and the provider call;
//! the caller's W3C `traceparent` is honoured (an edge layer makes it the current context);
//! export over OTLP/gRPC when `telemetry.otlp_endpoint` is set (off by default).

use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant};

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{SpanKind, Status, TraceContextExt, Tracer as _};
use opentelemetry::{global, Context, KeyValue};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;

use crate::edge::error::HubError;
use crate::ops::metrics::Metrics;

/// Name of the tracer (instrumentation scope) of the hub's spans.
pub const TRACER: &str = "tabadol-hub";

/// A running OTLP export; flushes and stops on [`Telemetry::shutdown`].
pub struct Telemetry {
    provider: SdkTracerProvider,
}

impl Telemetry {
    /// Installs the global tracer provider exporting to `endpoint` (OTLP/gRPC, e.g.
    /// `http://127.0.0.1:4317`).
    pub fn start(endpoint: &str, service_name: &str) -> anyhow::Result<Telemetry> {
        use opentelemetry_otlp::WithExportConfig as _;
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint)
            .with_timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| anyhow::anyhow!("telemetry.otlp_endpoint {endpoint}: {e}"))?;
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(
                opentelemetry_sdk::Resource::builder()
                    .with_service_name(service_name.to_owned())
                    .build(),
            )
            .build();
        global::set_tracer_provider(provider.clone());
        global::set_text_map_propagator(TraceContextPropagator::new());
        tracing::info!(
            message = "OpenTelemetry traces exported over OTLP",
            endpoint
        );
        Ok(Telemetry { provider })
    }

    /// Exports what is buffered now.
    pub fn flush(&self) {
        let _ = self.provider.force_flush();
    }

    /// Exports what is buffered and stops the exporter.
    pub fn shutdown(self) {
        if let Err(error) = self.provider.shutdown() {
            tracing::warn!(message = "OpenTelemetry shutdown", %error);
        }
    }
}

struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// The context a caller's `traceparent` / `tracestate` headers carry (W3C Trace Context);
/// empty when absent or malformed.
pub fn extract(headers: &http::HeaderMap) -> Context {
    TraceContextPropagator::new().extract(&HeaderExtractor(headers))
}

/// The `traceparent` (and `tracestate`) headers that pass `cx` on to a provider.
pub fn inject(cx: &Context) -> Vec<(String, String)> {
    struct Out(Vec<(String, String)>);
    impl Injector for Out {
        fn set(&mut self, key: &str, value: String) {
            self.0.push((key.to_owned(), value));
        }
    }
    let mut out = Out(Vec::new());
    TraceContextPropagator::new().inject_context(cx, &mut out);
    out.0
}

/// The W3C `traceparent` value of `cx` (None when it holds no valid span context).
pub fn traceparent(cx: &Context) -> Option<String> {
    inject(cx)
        .into_iter()
        .find(|(k, _)| k == "traceparent")
        .map(|(_, v)| v)
}

/// Tower layer making the caller's trace context current while its call is handled.
#[derive(Clone, Copy, Default)]
pub struct TraceContextLayer;

impl<S> tower::Layer<S> for TraceContextLayer {
    type Service = TraceContextService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        TraceContextService { inner }
    }
}

/// See [`TraceContextLayer`].
#[derive(Clone)]
pub struct TraceContextService<S> {
    inner: S,
}

impl<S, B> tower::Service<http::Request<B>> for TraceContextService<S>
where
    S: tower::Service<http::Request<B>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = opentelemetry::context::WithContext<S::Future>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        use opentelemetry::context::FutureExt as _;
        let parent = extract(req.headers());
        self.inner.call(req).with_context(parent)
    }
}

/// Observes one inquiry: its span (and children), its metrics. Dropped unfinished (the
/// caller went away), it records the inquiry as `cancelled`.
pub struct InquiryObservation<'a> {
    metrics: &'a Metrics,
    agency: String,
    service: String,
    started: Instant,
    cx: Context,
    done: bool,
}

impl<'a> InquiryObservation<'a> {
    /// Starts the inquiry's span under the current context (the caller's traceparent).
    pub fn start(
        metrics: &'a Metrics,
        agency: &str,
        service: &str,
        purpose: &str,
        tracking_code: &str,
    ) -> Self {
        let tracer = global::tracer(TRACER);
        let parent = Context::current();
        let span = tracer
            .span_builder("tabadol.inquiry")
            .with_kind(SpanKind::Server)
            .with_attributes([
                KeyValue::new("tabadol.agency", agency.to_owned()),
                KeyValue::new("tabadol.service", service.to_owned()),
                KeyValue::new("tabadol.purpose", clip(purpose)),
                KeyValue::new("tabadol.tracking_code", clip(tracking_code)),
            ])
            .start_with_context(&tracer, &parent);
        InquiryObservation {
            metrics,
            agency: agency.to_owned(),
            service: service.to_owned(),
            started: Instant::now(),
            cx: parent.with_span(span),
            done: false,
        }
    }

    /// The tracking code in canonical form, once validated.
    pub fn set_tracking_code(&self, canonical: &str) {
        self.cx
            .span()
            .set_attribute(KeyValue::new("tabadol.tracking_code", clip(canonical)));
    }

    /// A child span (`decision`, `provider_call`), ended when the returned guard drops.
    pub fn child(&self, name: &'static str) -> ChildSpan {
        let tracer = global::tracer(TRACER);
        let span = tracer
            .span_builder(name)
            .with_kind(if name == "tabadol.provider_call" {
                SpanKind::Client
            } else {
                SpanKind::Internal
            })
            .start_with_context(&tracer, &self.cx);
        ChildSpan {
            cx: self.cx.with_span(span),
            started: Instant::now(),
        }
    }

    /// Records the provider call (time, failure) on the metrics and its span.
    pub fn provider(&self, span: ChildSpan, provider: &str, error: Option<&HubError>) {
        let elapsed = span.started();
        span.cx
            .span()
            .set_attribute(KeyValue::new("tabadol.provider", provider.to_owned()));
        if let Some(e) = error {
            span.cx
                .span()
                .set_attribute(KeyValue::new("tabadol.outcome", e.outcome()));
            span.cx.span().set_status(Status::error(e.outcome()));
        }
        self.metrics.provider_call(provider, elapsed, error);
    }

    /// Ends the inquiry with its outcome.
    pub fn finish<T>(mut self, result: &Result<T, HubError>) {
        let outcome = match result {
            Ok(_) => "ok",
            Err(e) => e.outcome(),
        };
        self.end(outcome);
    }

    fn end(&mut self, outcome: &'static str) {
        self.done = true;
        self.metrics
            .inquiry(&self.agency, &self.service, outcome, self.started.elapsed());
        let span = self.cx.span();
        span.set_attribute(KeyValue::new("tabadol.outcome", outcome));
        if outcome != "ok" {
            span.set_status(Status::error(outcome));
        }
        span.end();
    }
}

impl Drop for InquiryObservation<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.end("cancelled");
        }
    }
}

/// A child span of an inquiry; ends on drop.
pub struct ChildSpan {
    cx: Context,
    started: Instant,
}

impl ChildSpan {
    fn started(&self) -> Duration {
        self.started.elapsed()
    }

    /// The context of this span, to pass on to the provider.
    pub fn context(&self) -> &Context {
        &self.cx
    }
}

impl Drop for ChildSpan {
    fn drop(&mut self) {
        self.cx.span().end();
    }
}

fn clip(s: &str) -> String {
    s.chars().take(64).collect()
}
