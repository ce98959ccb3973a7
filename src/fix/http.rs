//! `/sessions`: every FIX session with its counts, its last Logout text and its TCP session,
//! the TCP connections the wire saw (with what they carry: FIX, TLS, no FIX found) and the FIX
//! layer's own counts. With the FIX layer off: `{"enabled": false, ...}`.

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};

use super::monitor::{FixReader, FixState};
use crate::state::StateReader;

pub fn routes(reader: FixReader, tcp: StateReader) -> Router {
    Router::new()
        .route("/sessions", get(sessions))
        .with_state((reader, tcp))
}

/// The FIX layer's state, each session with its last end as the TCP layer judged it.
async fn sessions(State((r, tcp)): State<(FixReader, StateReader)>) -> Json<FixState> {
    let mut state = (*r.get()).clone();
    let ends = tcp.get().fix_ends.clone();
    for s in &mut state.sessions {
        s.last_end = ends.get(&s.session).cloned();
    }
    Json(state)
}
