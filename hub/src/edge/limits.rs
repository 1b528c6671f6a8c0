//! Bounds at the edge, as tower layers in front of every gRPC service: only gRPC content
//! types reach a service (HTTP 415 otherwise), an agency holds at most so many streams
//! open across all its connections (RESOURCE_EXHAUSTED beyond)
//! within a bounded time, and the hub holds at most so many connections in total.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::{HeaderValue, Request, Response, StatusCode};
use http_body::{Body as HttpBody, Frame, SizeHint};
use tonic::body::Body;
use tonic::Status;
use tower::{Layer, Service};

use crate::edge::tls::PeerInfo;
use crate::inquiry::pipeline::Hub;

/// The edge's bounds (from the `limits:` section of the configuration).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EdgeLimits {
    /// HTTP/2 streams one connection may have open at once (SETTINGS_MAX_CONCURRENT_STREAMS).
    pub streams_per_connection: u32,
    /// Streams one agency may have open across all its connections.
    pub streams_per_agency: usize,
    /// How long a request body may take to end (END_STREAM).
    pub request_body_timeout: Duration,
}

impl Default for EdgeLimits {
    fn default() -> Self {
        EdgeLimits {
            streams_per_connection: 100,
            streams_per_agency: 1_000,
            request_body_timeout: Duration::from_secs(10),
        }
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

// ---------------------------------------------------------------------------------------
// Content type

/// Refuses, with HTTP 415 (as the gRPC over HTTP/2 spec says), every request whose
/// content-type is not `application/grpc` or `application/grpc+proto`: it never reaches a
/// service.
#[derive(Debug, Clone, Copy, Default)]
pub struct RequireGrpcLayer;

impl<S> Layer<S> for RequireGrpcLayer {
    type Service = RequireGrpc<S>;
    fn layer(&self, inner: S) -> RequireGrpc<S> {
        RequireGrpc { inner }
    }
}

/// See [`RequireGrpcLayer`].
#[derive(Debug, Clone)]
pub struct RequireGrpc<S> {
    inner: S,
}

/// Whether a content-type is one the hub's services speak.
pub fn is_grpc_content_type(value: Option<&HeaderValue>) -> bool {
    let Some(v) = value.and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let essence = v.split(';').next().unwrap_or("").trim();
    essence.eq_ignore_ascii_case("application/grpc")
        || essence.eq_ignore_ascii_case("application/grpc+proto")
}

impl<S, B> Service<Request<B>> for RequireGrpc<S>
where
    S: Service<Request<B>, Response = Response<Body>>,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = futures::future::Either<
        futures::future::Ready<Result<Response<Body>, S::Error>>,
        futures::future::MapOk<S::Future, fn(Response<Body>) -> Response<Body>>,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let ct = req.headers().get(http::header::CONTENT_TYPE);
        if is_grpc_content_type(ct) {
            use futures::TryFutureExt;
            return futures::future::Either::Right(
                self.inner
                    .call(req)
                    .map_ok(undecodable_is_invalid as fn(Response<Body>) -> Response<Body>),
            );
        }
        let shown = match ct {
            None => "no content-type".to_owned(),
            Some(v) => format!(
                "content-type `{}`",
                String::from_utf8_lossy(&v.as_bytes()[..v.len().min(64)])
            ),
        };
        let text = format!(
            "{shown} is not gRPC: this hub serves only gRPC; send content-type \
             application/grpc (or application/grpc+proto)\n"
        );
        let mut resp = Response::new(Body::new(http_body_full(text)));
        *resp.status_mut() = StatusCode::UNSUPPORTED_MEDIA_TYPE;
        resp.headers_mut().insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        futures::future::Either::Left(futures::future::ready(Ok(resp)))
    }
}

/// The message tonic's own prost codec gives an undecodable request (services that do not
/// use the hub's codec: `grpc.health.v1`, server reflection), percent-encoded as sent.
const PROST_DECODE_FAILED: &[u8] = b"failed%20to%20decode%20Protobuf%20message";

