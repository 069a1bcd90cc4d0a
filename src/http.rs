//! HTTP on `node.http_listen`: `/metrics` (Prometheus text), `/healthz`, and the JSON API
//! under `/api/v1/`. Handlers ask the channel tasks for fresh snapshots; nothing here
//! touches the packet path.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Serialize;

use crate::runtime::Gateway;

pub struct AppState {
    pub node: String,
    pub gateway: Gateway,
    pub prometheus: PrometheusHandle,
}

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/api/v1/channels", get(channels))
        .route("/api/v1/channels/{name}", get(channel))
        .with_state(state)
}

/// Bind the listener (so the caller can report the real address) and serve until
/// `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<AppState>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}

pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await
}

async fn index() -> &'static str {
    "hitless: see /metrics, /healthz, /api/v1/channels\n"
}

async fn metrics(State(st): State<Arc<AppState>>) -> Response {
    for s in st.gateway.snapshots().await {
        crate::metrics::publish(&s);
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        st.prometheus.render(),
    )
        .into_response()
}

#[derive(Serialize)]
struct Health {
    status: &'static str,
    node: String,
    channels_running: usize,
    channels_stopped: Vec<String>,
}

async fn healthz(State(st): State<Arc<AppState>>) -> Response {
    let stopped: Vec<String> = st
        .gateway
        .channels
        .iter()
        .filter(|c| !c.is_running())
        .map(|c| c.name.clone())
        .collect();
    let h = Health {
        status: if stopped.is_empty() { "ok" } else { "degraded" },
        node: st.node.clone(),
        channels_running: st.gateway.channels.len() - stopped.len(),
        channels_stopped: stopped,
    };
    let code = if h.channels_stopped.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(h)).into_response()
}

async fn channels(State(st): State<Arc<AppState>>) -> Response {
    Json(st.gateway.snapshots().await).into_response()
}

async fn channel(State(st): State<Arc<AppState>>, Path(name): Path<String>) -> Response {
    match st.gateway.channels.iter().find(|c| c.name == name) {
        Some(c) => match c.snapshot().await {
            Some(s) => Json(s).into_response(),
            None => (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("channel {name:?} is not running\n"),
            )
                .into_response(),
        },
        None => (
            StatusCode::NOT_FOUND,
            format!("no channel named {name:?}\n"),
        )
            .into_response(),
    }
}
