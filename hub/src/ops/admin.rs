//! The admin listener (loopback by default, optionally mutual TLS): `/metrics`
//! (Prometheus/OpenMetrics text), `/health` (the health snapshot as JSON), `/` (the
//! read-only dashboard), `/report/usage` and `/report/public` (R13 reports of the running
//! hub). Nothing here changes the hub; nothing here shows subject data.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::events::outbox::Outbox;
use crate::inquiry::pipeline::Hub;
use crate::ops::health::Health;

/// Default port of the admin listener (`tabadol dev`, deploy/hub.example.yaml).
pub const DEFAULT_PORT: u16 = 9464;

/// `admin:` in the configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminSection {
    /// Address of the admin listener. Default `127.0.0.1:9464` (loopback only).
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Mutual TLS for the admin listener: clients need a certificate chained to `ca`.
    #[serde(default)]
    pub tls: Option<AdminTls>,
    /// When `listen` is taken, listen on a free port of the same address instead of failing
    /// (`tabadol dev` without `--admin-listen`; never from a configuration file).
    #[serde(skip)]
    pub fallback_to_free_port: bool,
}

/// Files of the admin listener's mutual TLS.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminTls {
    /// PEM root(s) that admin clients' certificates must chain to.
    pub ca: PathBuf,
    /// The listener's certificate chain (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], DEFAULT_PORT))
}

impl AdminSection {
    /// Plain HTTP on 127.0.0.1:`port`.
    pub fn loopback(port: u16) -> AdminSection {
        AdminSection {
            listen: SocketAddr::from(([127, 0, 0, 1], port)),
            tls: None,
            fallback_to_free_port: false,
        }
    }

    /// Configuration errors, collected with the others.
    pub fn validate(&self, errors: &mut Vec<String>) {
        if let Some(tls) = &self.tls {
            for (name, p) in [("ca", &tls.ca), ("cert", &tls.cert), ("key", &tls.key)] {
                if !p.exists() {
                    errors.push(format!(
                        "admin.tls.{name}: file {} does not exist",
                        p.display()
                    ));
                }
            }
        } else if !self.listen.ip().is_loopback() {
            errors.push(format!(
                "admin.listen: {} is not a loopback address; the admin listener shows the access matrix and usage, so off loopback it needs `admin.tls` (ca, cert, key) for mutual TLS",
                self.listen
            ));
        }
    }

    /// Resolves relative paths against the configuration file's directory.
    pub fn resolve_relative(&mut self, base: &std::path::Path) {
        if let Some(tls) = &mut self.tls {
            for p in [&mut tls.ca, &mut tls.cert, &mut tls.key] {
                if p.is_relative() {
                    *p = base.join(&*p);
                }
            }
        }
    }
}

/// What the admin pages read.
#[derive(Clone)]
pub struct AdminState {
    pub hub: Arc<Hub>,
    pub health: Arc<Health>,
    pub outbox: Arc<Outbox>,
    /// Whether a Kafka relay runs (its stall is an incident).
    pub kafka: bool,
}

/// A running admin listener.
pub struct AdminHandle {
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl AdminHandle {
    /// Stops accepting (open requests end with their connections).
    pub fn stop(self) {
        self.task.abort();
    }
}

/// The admin routes.
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/health", get(health))
        .route("/", get(dashboard))
        .route("/report/usage", get(report_usage))
        .route("/report/public", get(report_public))
        .route("/events", get(events))
        .with_state(state)
}

async fn metrics(State(s): State<AdminState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.hub.metrics.encode(),
    )
        .into_response()
}

async fn health(State(s): State<AdminState>) -> Response {
    let snap = s.health.snapshot();
    let serving = snap.hub.as_ref().is_some_and(|v| v.serving);
    let code = if serving {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, axum::Json(&*snap)).into_response()
}

#[derive(Deserialize)]
struct DashboardQuery {
    lang: Option<String>,
}

async fn dashboard(State(s): State<AdminState>, Query(q): Query<DashboardQuery>) -> Response {
    let lang = crate::ops::dashboard::Lang::parse(q.lang.as_deref());
    let page = tokio::task::spawn_blocking(move || crate::ops::dashboard::render(&s, lang)).await;
    match page {
        Ok(Ok(html)) => html_response(html),
        Ok(Err(e)) => {
            (StatusCode::INTERNAL_SERVER_ERROR, format!("dashboard: {e}")).into_response()
        }
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("dashboard: {e}")).into_response(),
    }
}

