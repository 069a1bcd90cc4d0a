//! HTTP on `node.http_listen`: `/metrics` (Prometheus text), `/healthz`, and the JSON API
//! under `/api/v1/`. Handlers ask the channel threads for fresh snapshots and send them
//! operator commands; nothing here touches the packet path.
//!
//! | method | path | what |
//! | --- | --- | --- |
//! | GET | `/api/v1/channels` | every channel |
//! | GET | `/api/v1/channels/{name}` | one channel (switch mode: what is on air and why) |
//! | POST | `/api/v1/channels/{name}/lock` | `{"source":"b"}`: play that source whatever its health |
//! | POST | `/api/v1/channels/{name}/unlock` | back to automatic selection |
//! | POST | `/api/v1/channels/{name}/stage` | `{"stage":"pre-live"\|"live"\|"post-live"}` |
//! | POST | `/api/v1/channels/{name}/mute`, `/unmute` | notifications and warning logs off / on |
//! | POST | `/api/v1/channels/{name}/disable`, `/enable` | stop (sockets closed) / start again |
//! | * | `/api/v1/cluster...` | cluster status and actions (see `control::api`) |
//!
//! When `node.api_token_file` is set, every request other than GET/HEAD needs
//! `Authorization: Bearer <token>`.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::{Deserialize, Serialize};
use tokio::sync::RwLock;

use crate::config::Stage;
use crate::runtime::Gateway;

pub struct AppState {
    pub node: String,
    pub gateway: RwLock<Gateway>,
    pub prometheus: PrometheusHandle,
    /// Set once the control task runs (nodes with `[cluster]`).
    pub cluster: std::sync::OnceLock<crate::control::transport::ClusterHandle>,
    /// Bearer token for mutating calls (`node.api_token_file`).
    pub api_token: Option<String>,
}

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/api/v1/channels", get(channels))
        .route("/api/v1/channels/{name}", get(channel))
        .route("/api/v1/channels/{name}/lock", post(lock))
        .route("/api/v1/channels/{name}/unlock", post(unlock))
        .route("/api/v1/channels/{name}/stage", post(stage))
        .route("/api/v1/channels/{name}/mute", post(mute))
        .route("/api/v1/channels/{name}/unmute", post(unmute))
        .route("/api/v1/channels/{name}/enable", post(enable))
        .route("/api/v1/channels/{name}/disable", post(disable))
        .merge(crate::control::api::routes())
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            require_token,
        ))
        .with_state(state)
}

/// Serve until `shutdown` resolves.
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

/// Mutating calls need the bearer token when one is configured.
async fn require_token(
    State(st): State<Arc<AppState>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if let Some(token) = &st.api_token {
        let m = req.method();
        if m != axum::http::Method::GET && m != axum::http::Method::HEAD {
            let given = req
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "));
            if !given.is_some_and(|g| same_secret(g.as_bytes(), token.as_bytes())) {
                return (
                    StatusCode::UNAUTHORIZED,
                    Json(Outcome::err(
                        "missing or wrong bearer token (Authorization: Bearer ...)".into(),
                    )),
                )
                    .into_response();
            }
        }
    }
    next.run(req).await
}

/// Constant-time comparison: the time taken does not reveal where the strings differ.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn index() -> &'static str {
    "hitless: see /metrics, /healthz, /api/v1/channels\n"
}

async fn metrics(State(st): State<Arc<AppState>>) -> Response {
    for s in st.gateway.read().await.snapshots().await {
        crate::metrics::publish(&s);
    }
    if let Some(c) = st.cluster.get() {
        let status = c.status.borrow().clone();
        crate::metrics::publish_cluster(&status);
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
    channels_disabled: Vec<String>,
    channels_stopped: Vec<String>,
}

async fn healthz(State(st): State<Arc<AppState>>) -> Response {
    let gw = st.gateway.read().await;
    let names = |f: &dyn Fn(&crate::runtime::ChannelSlot) -> bool| -> Vec<String> {
        gw.channels
            .iter()
            .filter(|c| f(c))
            .map(|c| c.cfg.name.clone())
            .collect()
    };
    let stopped = names(&|c| c.handle.as_ref().is_some_and(|h| !h.is_running()));
    let disabled = names(&|c| c.handle.is_none());
    let h = Health {
        status: if stopped.is_empty() { "ok" } else { "degraded" },
        node: st.node.clone(),
        channels_running: gw.channels.len() - stopped.len() - disabled.len(),
        channels_disabled: disabled,
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
    Json(st.gateway.read().await.snapshots().await).into_response()
}

fn not_found(name: &str) -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(Outcome::err(format!("no channel named {name:?}"))),
    )
        .into_response()
}

