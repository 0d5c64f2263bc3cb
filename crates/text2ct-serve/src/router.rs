//! The routes: the page, and the JSON API under `/api` (token-checked when `--token` is set,
//! bodies bounded).

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;

use crate::config::MAX_BODY_BYTES;
use crate::error::ApiError;
use crate::state::SharedState;
use crate::{api_jobs, api_open, api_volumes, assets, auth};

pub fn router(st: SharedState) -> Router {
    let api = Router::new()
        .route("/info", get(api_jobs::info))
        .route("/generate", post(api_jobs::generate))
        .route("/jobs/{id}", get(api_jobs::status).delete(api_jobs::cancel))
        .route("/jobs/{id}/events", get(api_jobs::events))
        .route("/volumes", get(api_volumes::gallery))
        .route("/volumes/{file}", get(api_volumes::nifti))
        .route("/volumes/{vid}/{what}", get(api_volumes::volume_file))
        .route("/files", get(api_open::list))
        .route("/open", post(api_open::open))
        .fallback(|| async { ApiError::not_found("no such API endpoint (see docs/serve.md)") })
        .route_layer(axum::middleware::from_fn_with_state(st.clone(), auth::require_token));
    Router::new()
        .route("/", get(assets::index))
        .route("/app.js", get(assets::app_js))
        .route("/app.css", get(assets::app_css))
        .route("/niivue.umd.js", get(assets::niivue_js))
        .route("/NIIVUE-LICENSE", get(assets::niivue_license))
        .nest("/api", api)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(st)
}
