//! `text2ct serve`: the local web app (`text2ct_serve`; API in docs/serve.md).

use std::path::PathBuf;

use anyhow::{anyhow, Result};
use text2ct_serve::ServeConfig;

#[derive(clap::Args)]
pub struct ServeArgs {
    /// Model folder with a model.json card (default: $TEXT2CT_MODEL, else the embedded phantom
    /// model `phantom-default`).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Address to listen on. Anything but a loopback address (127.0.0.1, ::1) needs --token.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Folder whose CTs (NIfTI files, DICOM series folders) the page may open; nothing outside it
    /// is read. Without it, opening files is off.
    #[arg(long)]
    pub data_root: Option<PathBuf>,
    /// Output folder: generated volumes are written here (as `generate` writes them) and the
    /// gallery lists them.
    #[arg(long, default_value = "out/serve")]
    pub out: PathBuf,
    /// A token every /api call must carry (`Authorization: Bearer TOKEN`, or `?token=TOKEN`);
    /// required with a non-loopback --host. Open the page as http://HOST:PORT/?token=TOKEN.
    #[arg(long)]
    pub token: Option<String>,
    /// Jobs that may wait behind the running one; one more is answered 429.
    #[arg(long, default_value_t = 8)]
    pub queue: usize,
    #[command(flatten)]
    pub device: crate::util::DeviceArg,
}

pub fn run(a: ServeArgs) -> Result<()> {
    let device = a.device.get()?;
    let config = ServeConfig {
        model: a.model.or_else(|| std::env::var_os("TEXT2CT_MODEL").map(PathBuf::from)),
        host: a.host,
        port: a.port,
        data_root: a.data_root,
        out: a.out,
        token: a.token,
        queue: a.queue,
    };
    // Refuse a bad host/token before loading anything.
    config.socket_addr().map_err(|e| anyhow!(e))?;
    if config.model.is_none() {
        eprintln!(
            "no --model: using the embedded default `{}` (small models trained on procedural phantoms, not patients)",
            text2ct_generate::default_model::NAME
        );
    }
    text2ct_serve::serve_until_signal(config, device, |addr, st| {
        let q = match &st.config.token {
            Some(t) if !addr.ip().is_loopback() => {
                eprintln!(
                    "note: listening on a non-loopback address: every /api call needs the token; traffic is plain HTTP"
                );
                format!("?token={t}")
            }
            Some(t) => format!("?token={t}"),
            None => String::new(),
        };
        eprintln!(
            "model {} ({}); output {}{}",
            st.model.name,
            st.model.trained_on,
            st.out.display(),
            match &st.data_root {
                Some(d) => format!("; opening CTs under {}", d.display()),
                None => String::new(),
            }
        );
        println!("text2ct serve: open http://{addr}/{q}  (Ctrl-C to stop)");
    })
    .map_err(|e| anyhow!(e))
}