#[derive(Deserialize)]
struct EventsQuery {
    after: Option<u64>,
    limit: Option<usize>,
}

async fn events(State(s): State<AdminState>, Query(q): Query<EventsQuery>) -> Response {
    let page = tokio::task::spawn_blocking(move || {
        crate::ops::tail::page(
            &s.outbox,
            s.kafka,
            q.after.unwrap_or(0),
            q.limit.unwrap_or(crate::ops::tail::MAX_PAGE),
        )
    })
    .await;
    match page {
        Ok(Ok(p)) => axum::Json(p).into_response(),
        Ok(Err(e)) => (StatusCode::INTERNAL_SERVER_ERROR, format!("events: {e}")).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("events: {e}")).into_response(),
    }
}

#[derive(Deserialize)]
struct UsageQuery {
    month: Option<String>,
    quarter: Option<String>,
    format: Option<String>,
}

async fn report_usage(State(s): State<AdminState>, Query(q): Query<UsageQuery>) -> Response {
    let Some(month) = q.month else {
        return bad("give ?month=YYYY/MM (Jalali), e.g. ?month=1405/08");
    };
    report(
        s,
        crate::ops::report::Period::parse_month(&month),
        false,
        q.format,
    )
    .await
}

async fn report_public(State(s): State<AdminState>, Query(q): Query<UsageQuery>) -> Response {
    let Some(quarter) = q.quarter else {
        return bad("give ?quarter=YYYY-Q (Jalali), e.g. ?quarter=1405-3");
    };
    report(
        s,
        crate::ops::report::Period::parse_quarter(&quarter),
        true,
        q.format,
    )
    .await
}

async fn report(
    s: AdminState,
    period: Result<crate::ops::report::Period, String>,
    public: bool,
    format: Option<String>,
) -> Response {
    use crate::ops::report::{Format, Report};
    let period = match period {
        Ok(p) => p,
        Err(e) => return bad(&e),
    };
    let format = match Format::parse(format.as_deref().unwrap_or("html")) {
        Ok(f) => f,
        Err(e) => return bad(&e),
    };
    let built = tokio::task::spawn_blocking(move || {
        let (from, until) = period.bounds_micros();
        let records = s.hub.audit().records_between(from, until)?;
        let policy = &s.hub.policy().policy;
        Ok::<_, crate::inquiry::audit::AuditError>(Report::build(policy, period, &records, public))
    })
    .await;
    let report = match built {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => return (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
        Err(e) => return (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    };
    let body = report.render(format);
    let ctype = match format {
        Format::Html => "text/html; charset=utf-8",
        Format::Json => "application/json",
        Format::Csv => "text/csv; charset=utf-8",
        Format::Table => "text/plain; charset=utf-8",
    };
    ([(header::CONTENT_TYPE, ctype)], body).into_response()
}

fn bad(message: &str) -> Response {
    (StatusCode::BAD_REQUEST, message.to_owned()).into_response()
}

fn html_response(html: String) -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'",
            ),
        ],
        html,
    )
        .into_response()
}

/// Binds the admin listener; fails naming the address (or, with
/// `fallback_to_free_port`, takes a free port when that one is in use).
pub async fn bind(section: &AdminSection) -> anyhow::Result<TcpListener> {
    match TcpListener::bind(section.listen).await {
        Ok(l) => Ok(l),
        Err(e) if section.fallback_to_free_port && e.kind() == std::io::ErrorKind::AddrInUse => {
            let any = SocketAddr::new(section.listen.ip(), 0);
            let l = TcpListener::bind(any).await.map_err(|e| {
                anyhow::anyhow!("admin listener: cannot listen on {any}: {e}")
            })?;
            tracing::warn!(
                message = "admin port in use; the admin listener took a free port",
                wanted = %section.listen,
                addr = %l.local_addr()?,
            );
            Ok(l)
        }
        Err(e) => Err(anyhow::anyhow!(
            "admin listener: cannot listen on {}: {e}; choose another `admin.listen` (dev: --admin-listen)",
            section.listen
        )),
    }
}

