//! `/health`: the process is up, and how many subscriptions it serves.

use axum::extract::State;
use axum::response::IntoResponse;

use super::AppState;
use crate::events::EventHub;

/// `{"status": "ok", "subscriptions": <open subscriptions>}`.
pub(super) async fn health(State(state): State<AppState>) -> impl IntoResponse {
    let subscriptions = state
        .schema
        .data::<EventHub>()
        .map_or(0, EventHub::subscribers);
    axum::Json(serde_json::json!({"status": "ok", "subscriptions": subscriptions}))
}
