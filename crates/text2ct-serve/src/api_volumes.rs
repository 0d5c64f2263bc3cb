//! The volumes: `GET /api/volumes` (the gallery of the output folder), and each volume's files —
//! `GET /api/volumes/{vid}.nii.gz`, `/api/volumes/{vid}/preview.png`, `/sidecar.json`, `/dicom.zip`
//! (the DICOM series written on request from the NIfTI, `text2ct_generate::output::write_dicom`),
//! `/render.png?mode=mip|dvr&angles=N` (a 3D rendering, `text2ct_io::render`, as `text2ct render`).
//! Files are streamed in fixed-size chunks, so memory stays bounded however many clients download.

use std::io::Write;
use std::path::{Path, PathBuf};

use axum::body::Body;
use axum::extract::{Path as UrlPath, Query, RawQuery, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use text2ct_generate::output::{self, Sidecar};

use crate::config::MAX_GALLERY;
use crate::error::ApiError;
use crate::paths::{check_volume_id, file_in};
use crate::state::{SharedState, OPENED_PREFIX};

/// One gallery entry.
#[derive(Debug, Serialize)]
pub struct VolumeEntry {
    pub id: String,
    pub prompt: String,
    pub negative_prompt: Option<String>,
    pub seed: u64,
    pub steps: usize,
    pub guidance: f32,
    pub sampler: String,
    pub model: String,
    pub size: [usize; 3],
    /// Seconds since the Unix epoch when the sidecar was written.
    pub created: u64,
}

fn mtime_s(p: &Path) -> u64 {
    std::fs::metadata(p)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs())
}

/// The generated volumes of `out`: each `{vid}.json` that parses as a sidecar beside its
/// `{vid}.nii.gz`, newest first, at most [`MAX_GALLERY`]. Symlinks that lead out are skipped.
pub fn list_volumes(out: &Path) -> Result<Vec<VolumeEntry>, ApiError> {
    let rd = std::fs::read_dir(out).map_err(|e| ApiError::internal(format!("listing the output folder: {e}")))?;
    let mut v = Vec::new();
    for ent in rd.flatten() {
        let name = ent.file_name().to_string_lossy().into_owned();
        let Some(vid) = name.strip_suffix(".json") else { continue };
        if check_volume_id(vid).is_err() || file_in(out, &format!("{vid}.nii.gz")).is_err() {
            continue;
        }
        let Ok(json) = file_in(out, &name) else { continue };
        // Sidecars are small; anything large is not one.
        if std::fs::metadata(&json).map_or(true, |m| m.len() > 1 << 20) {
            continue;
        }
        let Ok(sc) =
            std::fs::read(&json).map_err(|_| ()).and_then(|b| serde_json::from_slice::<Sidecar>(&b).map_err(|_| ()))
        else {
            continue;
        };
        v.push(VolumeEntry {
            id: vid.to_string(),
            prompt: sc.prompt,
            negative_prompt: sc.negative_prompt,
            seed: sc.seed,
            steps: sc.steps,
            guidance: sc.guidance,
            sampler: sc.sampler.to_string(),
            model: sc.model,
            size: sc.size,
            created: mtime_s(&json),
        });
    }
    v.sort_by(|a, b| b.created.cmp(&a.created).then_with(|| b.id.cmp(&a.id)));
    v.truncate(MAX_GALLERY);
    Ok(v)
}

/// `GET /api/volumes`.
pub async fn gallery(State(st): State<SharedState>) -> Result<Json<Vec<VolumeEntry>>, ApiError> {
    let out = st.out.clone();
    let v = tokio::task::spawn_blocking(move || list_volumes(&out))
        .await
        .map_err(|e| ApiError::internal(format!("listing the volumes: {e}")))??;
    Ok(Json(v))
}

/// The folder holding a volume's files: the cache for opened volumes, else the output folder.
fn volume_dir(st: &SharedState, vid: &str) -> Result<PathBuf, ApiError> {
    check_volume_id(vid)?;
    Ok(if vid.starts_with(OPENED_PREFIX) { st.cache.join("opened") } else { st.out.clone() })
}

