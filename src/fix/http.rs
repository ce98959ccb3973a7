//! `/sessions`: every FIX session with its counts, its last Logout text and its TCP session,
//! the TCP connections the wire saw (with what they carry: FIX, TLS, no FIX found) and the FIX
//! layer's own counts. With the FIX layer off: `{"enabled": false, ...}`.

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};

use super::monitor::{FixReader, FixState};

pub fn routes(reader: FixReader) -> Router {
    Router::new()
        .route("/sessions", get(sessions))
        .with_state(reader)
}

async fn sessions(State(r): State<FixReader>) -> Json<FixState> {
    Json((*r.get()).clone())
}
