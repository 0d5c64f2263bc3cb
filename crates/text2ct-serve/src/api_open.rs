//! Opening a CT the user already has, under `--data-root` only: `GET /api/files?dir=…` lists a
//! folder (sub-folders and NIfTI files), `POST /api/open {"path": …}` reads a NIfTI file or a DICOM
//! series folder with the readers `inspect` uses, keeps a NIfTI copy and a preview in the cache and
//! answers the volume id the viewer loads.

use std::path::Path;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use text2ct_io::dicom_io::read_dicom_series;
use text2ct_io::nifti_io::{read_nifti, write_nifti, DType, WriteOptions};
use text2ct_io::{Limits, Volume};

use crate::config::MAX_LISTING;
use crate::error::{ApiError, JsonBody};
use crate::paths::resolve_under;
use crate::state::{SharedState, OPENED_PREFIX};

fn data_root(st: &SharedState) -> Result<&Path, ApiError> {
    st.data_root.as_deref().ok_or_else(|| {
        ApiError::forbidden("opening files is off: start `text2ct serve` with --data-root DIR to open CTs under DIR")
    })
}

fn is_nifti(name: &str) -> bool {
    name.ends_with(".nii") || name.ends_with(".nii.gz")
}

#[derive(Deserialize)]
pub struct ListQuery {
    #[serde(default)]
    pub dir: String,
}

#[derive(Serialize)]
pub struct ListEntry {
    pub name: String,
    /// `dir` or `nifti`.
    pub kind: &'static str,
}

/// `GET /api/files?dir=REL`: the sub-folders and NIfTI files of a folder under `--data-root`
/// (hidden entries and symlinks that lead out are left out), sorted, at most [`MAX_LISTING`].
pub async fn list(
    State(st): State<SharedState>,
    Query(q): Query<ListQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let root = data_root(&st)?.to_path_buf();
    let dir = if q.dir.is_empty() { root.clone() } else { resolve_under(&root, &q.dir, "dir")? };
    if !dir.is_dir() {
        return Err(ApiError::bad_request(format!("dir: {:?} is not a folder", q.dir)));
    }
    let entries = tokio::task::spawn_blocking(move || {
        let mut v = Vec::new();
        for e in std::fs::read_dir(&dir).map_err(|e| ApiError::internal(format!("listing the folder: {e}")))?.flatten()
        {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            let Ok(canon) = e.path().canonicalize() else { continue };
            if !canon.starts_with(&root) {
                continue;
            }
            let kind = if canon.is_dir() {
                "dir"
            } else if is_nifti(&name) {
                "nifti"
            } else {
                continue;
            };
            v.push(ListEntry { name, kind });
            if v.len() >= MAX_LISTING {
                break;
            }
        }
        v.sort_by(|a, b| a.name.cmp(&b.name));
        Ok::<_, ApiError>(v)
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))??;
    Ok(Json(serde_json::json!({ "dir": q.dir, "entries": entries })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpenRequest {
    /// A NIfTI file or a DICOM series folder, relative to `--data-root`.
    pub path: String,
    /// SeriesInstanceUID when the folder holds several series.
    pub series: Option<String>,
}

/// `POST /api/open`: → `{"id": "open-…", …}` (then `/api/volumes/{id}.nii.gz` etc.).
pub async fn open(
    State(st): State<SharedState>,
    JsonBody(r): JsonBody<OpenRequest>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let root = data_root(&st)?.to_path_buf();
    if r.path.trim().is_empty() {
        return Err(ApiError::bad_request("path: empty (a NIfTI file or DICOM folder under --data-root)"));
    }
    let path = resolve_under(&root, &r.path, "path")?;
    let is_dir = path.is_dir();
    if !is_dir && !is_nifti(&r.path) {
        return Err(ApiError::bad_request(format!(
            "path: {:?} is neither a NIfTI file (.nii, .nii.gz) nor a DICOM series folder",
            r.path
        )));
    }
    let stamp = std::fs::metadata(&path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    let key = format!("{}\n{stamp}\n{:?}", path.display(), r.series);
    let vid = format!("{OPENED_PREFIX}{}", &text2ct_generate::output::sha256_bytes(key.as_bytes())[..16]);
    let dir = st.cache.join("opened");
    let info_path = dir.join(format!("{vid}.json"));
    if !info_path.is_file() {
        let _one = st.heavy.lock().await;
        if !info_path.is_file() {
            let (rel, vid2, dir2) = (r.path.clone(), vid.clone(), dir.clone());
            tokio::task::spawn_blocking(move || convert(&path, is_dir, r.series.as_deref(), &rel, &vid2, &dir2))
                .await
                .map_err(|e| ApiError::internal(e.to_string()))??;
        }
    }
    let info: serde_json::Value = std::fs::read(&info_path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or_else(|| ApiError::internal("reading the opened volume's description"))?;
    Ok(Json(serde_json::json!({ "id": vid, "info": info })))
}

/// Read the volume as `inspect` does and write its NIfTI copy, preview and description.
fn convert(path: &Path, is_dir: bool, series: Option<&str>, rel: &str, vid: &str, dir: &Path) -> Result<(), ApiError> {
    let unreadable = |e: &dyn std::fmt::Display| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, format!("{rel}: {e}"));
    let (vol, header, kind): (Volume, serde_json::Value, &str) = if is_dir {
        let (v, i) = read_dicom_series(path, series, &Limits::default()).map_err(|e| unreadable(&e))?;
        (v, serde_json::to_value(&i).unwrap_or_default(), "dicom")
    } else {
        let (v, i) = read_nifti(path, &Limits::default()).map_err(|e| unreadable(&e))?;
        (v, serde_json::to_value(&i).unwrap_or_default(), "nifti")
    };
    vol.check_finite().map_err(|e| unreadable(&e))?;
    std::fs::create_dir_all(dir).map_err(|e| ApiError::internal(format!("creating the cache: {e}")))?;
    // Integral values within int16 (CT in HU) stay int16; anything else is kept as float32.
    let integral = vol.data().iter().all(|&x| x.is_finite() && x.fract() == 0.0 && (-32768.0..=32767.0).contains(&x));
    let mut wo =
        WriteOptions::ct_hu().with_descrip(format!("text2ct serve: {}", rel.chars().take(50).collect::<String>()));
    if !integral {
        wo.dtype = DType::F32;
    }
    let internal = |e: &dyn std::fmt::Display| ApiError::internal(format!("{rel}: {e}"));
    write_nifti(&dir.join(format!("{vid}.nii.gz")), &vol, &wo).map_err(|e| internal(&e))?;
    text2ct_generate::output::write_preview(&vol, &dir.join(format!("{vid}.png"))).map_err(|e| internal(&e))?;
    let d = vol.dims();
    let info = serde_json::json!({
        "id": vid,
        "source": rel,
        "kind": kind,
        "dims": d,
        "spacing_mm": vol.spacing(),
        "orientation": vol.orientation(),
        "header": header,
    });
    let bytes = serde_json::to_vec_pretty(&info).map_err(|e| internal(&e))?;
    text2ct_io::error::atomic_write_bytes(&dir.join(format!("{vid}.json")), &bytes).map_err(|e| internal(&e))?;
    Ok(())
}