/// Serves the admin routes on `listener` (over mutual TLS when `tls` is set).
pub fn serve(
    listener: TcpListener,
    tls: Option<&AdminTls>,
    state: AdminState,
) -> anyhow::Result<AdminHandle> {
    let acceptor = match tls {
        Some(t) => {
            let (cfg, _) = crate::edge::tls::server_config(&crate::edge::tls::TlsFiles {
                ca: t.ca.clone(),
                cert: t.cert.clone(),
                key: t.key.clone(),
                crls: Vec::new(),
            })
            .map_err(|e| anyhow::anyhow!("admin.tls: {e}"))?;
            let mut cfg = (*cfg).clone();
            cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
            Some(tokio_rustls::TlsAcceptor::from(Arc::new(cfg)))
        }
        None => None,
    };
    let addr = listener.local_addr()?;
    let app = router(state);
    let task = tokio::spawn(async move {
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(s) => s,
                Err(error) => {
                    tracing::warn!(message = "admin listener accept failed", %error);
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            };
            let app = app.clone();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let service = hyper_util::service::TowerToHyperService::new(app);
                let builder = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                );
                let result = match acceptor {
                    Some(acceptor) => {
                        let handshake = tokio::time::timeout(
                            std::time::Duration::from_secs(5),
                            acceptor.accept(stream),
                        )
                        .await;
                        match handshake {
                            Ok(Ok(tls)) => {
                                builder
                                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                                    .await
                            }
                            _ => return,
                        }
                    }
                    None => {
                        builder
                            .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                            .await
                    }
                };
                if let Err(error) = result {
                    tracing::debug!(message = "admin connection ended", %error);
                }
            });
        }
    });
    tracing::info!(message = "admin listener (metrics, dashboard, reports)", %addr, tls = tls.is_some());
    Ok(AdminHandle { addr, task })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn off_loopback_needs_mutual_tls() {
        let mut errors = Vec::new();
        let open: AdminSection = serde_yaml::from_str("listen: 0.0.0.0:9464").unwrap();
        open.validate(&mut errors);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].starts_with("admin.listen") && errors[0].contains("admin.tls"));
        let mut errors = Vec::new();
        let defaulted: AdminSection = serde_yaml::from_str("{}").unwrap();
        assert_eq!(defaulted.listen, default_listen());
        defaulted.validate(&mut errors);
        assert!(errors.is_empty(), "{errors:?}");
        let mut errors = Vec::new();
        let tls: AdminSection = serde_yaml::from_str(
            "listen: 0.0.0.0:9464\ntls: { ca: /nonexistent/ca, cert: /nonexistent/c, key: /nonexistent/k }",
        )
        .unwrap();
        tls.validate(&mut errors);
        assert_eq!(errors.len(), 3, "{errors:?}");
        assert!(errors[0].starts_with("admin.tls.ca"), "{errors:?}");
        assert!(serde_yaml::from_str::<AdminSection>("lisen: 127.0.0.1:1").is_err());
    }

    /// Existing configurations (no `admin:`, no `telemetry:`) keep working with both off;
    /// the sections parse, and a bad OTLP endpoint or an open admin address is reported
    /// with the other configuration errors.
    #[test]
    fn config_sections_default_off_and_are_validated() {
        let policy = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../policy/national");
        let base = format!(
            "listen: 127.0.0.1:7443\npolicy_dir: {}\ndata_dir: /nonexistent/d\n\
             tls: {{ ca: /nonexistent/ca.crt, cert: /nonexistent/hub.crt, key: /nonexistent/hub.key }}\n",
            policy.display()
        );
        let old: crate::ops::config::Config = serde_yaml::from_str(&base).unwrap();
        assert!(old.admin.is_none());
        assert!(old.telemetry.otlp_endpoint.is_none());
        let yaml = format!(
            "{base}admin: {{ listen: 0.0.0.0:9464 }}\ntelemetry: {{ otlp_endpoint: collector:4317 }}\n"
        );
        let cfg: crate::ops::config::Config = serde_yaml::from_str(&yaml).unwrap();
        let errors = match cfg.validate() {
            Ok(_) => Vec::new(),
            Err(crate::ops::config::ConfigErrors(e)) => e,
        };
        assert!(
            errors.iter().any(|e| e.starts_with("admin.listen")),
            "{errors:?}"
        );
        assert!(
            errors
                .iter()
                .any(|e| e.starts_with("telemetry.otlp_endpoint")),
            "{errors:?}"
        );
        assert!(serde_yaml::from_str::<crate::ops::config::Config>(&format!(
            "{base}telemetry: {{ endpoint: http://x:4317 }}\n"
        ))
        .is_err());
    }
}
