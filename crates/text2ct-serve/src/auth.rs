//! The token check of every `/api` call when the server was started with `--token`:
//! `Authorization: Bearer TOKEN`, or `?token=TOKEN` (for links and `EventSource`, which cannot set
//! headers).

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;
use crate::state::SharedState;

/// Equal strings, compared in time that does not depend on where they differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The token of a request: the bearer header, else the `token` query parameter (percent-decoded).
fn token_of(req: &Request) -> Option<String> {
    if let Some(h) = req.headers().get(axum::http::header::AUTHORIZATION) {
        return h.to_str().ok().and_then(|v| v.strip_prefix("Bearer ")).map(|t| t.trim().to_string());
    }
    let q = req.uri().query()?;
    serde_urlencoded_token(q)
}

fn serde_urlencoded_token(q: &str) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct T {
        token: Option<String>,
    }
    axum::extract::Query::<T>::try_from_uri(&format!("/?{q}").parse().ok()?).ok()?.0.token
}

/// Middleware: 401 unless the request carries the server's token (no check without `--token`).
pub async fn require_token(State(st): State<SharedState>, req: Request, next: Next) -> Response {
    if let Some(want) = &st.config.token {
        match token_of(&req) {
            Some(t) if same(t.as_bytes(), want.as_bytes()) => {}
            Some(_) => return ApiError::new(StatusCode::UNAUTHORIZED, "wrong token").into_response(),
            None => {
                return ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "this server needs a token: send `Authorization: Bearer TOKEN` (or ?token=TOKEN)",
                )
                .into_response()
            }
        }
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    #[test]
    fn compares_tokens() {
        assert!(super::same(b"abc", b"abc"));
        assert!(!super::same(b"abc", b"abd"));
        assert!(!super::same(b"abc", b"abcd"));
        assert_eq!(super::serde_urlencoded_token("a=1&token=x%20y").as_deref(), Some("x y"));
        assert_eq!(super::serde_urlencoded_token("a=1"), None);
    }
}
