//! The exporter's answers: `/metrics`, `/healthz`, `/hiccups`, and
//! everything else.
//!
//! This module owns what a request gets back: the routes, their methods
//! (GET and HEAD), status codes, content types, `Cache-Control`, the health
//! closure's verdict turned into a bounded one-line body, and the hiccup
//! source's JSON document (a panic in either closure becomes a 500, not a
//! dead exporter; `/hiccups` without a source is a 404 that says so).
//! Answering never blocks: `/metrics` encodes the registry, `/healthz` and
//! `/hiccups` call closures that must not block.
//!
//! It does not accept, time or limit connections, nor parse HTTP (that is
//! [`super::connections`] and hyper): it sees one parsed request at a time.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, ALLOW, CACHE_CONTROL, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use prometheus::Registry;

use crate::metrics::Metrics;

/// The `Content-Type` of `/metrics`: Prometheus' text format 0.0.4.
pub(crate) const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Longest health reason sent, in bytes.
const MAX_REASON: usize = 512;

/// What `/healthz` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Health {
    /// 200 `ok`.
    Healthy,
    /// 503 with this one-line reason, e.g. `event loop "main" stalled for 2.1 s`.
    Unhealthy(String),
}

/// Asked on every `/healthz` request, from the exporter's thread. Must not
/// block (it typically copies the monitor's last status).
pub(crate) type HealthFn = Arc<dyn Fn() -> Health + Send + Sync>;

/// Asked on every `/hiccups` request, from the exporter's thread: returns
/// a JSON document (the recent hiccups). Must not block.
pub(crate) type HiccupsFn = Arc<dyn Fn() -> String + Send + Sync>;

/// The `Content-Type` of `/hiccups`.
pub(crate) const JSON_CONTENT_TYPE: &str = "application/json";

/// What the exporter serves: every connection answers its requests from it.
pub(crate) struct Endpoints {
    /// Rendered on `/metrics`.
    pub(crate) registry: Registry,
    /// Asked on `/healthz`.
    pub(crate) health: HealthFn,
    /// Asked on `/hiccups`; without it `/hiccups` is a 404.
    pub(crate) hiccups: Option<HiccupsFn>,
}

/// The response to one request.
pub(super) fn respond(state: &Endpoints, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let readable = matches!(*req.method(), Method::GET | Method::HEAD);
    match req.uri().path() {
        "/metrics" if readable => response(
            StatusCode::OK,
            METRICS_CONTENT_TYPE,
            Metrics::encode(&state.registry),
        ),
        "/healthz" if readable => match catch_unwind(AssertUnwindSafe(|| (state.health)())) {
            Ok(Health::Healthy) => text(StatusCode::OK, "ok\n".into()),
            Ok(Health::Unhealthy(reason)) => {
                text(StatusCode::SERVICE_UNAVAILABLE, one_line(&reason))
            }
            Err(_) => {
                tracing::error!("loopwatch health check panicked");
                text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "health check failed\n".into(),
                )
            }
        },
        "/hiccups" if readable => hiccups(state.hiccups.as_ref()),
        "/metrics" | "/healthz" | "/hiccups" => {
            let mut r = text(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed: use GET or HEAD\n".into(),
            );
            r.headers_mut()
                .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
            r
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: loopwatch serves /metrics, /healthz and /hiccups\n".into(),
        ),
    }
}

/// The answer to `GET /hiccups`.
fn hiccups(source: Option<&HiccupsFn>) -> Response<Full<Bytes>> {
    let Some(source) = source else {
        return text(
            StatusCode::NOT_FOUND,
            "not found: this watchdog records no hiccups (no hiccup source given to the exporter)\n"
                .into(),
        );
    };
    match catch_unwind(AssertUnwindSafe(|| source())) {
        Ok(json) => response(StatusCode::OK, JSON_CONTENT_TYPE, json),
        Err(_) => {
            tracing::error!("loopwatch hiccup source panicked");
            text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "hiccup source failed\n".into(),
            )
        }
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    response(status, "text/plain; charset=utf-8", body)
}

fn response(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// The first line of `reason`, bounded, with a newline.
fn one_line(reason: &str) -> String {
    let line = reason.lines().next().unwrap_or("").trim();
    let line = if line.is_empty() { "unhealthy" } else { line };
    let mut end = line.len().min(MAX_REASON);
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}\n", &line[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_one_bounded_line() {
        assert_eq!(one_line("a\nb"), "a\n");
        assert_eq!(one_line("  \n"), "unhealthy\n");
        let long = "é".repeat(1000);
        let l = one_line(&long);
        assert!(l.len() <= MAX_REASON + 1 && l.ends_with('\n'));
    }
}