/// A file streamed in 64 KiB chunks.
async fn stream_file(path: &Path, content_type: &str, download_name: Option<&str>) -> Result<Response, ApiError> {
    let f = tokio::fs::File::open(path).await.map_err(|_| ApiError::not_found("the file is gone"))?;
    let len = f.metadata().await.map_err(|e| ApiError::internal(e.to_string()))?.len();
    let body = Body::from_stream(tokio_util::io::ReaderStream::with_capacity(f, 64 * 1024));
    let mut r = ([(header::CONTENT_TYPE, content_type.to_string()), (header::CONTENT_LENGTH, len.to_string())], body)
        .into_response();
    r.headers_mut().insert(header::CACHE_CONTROL, header::HeaderValue::from_static("no-cache"));
    if let Some(n) = download_name {
        if let Ok(v) = header::HeaderValue::from_str(&format!("attachment; filename=\"{n}\"")) {
            r.headers_mut().insert(header::CONTENT_DISPOSITION, v);
        }
    }
    Ok(r)
}

/// `GET /api/volumes/{vid}.nii.gz`.
pub async fn nifti(State(st): State<SharedState>, UrlPath(file): UrlPath<String>) -> Result<Response, ApiError> {
    let Some(vid) = file.strip_suffix(".nii.gz") else {
        return Err(ApiError::not_found(format!(
            "{:?}: ask for {{id}}.nii.gz, or {{id}}/preview.png, /sidecar.json, /dicom.zip",
            file.chars().take(80).collect::<String>()
        )));
    };
    let dir = volume_dir(&st, vid)?;
    let p = file_in(&dir, &file)?;
    stream_file(&p, "application/octet-stream", None).await
}

/// `GET /api/volumes/{vid}/{file}`: `preview.png`, `sidecar.json`, `dicom.zip` (and
/// `volume.nii.gz`, the same as `{vid}.nii.gz`).
pub async fn volume_file(
    State(st): State<SharedState>,
    UrlPath((vid, what)): UrlPath<(String, String)>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let dir = volume_dir(&st, &vid)?;
    match what.as_str() {
        "volume.nii.gz" => {
            stream_file(&file_in(&dir, &format!("{vid}.nii.gz"))?, "application/octet-stream", None).await
        }
        "preview.png" => stream_file(&file_in(&dir, &format!("{vid}.png"))?, "image/png", None).await,
        "sidecar.json" => stream_file(&file_in(&dir, &format!("{vid}.json"))?, "application/json", None).await,
        "dicom.zip" => {
            if vid.starts_with(OPENED_PREFIX) {
                return Err(ApiError::not_found("dicom.zip is offered for generated volumes, not opened ones"));
            }
            let zip = dicom_zip(&st, &vid).await?;
            stream_file(&zip, "application/zip", Some(&format!("{vid}_dicom.zip"))).await
        }
        "render.png" => {
            let q = render_query(query.as_deref())?;
            let png = render_png(&st, &dir, &vid, q).await?;
            stream_file(&png, "image/png", None).await
        }
        other => Err(ApiError::not_found(format!(
            "{:?}: a volume has preview.png, sidecar.json, dicom.zip, render.png and volume.nii.gz",
            other.chars().take(80).collect::<String>()
        ))),
    }
}

/// The zip of a generated volume's DICOM series, made once into the cache (one at a time).
async fn dicom_zip(st: &SharedState, vid: &str) -> Result<PathBuf, ApiError> {
    let nii = file_in(&st.out, &format!("{vid}.nii.gz"))?;
    let json = file_in(&st.out, &format!("{vid}.json"))?;
    let zip = st.cache.join(format!("{vid}.dicom.zip"));
    let fresh = |z: &Path| {
        let m = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
        matches!((m(z), m(&nii)), (Some(a), Some(b)) if a >= b)
    };
    if fresh(&zip) {
        return Ok(zip);
    }
    let _one = st.heavy.lock().await;
    if fresh(&zip) {
        return Ok(zip);
    }
    let (out, cache, vid2, zip2) = (st.out.clone(), st.cache.clone(), vid.to_string(), zip.clone());
    tokio::task::spawn_blocking(move || build_dicom_zip(&out, &cache, &vid2, &json, &zip2))
        .await
        .map_err(|e| ApiError::internal(format!("writing the DICOM series: {e}")))??;
    Ok(zip)
}

