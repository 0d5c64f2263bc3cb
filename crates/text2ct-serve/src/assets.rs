//! The page: one HTML file, its script and style, and NiiVue (BSD-2-Clause, vendored from npm
//! `@niivue/niivue`, `dist/niivue.umd.js`; `assets/NIIVUE-LICENSE`), all embedded in the binary, so
//! the page needs no network.

use axum::http::header;
use axum::response::IntoResponse;

pub const INDEX_HTML: &str = include_str!("../assets/index.html");
pub const APP_JS: &str = include_str!("../assets/app.js");
pub const APP_CSS: &str = include_str!("../assets/app.css");
pub const NIIVUE_JS: &str = include_str!("../assets/niivue.umd.js");
pub const NIIVUE_LICENSE: &str = include_str!("../assets/NIIVUE-LICENSE");

fn asset(body: &'static str, content_type: &'static str) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, content_type), (header::CACHE_CONTROL, "no-cache")], body)
}

pub async fn index() -> impl IntoResponse {
    asset(INDEX_HTML, "text/html; charset=utf-8")
}
pub async fn app_js() -> impl IntoResponse {
    asset(APP_JS, "text/javascript; charset=utf-8")
}
pub async fn app_css() -> impl IntoResponse {
    asset(APP_CSS, "text/css; charset=utf-8")
}
pub async fn niivue_js() -> impl IntoResponse {
    asset(NIIVUE_JS, "text/javascript; charset=utf-8")
}
pub async fn niivue_license() -> impl IntoResponse {
    asset(NIIVUE_LICENSE, "text/plain; charset=utf-8")
}