async fn channel(State(st): State<Arc<AppState>>, Path(name): Path<String>) -> Response {
    let gw = st.gateway.read().await;
    match gw.find(&name) {
        Some(c) => Json(c.snapshot().await).into_response(),
        None => not_found(&name),
    }
}

#[derive(Serialize)]
struct Outcome {
    ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

impl Outcome {
    fn err(e: String) -> Outcome {
        Outcome {
            ok: false,
            error: Some(e),
        }
    }
}

fn outcome(r: Result<(), String>) -> Response {
    match r {
        Ok(()) => Json(Outcome {
            ok: true,
            error: None,
        })
        .into_response(),
        Err(e) => (StatusCode::CONFLICT, Json(Outcome::err(e))).into_response(),
    }
}

#[derive(Deserialize)]
struct LockBody {
    source: String,
}

async fn lock(
    State(st): State<Arc<AppState>>,
    Path(name): Path<String>,
    Json(body): Json<LockBody>,
) -> Response {
    let gw = st.gateway.read().await;
    let Some(c) = gw.find(&name) else {
        return not_found(&name);
    };
    let Some(i) = c.cfg.sources.iter().position(|s| s.name == body.source) else {
        let known: Vec<&str> = c.cfg.sources.iter().map(|s| s.name.as_str()).collect();
        return (
            StatusCode::BAD_REQUEST,
            Json(Outcome::err(format!(
                "channel {name:?} has no source {:?} (sources: {})",
                body.source,
                known.join(", ")
            ))),
        )
            .into_response();
    };
    match &c.handle {
        Some(h) => outcome(h.lock(Some(i)).await),
        None => outcome(Err(format!("channel {name:?} is disabled"))),
    }
}

async fn unlock(State(st): State<Arc<AppState>>, Path(name): Path<String>) -> Response {
    let gw = st.gateway.read().await;
    let Some(c) = gw.find(&name) else {
        return not_found(&name);
    };
    match &c.handle {
        Some(h) => outcome(h.lock(None).await),
        None => outcome(Err(format!("channel {name:?} is disabled"))),
    }
}

#[derive(Deserialize)]
struct StageBody {
    stage: String,
}

async fn stage(
    State(st): State<Arc<AppState>>,
    Path(name): Path<String>,
    Json(body): Json<StageBody>,
) -> Response {
    let Some(stage) = Stage::parse(&body.stage) else {
        return (
            StatusCode::BAD_REQUEST,
            Json(Outcome::err(format!(
                "stage {:?} is not one of \"pre-live\", \"live\", \"post-live\"",
                body.stage
            ))),
        )
            .into_response();
    };
    let gw = st.gateway.read().await;
    let Some(c) = gw.find(&name) else {
        return not_found(&name);
    };
    match &c.handle {
        Some(h) => outcome(h.set_stage(stage).await),
        None => outcome(Err(format!("channel {name:?} is disabled"))),
    }
}

async fn set_mute(st: &AppState, name: &str, muted: bool) -> Response {
    let gw = st.gateway.read().await;
    let Some(c) = gw.find(name) else {
        return not_found(name);
    };
    match &c.handle {
        Some(h) => outcome(h.mute(muted).await),
        None => outcome(Err(format!("channel {name:?} is disabled"))),
    }
}

async fn mute(State(st): State<Arc<AppState>>, Path(name): Path<String>) -> Response {
    set_mute(&st, &name, true).await
}

async fn unmute(State(st): State<Arc<AppState>>, Path(name): Path<String>) -> Response {
    set_mute(&st, &name, false).await
}

async fn enable(State(st): State<Arc<AppState>>, Path(name): Path<String>) -> Response {
    let mut gw = st.gateway.write().await;
    if gw.find(&name).is_none() {
        return not_found(&name);
    }
    // Binding sockets blocks briefly; it runs on a blocking-capable thread.
    outcome(tokio::task::block_in_place(|| gw.enable(&name)))
}

async fn disable(State(st): State<Arc<AppState>>, Path(name): Path<String>) -> Response {
    let mut gw = st.gateway.write().await;
    if gw.find(&name).is_none() {
        return not_found(&name);
    }
    outcome(gw.disable(&name).await)
}