fn build_dicom_zip(out: &Path, cache: &Path, vid: &str, json: &Path, zip: &Path) -> Result<(), ApiError> {
    let err = |what: &str, e: &dyn std::fmt::Display| ApiError::internal(format!("{vid}: {what}: {e}"));
    let sc: Sidecar = std::fs::read(json)
        .map_err(|e| err("reading the sidecar", &e))
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| err("parsing the sidecar", &e)))?;
    let series = cache.join(format!("{vid}.dicom-tmp"));
    output::write_dicom(out, vid, &sc, &series).map_err(|e| err("writing the DICOM series", &e))?;
    let result = (|| -> Result<(), ApiError> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(&series)
            .map_err(|e| err("listing the series", &e))?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.is_file())
            .collect();
        files.sort();
        let tmp = zip.with_extension("zip.tmp");
        let f = std::fs::File::create(&tmp).map_err(|e| err("creating the zip", &e))?;
        let mut w = zip::ZipWriter::new(std::io::BufWriter::new(f));
        let opts = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
        for p in &files {
            let name = format!("{vid}_dicom/{}", p.file_name().unwrap_or_default().to_string_lossy());
            w.start_file(name, opts).map_err(|e| err("writing the zip", &e))?;
            let bytes = std::fs::read(p).map_err(|e| err("reading a slice", &e))?;
            w.write_all(&bytes).map_err(|e| err("writing the zip", &e))?;
        }
        w.finish().map_err(|e| err("writing the zip", &e))?.flush().map_err(|e| err("writing the zip", &e))?;
        std::fs::rename(&tmp, zip).map_err(|e| err("renaming the zip", &e))
    })();
    let _ = std::fs::remove_dir_all(&series);
    result
}

/// The query of `render.png`: `mode` (`mip`, the default, or `dvr`) and `angles` (views, 1 to 8).
#[derive(Clone, Copy, Debug)]
pub struct RenderQuery {
    pub mode: text2ct_io::render::RenderMode,
    pub angles: usize,
}

/// Most views one `render.png` may ask for.
pub const MAX_RENDER_ANGLES: usize = 8;

fn render_query(q: Option<&str>) -> Result<RenderQuery, ApiError> {
    #[derive(serde::Deserialize)]
    struct Q {
        mode: Option<String>,
        angles: Option<usize>,
        #[allow(dead_code)]
        token: Option<String>,
    }
    let uri: axum::http::Uri =
        format!("/?{}", q.unwrap_or("")).parse().map_err(|_| ApiError::bad_request("render.png: bad query"))?;
    let Query(q) = Query::<Q>::try_from_uri(&uri).map_err(|e| ApiError::bad_request(format!("render.png: {e}")))?;
    let mode = q.mode.as_deref().unwrap_or("mip").parse().map_err(|e| ApiError::bad_request(format!("mode: {e}")))?;
    let angles = q.angles.unwrap_or(1);
    if angles == 0 || angles > MAX_RENDER_ANGLES {
        return Err(ApiError::bad_request(format!("angles: {angles} is not in 1..={MAX_RENDER_ANGLES}")));
    }
    Ok(RenderQuery { mode, angles })
}

/// A rendering of a volume, made once into the cache (one heavy job at a time).
async fn render_png(st: &SharedState, dir: &Path, vid: &str, q: RenderQuery) -> Result<PathBuf, ApiError> {
    use text2ct_io::render::{render, turntable, RenderMode, RenderOptions};
    let nii = file_in(dir, &format!("{vid}.nii.gz"))?;
    let mode = match q.mode {
        RenderMode::Mip => "mip",
        RenderMode::Dvr => "dvr",
    };
    let png = st.cache.join(format!("{vid}.{mode}{}.png", q.angles));
    let fresh = |p: &Path| {
        let m = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
        matches!((m(p), m(&nii)), (Some(a), Some(b)) if a >= b)
    };
    if fresh(&png) {
        return Ok(png);
    }
    let _one = st.heavy.lock().await;
    if fresh(&png) {
        return Ok(png);
    }
    let (png2, vid2) = (png.clone(), vid.to_string());
    tokio::task::spawn_blocking(move || {
        let err = |e: &dyn std::fmt::Display| ApiError::internal(format!("{vid2}: rendering: {e}"));
        let (vol, _) = text2ct_io::nifti_io::read_nifti(&nii, &text2ct_io::Limits::default()).map_err(|e| err(&e))?;
        let opts = RenderOptions { mode: q.mode, size_px: 256, ..Default::default() };
        let img =
            if q.angles == 1 { render(&vol, &opts) } else { turntable(&vol, &opts, q.angles) }.map_err(|e| err(&e))?;
        text2ct_io::preview::save_png_rgb(&img, &png2).map_err(|e| err(&e))
    })
    .await
    .map_err(|e| ApiError::internal(format!("rendering: {e}")))??;
    Ok(png)
}
