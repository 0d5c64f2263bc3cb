//! `POST /api/generate`, `GET /api/jobs/{id}`, `GET /api/jobs/{id}/events` (server-sent events),
//! `DELETE /api/jobs/{id}`, and `GET /api/info` (the model and the limits).

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::IntoResponse;
use axum::Json;
use futures_util::stream::{self, Stream};
use serde::Deserialize;
use text2ct_generate::{JobList, Sampler};

use crate::config::{MAX_COUNT, MAX_PROMPT_BYTES, MAX_STEPS};
use crate::error::{ApiError, JsonBody};
use crate::queue::{JobEntry, JobRequest, JobStatus};
use crate::state::SharedState;

/// The body of `POST /api/generate`; everything but `prompt` defaults to the model card's value.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenerateRequest {
    pub prompt: String,
    pub negative_prompt: Option<String>,
    /// Base seed (volume k gets seed + k); default: drawn from the clock.
    pub seed: Option<u64>,
    pub steps: Option<usize>,
    pub guidance: Option<f32>,
    /// Volumes to generate (1 to 16).
    pub count: Option<usize>,
    /// `rflow`, `ddpm` or `ddim`.
    pub sampler: Option<String>,
}

/// Check a request and turn it into a job, with the same rules as `generate`
/// (`SampleOptions::validate`, `JobList::for_prompt`) plus the server's bounds.
pub fn job_request(st: &SharedState, r: GenerateRequest) -> Result<JobRequest, ApiError> {
    let bad = |m: String| ApiError::bad_request(m);
    if r.prompt.len() > MAX_PROMPT_BYTES {
        return Err(bad(format!("prompt: longer than {MAX_PROMPT_BYTES} bytes ({})", r.prompt.len())));
    }
    if r.prompt.trim().is_empty() {
        return Err(bad("prompt: empty (give the report text to generate from)".into()));
    }
    if r.negative_prompt.as_ref().is_some_and(|n| n.len() > MAX_PROMPT_BYTES) {
        return Err(bad(format!("negative_prompt: longer than {MAX_PROMPT_BYTES} bytes")));
    }
    let mut opts = st.model.defaults.clone();
    if let Some(s) = r.steps {
        if s == 0 || s > MAX_STEPS {
            return Err(bad(format!("steps: {s} is not in 1..={MAX_STEPS}")));
        }
        opts.steps = s;
    }
    if let Some(g) = r.guidance {
        opts.guidance = g;
    }
    if let Some(s) = &r.sampler {
        opts.sampler = s.parse::<Sampler>().map_err(|e| bad(format!("sampler: {e}")))?;
    }
    opts.negative_prompt = r.negative_prompt.filter(|n| !n.trim().is_empty());
    opts.validate().map_err(|e| bad(e.to_string()))?;
    let count = r.count.unwrap_or(1);
    if count == 0 || count > MAX_COUNT {
        return Err(bad(format!("count: {count} is not in 1..={MAX_COUNT}")));
    }
    let seed = r.seed.unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos() as u64)
    });
    JobList::for_prompt(&r.prompt, count, seed).map_err(|e| bad(e.to_string()))?;
    Ok(JobRequest { prompt: r.prompt, opts, seed, count })
}

/// `POST /api/generate` → 202 `{"id": …, "status": …}`; 400 for a bad request, 429 when the queue is full.
pub async fn generate(
    State(st): State<SharedState>,
    JsonBody(r): JsonBody<GenerateRequest>,
) -> Result<impl IntoResponse, ApiError> {
    let req = job_request(&st, r)?;
    let entry = st.queue.submit(req)?;
    let status = entry.snapshot();
    Ok((StatusCode::ACCEPTED, Json(serde_json::json!({ "id": entry.id, "status": status }))))
}

fn job(st: &SharedState, id: &str) -> Result<std::sync::Arc<JobEntry>, ApiError> {
    st.queue.get(id).ok_or_else(|| {
        ApiError::not_found(format!("no job {:?} (unknown id)", id.chars().take(40).collect::<String>()))
    })
}

/// `GET /api/jobs/{id}`.
pub async fn status(State(st): State<SharedState>, Path(id): Path<String>) -> Result<Json<JobStatus>, ApiError> {
    Ok(Json(job(&st, &id)?.snapshot()))
}

/// `DELETE /api/jobs/{id}`: cancel; 409 once the job has finished.
pub async fn cancel(State(st): State<SharedState>, Path(id): Path<String>) -> Result<Json<JobStatus>, ApiError> {
    let e = job(&st, &id)?;
    Ok(Json(st.queue.cancel(&e)?))
}

/// `GET /api/jobs/{id}/events`: the job's status as JSON in one event per change (steps, phase),
/// ending after the final state.
pub async fn events(
    State(st): State<SharedState>,
    Path(id): Path<String>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let e = job(&st, &id)?;
    let rx = e.status.subscribe();
    // State: the receiver, whether the current value was sent, whether the final one was.
    let s = stream::unfold((rx, false, false), |(mut rx, mut sent_current, done)| async move {
        if done {
            return None;
        }
        if sent_current && rx.changed().await.is_err() {
            return None;
        }
        sent_current = true;
        let status = rx.borrow_and_update().clone();
        let finished = status.state.is_final();
        let ev = Event::default().event("status").json_data(&status).unwrap_or_else(|_| Event::default());
        Some((Ok(ev), (rx, sent_current, finished)))
    });
    Ok(Sse::new(s).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

/// `GET /api/info`: the model, its defaults and the request limits (for the page and scripts).
pub async fn info(State(st): State<SharedState>) -> Json<serde_json::Value> {
    let d = &st.model.defaults;
    Json(serde_json::json!({
        "model": st.model.name,
        "trained_on": st.model.trained_on,
        "defaults": {
            "steps": d.steps,
            "guidance": d.guidance,
            "sampler": d.sampler.to_string(),
            "size": d.size,
            "spacing": st.model.spacing,
        },
        "limits": { "max_prompt_bytes": MAX_PROMPT_BYTES, "max_steps": MAX_STEPS, "max_count": MAX_COUNT },
        "data_root": st.data_root.is_some(),
        "version": env!("CARGO_PKG_VERSION"),
    }))
}
