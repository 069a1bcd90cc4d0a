//! Cluster API (`/api/v1/cluster...`), served with the rest of `http.rs`.
//!
//! | method | path | what |
//! | --- | --- | --- |
//! | GET | `/api/v1/cluster` | members, roles, scores, epoch, config version, placement, alarms |
//! | POST | `/api/v1/cluster/score` | `{"score": N}`: this node's election score (0 = never manager) |
//! | POST | `/api/v1/cluster/force` | claim the manager role without waiting for peers |
//! | POST | `/api/v1/cluster/take-control` | become manager now (new epoch), deposing the current one |
//! | POST | `/api/v1/cluster/trigger-backup` | manager: `{"node": "gw-b"}` moves its channels to their backups |
//! | POST | `/api/v1/cluster/take-back` | manager: `{"node": "gw-b"}` returns its channels to it |
//! | PUT | `/api/v1/cluster/channels/{name}` | manager: `{"toml": "[[channel]]...", "home", "backup", "hot_standby", "force"}` |
//! | DELETE | `/api/v1/cluster/channels/{name}?force=true` | manager: remove a channel |
//! | POST | `/api/v1/cluster/keep-local` | resolve a divergence by keeping this node's copy |

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use serde::Deserialize;
use tokio::sync::oneshot;

use super::machine::ControlError;
use super::show::{ShowChange, ShowChannel};
use super::transport::{ClusterHandle, Request};
use crate::http::AppState;

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/api/v1/cluster", get(status))
        .route("/api/v1/cluster/score", post(score))
        .route("/api/v1/cluster/force", post(force))
        .route("/api/v1/cluster/take-control", post(take_control))
        .route("/api/v1/cluster/trigger-backup", post(trigger_backup))
        .route("/api/v1/cluster/take-back", post(take_back))
        .route("/api/v1/cluster/keep-local", post(keep_local))
        .route(
            "/api/v1/cluster/channels/{name}",
            put(put_channel).delete(delete_channel),
        )
}

fn error(code: StatusCode, e: String) -> Response {
    (code, Json(serde_json::json!({"ok": false, "error": e}))).into_response()
}

fn handle(st: &AppState) -> Result<&ClusterHandle, Box<Response>> {
    st.cluster.get().ok_or_else(|| {
        Box::new(error(
            StatusCode::NOT_FOUND,
            "this node runs standalone (no [cluster] in its configuration)".into(),
        ))
    })
}

fn control_error(e: ControlError) -> Response {
    let code = match &e {
        ControlError::UnknownNode(_) => StatusCode::NOT_FOUND,
        ControlError::Show(_) => StatusCode::BAD_REQUEST,
        _ => StatusCode::CONFLICT,
    };
    error(code, e.to_string())
}

/// Send a request to the control task and wait for its answer.
async fn call<T: serde::Serialize>(
    st: &AppState,
    make: impl FnOnce(oneshot::Sender<Result<T, ControlError>>) -> Request,
) -> Response {
    let h = match handle(st) {
        Ok(h) => h,
        Err(r) => return *r,
    };
    let (tx, rx) = oneshot::channel();
    if h.tx.send(make(tx)).await.is_err() {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "control task stopped".into(),
        );
    }
    match tokio::time::timeout(crate::runtime::COMMAND_TIMEOUT, rx).await {
        Ok(Ok(Ok(v))) => Json(serde_json::json!({"ok": true, "result": v})).into_response(),
        Ok(Ok(Err(e))) => control_error(e),
        _ => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "control task did not answer".into(),
        ),
    }
}

async fn status(State(st): State<Arc<AppState>>) -> Response {
    match handle(&st) {
        Ok(h) => Json(h.status.borrow().clone()).into_response(),
        Err(r) => *r,
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ScoreBody {
    score: u8,
}

async fn score(State(st): State<Arc<AppState>>, Json(b): Json<ScoreBody>) -> Response {
    call(&st, |tx| Request::Score(b.score, tx)).await
}

async fn force(State(st): State<Arc<AppState>>) -> Response {
    call(&st, Request::Force).await
}

async fn take_control(State(st): State<Arc<AppState>>) -> Response {
    call(&st, Request::TakeControl).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NodeBody {
    node: String,
}

async fn trigger_backup(State(st): State<Arc<AppState>>, Json(b): Json<NodeBody>) -> Response {
    call(&st, |tx| Request::TriggerBackup(b.node, tx)).await
}

async fn take_back(State(st): State<Arc<AppState>>, Json(b): Json<NodeBody>) -> Response {
    call(&st, |tx| Request::TakeBack(b.node, tx)).await
}

async fn keep_local(State(st): State<Arc<AppState>>) -> Response {
    call(&st, Request::KeepLocal).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ChannelBody {
    /// The `[[channel]]` table (with its sources and outputs) as TOML text.
    toml: String,
    home: String,
    #[serde(default)]
    backup: Option<String>,
    #[serde(default)]
    hot_standby: bool,
    /// Change even while peers are unreachable (flagged unreplicated).
    #[serde(default)]
    force: bool,
}

async fn put_channel(
    State(st): State<Arc<AppState>>,
    Path(name): Path<String>,
    Json(b): Json<ChannelBody>,
) -> Response {
    let bodies = crate::config::cluster::channel_bodies(&b.toml);
    let body = match bodies.as_slice() {
        [(n, body)] if *n == name => body.clone(),
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("toml must hold exactly one [[channel]] with name = {name:?}"),
            );
        }
    };
    let change = ShowChange::Put {
        name,
        channel: ShowChannel {
            body,
            home: b.home,
            backup: b.backup,
            hot_standby: b.hot_standby,
        },
    };
    call(&st, |tx| Request::Change(change, b.force, tx)).await
}

#[derive(Deserialize)]
struct ForceQuery {
    #[serde(default)]
    force: bool,
}

async fn delete_channel(
    State(st): State<Arc<AppState>>,
    Path(name): Path<String>,
    Query(q): Query<ForceQuery>,
) -> Response {
    call(&st, |tx| {
        Request::Change(ShowChange::Remove { name }, q.force, tx)
    })
    .await
}
