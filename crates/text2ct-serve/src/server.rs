//! Starting and stopping: check the settings, load the model, bind, serve until the shutdown
//! signal, then cancel the jobs and wait for the generation thread (writes are atomic, so a
//! cancelled volume leaves no file behind).

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use text2ct_models::burn::prelude::Device;

use crate::config::ServeConfig;
use crate::queue::Queue;
use crate::router::router;
use crate::state::{AppState, SharedState};

/// A bound server with its model loaded, not yet serving.
pub struct Server {
    state: SharedState,
    listener: tokio::net::TcpListener,
}

fn canonical_dir(p: &std::path::Path, option: &str) -> Result<PathBuf, String> {
    let c = p.canonicalize().map_err(|e| format!("{option} {}: {e}", p.display()))?;
    if !c.is_dir() {
        return Err(format!("{option} {}: not a folder", p.display()));
    }
    Ok(c)
}

/// Check the settings (a non-loopback host needs a token), prepare the output folder, load the
/// model (the embedded default without `--model`) and bind the address.
pub async fn bind(config: ServeConfig, device: Device) -> Result<Server, String> {
    let addr = config.socket_addr()?;
    let data_root = match &config.data_root {
        Some(d) => Some(canonical_dir(d, "--data-root")?),
        None => None,
    };
    text2ct_io::error::check_output_dir(&config.out).map_err(|e| format!("--out: {e}"))?;
    std::fs::create_dir_all(&config.out).map_err(|e| format!("--out {}: {e}", config.out.display()))?;
    let out = canonical_dir(&config.out, "--out")?;
    let cache = out.join(".serve-cache");
    std::fs::create_dir_all(cache.join("opened")).map_err(|e| format!("creating {}: {e}", cache.display()))?;
    let model = match &config.model {
        Some(m) => m.clone(),
        None => text2ct_generate::default_model::materialize().map_err(|e| format!("the embedded model: {e}"))?,
    };
    let (capacity, out2) = (config.queue, out.clone());
    let (queue, model) = tokio::task::spawn_blocking(move || Queue::start(&model, device, out2, capacity))
        .await
        .map_err(|e| format!("loading the model: {e}"))??;
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            let q = queue.clone();
            let _ = tokio::task::spawn_blocking(move || q.shutdown()).await;
            return Err(format!("listening on {addr}: {e}"));
        }
    };
    let state = Arc::new(AppState { config, out, cache, data_root, queue, model, heavy: tokio::sync::Mutex::new(()) });
    Ok(Server { state, listener })
}

impl Server {
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    pub fn state(&self) -> &SharedState {
        &self.state
    }

    /// Serve until `shutdown` completes; then cancel every job (the running one stops at its next
    /// sampling step), let open connections finish and wait for the generation thread.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), String> {
        let queue = self.state.queue.clone();
        let q2 = queue.clone();
        let app = router(self.state.clone());
        let served = axum::serve(self.listener, app)
            .with_graceful_shutdown(async move {
                shutdown.await;
                q2.cancel_all();
            })
            .await;
        let _ = tokio::task::spawn_blocking(move || queue.shutdown()).await;
        served.map_err(|e| format!("serving: {e}"))
    }
}

/// A server on its own thread and runtime (for tests and embedding): stop it with
/// [`BackgroundServer::stop`].
pub struct BackgroundServer {
    pub addr: SocketAddr,
    pub state: SharedState,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<Result<(), String>>>,
}

impl BackgroundServer {
    pub fn start(config: ServeConfig, device: Device) -> Result<BackgroundServer, String> {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            rt.block_on(async move {
                let server = match bind(config, device).await {
                    Ok(s) => s,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.clone()));
                        return Err(e);
                    }
                };
                let _ = ready_tx.send(Ok((server.local_addr(), server.state().clone())));
                server
                    .run(async move {
                        let _ = stop_rx.await;
                    })
                    .await
            })
        });
        match ready_rx.recv() {
            Ok(Ok((addr, state))) => Ok(BackgroundServer { addr, state, stop: Some(stop_tx), thread: Some(thread) }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e)
            }
            Err(_) => Err(match thread.join() {
                Ok(Err(e)) => e,
                _ => "the server thread ended".into(),
            }),
        }
    }

    /// Shut down as Ctrl-C does and wait for it.
    pub fn stop(mut self) -> Result<(), String> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<(), String> {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        match self.thread.take() {
            Some(t) => t.join().map_err(|_| "the server thread panicked".to_string())?,
            None => Ok(()),
        }
    }
}

impl Drop for BackgroundServer {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}

/// `text2ct serve`: start, call `on_ready` with the address and state, serve until Ctrl-C (or
/// SIGTERM), then shut down cleanly. Blocks the calling thread.
pub fn serve_until_signal(
    config: ServeConfig,
    device: Device,
    on_ready: impl FnOnce(SocketAddr, &AppState),
) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("starting the runtime: {e}"))?;
    rt.block_on(async move {
        let server = bind(config, device).await?;
        on_ready(server.local_addr(), server.state());
        server.run(shutdown_signal()).await
    })
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let term = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
    eprintln!("shutting down: cancelling the jobs, finishing open requests …");
}
