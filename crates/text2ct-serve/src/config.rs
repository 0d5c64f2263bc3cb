//! What `text2ct serve` is started with, and the checks made before anything listens.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

/// Longest prompt (and negative prompt) accepted, in bytes.
pub const MAX_PROMPT_BYTES: usize = 8192;
/// Largest request body accepted, in bytes.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// Most sampling steps one request may ask for.
pub const MAX_STEPS: usize = 1000;
/// Most volumes one request may ask for.
pub const MAX_COUNT: usize = 16;
/// Jobs remembered (finished ones beyond this are forgotten, oldest first).
pub const MAX_JOBS_KEPT: usize = 1000;
/// Most volumes the gallery lists (newest first).
pub const MAX_GALLERY: usize = 1000;
/// Most entries one folder listing of `--data-root` returns.
pub const MAX_LISTING: usize = 2000;

/// The server's settings.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    /// Model folder (`None`: the embedded default model).
    pub model: Option<PathBuf>,
    pub host: String,
    pub port: u16,
    /// Folder whose NIfTI files and DICOM folders `POST /api/open` may read (`None`: opening is off).
    pub data_root: Option<PathBuf>,
    /// Output folder: generated volumes are written here and the gallery lists them.
    pub out: PathBuf,
    /// Bearer token every `/api` call must carry (required for a non-loopback host).
    pub token: Option<String>,
    /// Jobs that may wait behind the running one; one more is refused with 429.
    pub queue: usize,
}

impl ServeConfig {
    /// Defaults of the command line: 127.0.0.1:8080, output `out/serve`, a queue of 8.
    pub fn new(out: PathBuf) -> ServeConfig {
        ServeConfig { model: None, host: "127.0.0.1".into(), port: 8080, data_root: None, out, token: None, queue: 8 }
    }

    /// The address to listen on, refusing a non-loopback one without a token and an empty token.
    pub fn socket_addr(&self) -> Result<SocketAddr, String> {
        let ip: IpAddr = match self.host.as_str() {
            "localhost" => IpAddr::from([127, 0, 0, 1]),
            h => h
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse()
                .map_err(|_| format!("--host {h:?} is not an IP address (e.g. 127.0.0.1, ::1, 0.0.0.0)"))?,
        };
        if let Some(t) = &self.token {
            if t.trim().is_empty() {
                return Err("--token is empty".into());
            }
        }
        if !ip.is_loopback() && self.token.is_none() {
            return Err(format!(
                "--host {ip} is reachable from other machines: refusing to serve it without --token \
                 (every /api call must then carry `Authorization: Bearer TOKEN`); leave --host out to \
                 listen on 127.0.0.1 only"
            ));
        }
        if self.queue == 0 {
            return Err("--queue must be at least 1".into());
        }
        Ok(SocketAddr::new(ip, self.port))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_loopback_needs_a_token() {
        let mut c = ServeConfig::new("o".into());
        assert!(c.socket_addr().unwrap().ip().is_loopback());
        c.host = "0.0.0.0".into();
        assert!(c.socket_addr().unwrap_err().contains("--token"));
        c.token = Some("  ".into());
        assert!(c.socket_addr().unwrap_err().contains("empty"));
        c.token = Some("s3cret".into());
        assert_eq!(c.socket_addr().unwrap().port(), 8080);
        c.host = "::1".into();
        c.token = None;
        assert!(c.socket_addr().is_ok());
        c.host = "example.org".into();
        assert!(c.socket_addr().unwrap_err().contains("not an IP address"));
    }
}