/// A trailers-only INTERNAL answer to an undecodable request becomes INVALID_ARGUMENT: the
/// caller sent a bad body (retrying it cannot help). The tabadol.v1 services already answer
/// so through their codec (`proto/src/codec.rs`); this covers health and reflection.
fn undecodable_is_invalid(mut resp: Response<Body>) -> Response<Body> {
    let headers = resp.headers();
    let internal = headers.get("grpc-status").map(HeaderValue::as_bytes) == Some(b"13");
    let decode = headers
        .get("grpc-message")
        .is_some_and(|m| m.as_bytes().starts_with(PROST_DECODE_FAILED));
    if internal && decode {
        let headers = resp.headers_mut();
        headers.insert("grpc-status", HeaderValue::from_static("3"));
        headers.insert(
            "grpc-message",
            HeaderValue::from_static(
                "the%20request%20body%20is%20not%20a%20valid%20protobuf%20message%20of%20this%20method",
            ),
        );
    }
    resp
}

/// A one-frame body holding `text`.
fn http_body_full(text: String) -> OneFrame {
    OneFrame(Some(bytes::Bytes::from(text)))
}

struct OneFrame(Option<bytes::Bytes>);

impl HttpBody for OneFrame {
    type Data = bytes::Bytes;
    type Error = std::convert::Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<bytes::Bytes>, Self::Error>>> {
        Poll::Ready(self.0.take().map(|b| Ok(Frame::data(b))))
    }
    fn is_end_stream(&self) -> bool {
        self.0.is_none()
    }
    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.0.as_ref().map_or(0, |b| b.len() as u64))
    }
}

// ---------------------------------------------------------------------------------------
// Streams per agency

/// Counts the streams (calls in progress, open server streams) of each agency across all
/// its connections and refuses one beyond `cap` with RESOURCE_EXHAUSTED. A stream counts
/// from its request until its response body is finished or dropped (so a Subscribe stream
/// counts for as long as it is open, and a refused one holds nothing).
#[derive(Clone)]
pub struct AgencyStreamsLayer {
    hub: Arc<Hub>,
    counts: Arc<StreamCounts>,
}

/// Open streams per agency.
pub struct StreamCounts {
    cap: usize,
    by_agency: RwLock<HashMap<String, Arc<AtomicUsize>>>,
}

impl StreamCounts {
    /// Counters allowing `cap` streams per agency.
    pub fn new(cap: usize) -> StreamCounts {
        StreamCounts {
            cap,
            by_agency: RwLock::new(HashMap::new()),
        }
    }

    fn counter(&self, key: &str) -> Arc<AtomicUsize> {
        if let Some(c) = self
            .by_agency
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
        {
            return c.clone();
        }
        self.by_agency
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .entry(key.to_owned())
            .or_default()
            .clone()
    }

    /// Takes one stream for `key`, or None when it already has `cap` open.
    pub fn acquire(&self, key: &str) -> Option<StreamGuard> {
        let counter = self.counter(key);
        let before = counter.fetch_add(1, Ordering::AcqRel);
        if before >= self.cap {
            counter.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(StreamGuard(counter))
    }

    /// Streams `key` has open now.
    pub fn open(&self, key: &str) -> usize {
        self.counter(key).load(Ordering::Acquire)
    }
}

/// One counted stream; released on drop.
pub struct StreamGuard(Arc<AtomicUsize>);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl AgencyStreamsLayer {
    /// Allows `cap` open streams per agency of `hub`'s policy.
    pub fn new(hub: Arc<Hub>, cap: usize) -> Self {
        AgencyStreamsLayer {
            hub,
            counts: Arc::new(StreamCounts::new(cap)),
        }
    }
}

impl AgencyStreamsLayer {
    /// The per-agency counts (read by the metrics).
    pub fn counts(&self) -> Arc<StreamCounts> {
        self.counts.clone()
    }
}

impl<S> Layer<S> for AgencyStreamsLayer {
    type Service = AgencyStreams<S>;
    fn layer(&self, inner: S) -> AgencyStreams<S> {
        AgencyStreams {
            inner,
            hub: self.hub.clone(),
            counts: self.counts.clone(),
        }
    }
}

/// See [`AgencyStreamsLayer`].
#[derive(Clone)]
pub struct AgencyStreams<S> {
    inner: S,
    hub: Arc<Hub>,
    counts: Arc<StreamCounts>,
}

impl<S, B> Service<Request<B>> for AgencyStreams<S>
where
    S: Service<Request<B>, Response = Response<Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Response<Body>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        // The agency of the connection's certificate; a certificate that matches no agency
        // is counted by its serial (the service then refuses it as UNAUTHENTICATED).
        let (key, agency) = match req.extensions().get::<PeerInfo>() {
            Some(peer) => {
                let policy = self.hub.policy();
                match policy
                    .policy
                    .agency_for_common_name(peer.common_name.as_deref().unwrap_or(""))
                {
                    Some(a) => (a.id.clone(), Some(a.id.clone())),
                    None => (format!("certificate {}", peer.serial), None),
                }
            }
            None => (String::from("(no certificate)"), None),
        };
        let Some(guard) = self.counts.acquire(&key) else {
            let who = agency.map_or_else(|| key.clone(), |a| format!("agency {a}"));
            let status = Status::resource_exhausted(format!(
                "{who} already has {cap} calls and streams open at the hub, its limit \
                 (limits.streams_per_agency); end some (e.g. close unused Subscribe \
                 streams) before opening more",
                cap = self.counts.cap
            ));
            return Box::pin(futures::future::ready(Ok(status.into_http::<Body>())));
        };
        let fut = self.inner.call(req);
        Box::pin(async move {
            let resp = fut.await?;
            Ok(resp.map(|body| {
                Body::new(Guarded {
                    inner: body,
                    _guard: guard,
                })
            }))
        })
    }
}

