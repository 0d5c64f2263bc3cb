//! `text2ct serve`: a local web app to generate, view and compare CT volumes.
//!
//! One process: an axum server on a tokio runtime answers the JSON API ([`router`]) and serves the
//! page ([`assets`], NiiVue vendored and embedded); generation runs on one dedicated thread that owns
//! the loaded pipeline ([`queue`]), so the runtime never blocks and only one volume is generated at
//! a time. Every file the server reads lies under the output folder or `--data-root`, checked after
//! resolving symlinks ([`paths`]). The API is documented in `docs/serve.md`.

pub mod api_jobs;
pub mod api_open;
pub mod api_volumes;
pub mod assets;
pub mod auth;
pub mod config;
pub mod error;
pub mod paths;
pub mod queue;
pub mod router;
pub mod server;
pub mod state;

pub use config::ServeConfig;
pub use error::ApiError;
pub use server::{bind, serve_until_signal, BackgroundServer, Server};