/// A response body that holds its stream's count until it is finished or dropped.
struct Guarded {
    inner: Body,
    _guard: StreamGuard,
}

impl HttpBody for Guarded {
    type Data = bytes::Bytes;
    type Error = Status;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<bytes::Bytes>, Status>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

// ---------------------------------------------------------------------------------------
// Request body deadline

/// Ends a request whose body has not ended (END_STREAM) within `timeout` of its headers:
/// the body then fails with INVALID_ARGUMENT, which the service answers with, instead of
/// waiting for it forever. Every hub method takes exactly one request message.
#[derive(Debug, Clone, Copy)]
pub struct BodyDeadlineLayer {
    timeout: Duration,
}

impl BodyDeadlineLayer {
    /// Request bodies must end within `timeout`.
    pub fn new(timeout: Duration) -> Self {
        BodyDeadlineLayer { timeout }
    }
}

impl<S> Layer<S> for BodyDeadlineLayer {
    type Service = BodyDeadline<S>;
    fn layer(&self, inner: S) -> BodyDeadline<S> {
        BodyDeadline {
            inner,
            timeout: self.timeout,
        }
    }
}

/// See [`BodyDeadlineLayer`].
#[derive(Debug, Clone)]
pub struct BodyDeadline<S> {
    inner: S,
    timeout: Duration,
}

impl<S> Service<Request<Body>> for BodyDeadline<S>
where
    S: Service<Request<Body>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> S::Future {
        let deadline = Instant::now() + self.timeout;
        let timeout = self.timeout;
        self.inner.call(req.map(|body| {
            Body::new(Deadlined {
                inner: body,
                deadline,
                timeout,
                sleep: None,
            })
        }))
    }
}

/// A request body that fails once its deadline passes before it ends.
struct Deadlined {
    inner: Body,
    deadline: Instant,
    timeout: Duration,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl HttpBody for Deadlined {
    type Data = bytes::Bytes;
    type Error = Status;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<bytes::Bytes>, Status>>> {
        let this = &mut *self;
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            return Poll::Ready(frame);
        }
        // The timer exists only for bodies that make the service wait.
        let deadline = this.deadline;
        let sleep = this
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline.into())));
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(Status::invalid_argument(format!(
                "the request body did not end within {} s (no END_STREAM); send the \
                 request message and end the stream at once (limits.request_body_timeout_ms)",
                this.timeout.as_secs_f64()
            ))))),
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

#[cfg(test)]
mod tests {
    use super::*;

    /// gRPC content types pass, with or without parameters; anything else does not.
    #[test]
    fn grpc_content_types() {
        let ok = |s: &'static str| is_grpc_content_type(Some(&HeaderValue::from_static(s)));
        assert!(ok("application/grpc"));
        assert!(ok("application/grpc+proto"));
        assert!(ok("Application/GRPC; charset=utf-8"));
        assert!(!ok("application/json"));
        assert!(!ok("application/grpc+json"));
        assert!(!ok("application/grpc-web"));
        assert!(!ok("text/plain"));
        assert!(!is_grpc_content_type(None));
    }

    /// An agency gets `cap` streams; one more is refused until one ends.
    #[test]
    fn stream_cap_per_agency() {
        let counts = StreamCounts::new(2);
        let a = counts.acquire("cbi").unwrap();
        let _b = counts.acquire("cbi").unwrap();
        assert!(counts.acquire("cbi").is_none());
        assert!(counts.acquire("nocr").is_some());
        drop(a);
        assert_eq!(counts.open("cbi"), 1);
        assert!(counts.acquire("cbi").is_some());
    }
}
