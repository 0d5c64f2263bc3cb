//! The job queue: a bounded channel in front of one dedicated generation thread that owns the
//! loaded [`Pipeline`]. One volume is generated at a time; a full queue refuses new jobs (429);
//! each job's status is a `watch` channel the API and the server-sent events read; cancelling sets
//! the job's [`CancelFlag`], which the sampler checks between steps.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use serde::Serialize;
use text2ct_generate::pipeline::{CancelFlag, Pipeline, SampleOptions};
use text2ct_generate::{GenerateError, JobList};
use text2ct_models::burn::prelude::Device;
use tokio::sync::watch;

use crate::config::MAX_JOBS_KEPT;
use crate::error::ApiError;

/// Where a job is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    Queued,
    Running,
    Done,
    Failed,
    Cancelled,
}

impl JobState {
    pub fn is_final(self) -> bool {
        matches!(self, JobState::Done | JobState::Failed | JobState::Cancelled)
    }
}

/// What `GET /api/jobs/{id}` and each server-sent event carry.
#[derive(Clone, Debug, Serialize)]
pub struct JobStatus {
    pub id: String,
    pub state: JobState,
    /// `queued`, `sampling`, `decoding` (VAE decode and the writes), `cancelling`, or the final state.
    pub phase: String,
    /// The volume being generated (0-based) and how many the job makes.
    pub volume: usize,
    pub count: usize,
    /// Sampling step done and the steps of the volume being generated.
    pub step: usize,
    pub steps: usize,
    /// Ids of the volumes written so far (all of them when done).
    pub volumes: Vec<String>,
    pub error: Option<String>,
    pub prompt: String,
    pub seed: u64,
}

/// A job as submitted: the prompt, the options (already validated), the volumes to make.
pub struct JobRequest {
    pub prompt: String,
    pub opts: SampleOptions,
    pub seed: u64,
    pub count: usize,
}

/// A job in the queue, running, or finished.
pub struct JobEntry {
    pub id: String,
    /// The volumes' file stem before `_seed{S}`: `web{start time}-{id}`.
    pub stem: String,
    pub request: JobRequest,
    pub cancel: CancelFlag,
    pub status: watch::Sender<JobStatus>,
}

impl JobEntry {
    fn update(&self, f: impl FnOnce(&mut JobStatus)) {
        self.status.send_modify(f);
    }
    pub fn snapshot(&self) -> JobStatus {
        self.status.borrow().clone()
    }
}

enum Work {
    Job(Arc<JobEntry>),
    Stop,
}

#[derive(Default)]
struct Jobs {
    map: HashMap<String, Arc<JobEntry>>,
    order: VecDeque<String>,
}

/// What the loaded model offers, for the API and the page.
#[derive(Clone, Debug)]
pub struct ModelInfo {
    pub name: String,
    pub trained_on: String,
    pub dir: PathBuf,
    /// The card's sampling options (every request starts from them).
    pub defaults: SampleOptions,
    pub spacing: [f64; 3],
}

/// The queue and its generation thread.
pub struct Queue {
    jobs: Mutex<Jobs>,
    tx: SyncSender<Work>,
    next: AtomicU64,
    worker: Mutex<Option<JoinHandle<()>>>,
    /// The stem prefix of this process's volumes (start time), so ids never collide across runs.
    run_tag: String,
}

impl Queue {
    /// Load the model on the generation thread (errors come back here, before anything listens)
    /// and start taking jobs; `capacity` jobs may wait behind the running one.
    pub fn start(
        model: &Path,
        device: Device,
        out: PathBuf,
        capacity: usize,
    ) -> Result<(Arc<Queue>, ModelInfo), String> {
        let (tx, rx) = sync_channel::<Work>(capacity);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<ModelInfo, String>>();
        let model = model.to_path_buf();
        let worker = std::thread::Builder::new()
            .name("text2ct-generate".into())
            .spawn(move || {
                let p = match Pipeline::load(&model, &device) {
                    Ok(p) => p,
                    Err(e) => {
                        let _ = ready_tx.send(Err(format!("loading the model in {}: {e}", model.display())));
                        return;
                    }
                };
                let info = ModelInfo {
                    name: p.card.name.clone(),
                    trained_on: p.card.trained_on.clone(),
                    dir: model.clone(),
                    defaults: p.default_options(),
                    spacing: p.card.output.spacing,
                };
                if ready_tx.send(Ok(info)).is_err() {
                    return;
                }
                work(&p, &out, rx);
            })
            .map_err(|e| format!("starting the generation thread: {e}"))?;
        let info = ready_rx.recv().map_err(|_| "the generation thread ended while loading the model".to_string())??;
        let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let q = Queue {
            jobs: Mutex::new(Jobs::default()),
            tx,
            next: AtomicU64::new(1),
            worker: Mutex::new(Some(worker)),
            run_tag: format!("web{secs}"),
        };
        Ok((Arc::new(q), info))
    }

    /// Queue a job; 429 when the queue is full, 503 when the generation thread has stopped.
    pub fn submit(&self, request: JobRequest) -> Result<Arc<JobEntry>, ApiError> {
        let n = self.next.fetch_add(1, Ordering::SeqCst);
        let id = n.to_string();
        let status = JobStatus {
            id: id.clone(),
            state: JobState::Queued,
            phase: "queued".into(),
            volume: 0,
            count: request.count,
            step: 0,
            steps: request.opts.steps,
            volumes: vec![],
            error: None,
            prompt: request.prompt.clone(),
            seed: request.seed,
        };
        let entry = Arc::new(JobEntry {
            id: id.clone(),
            stem: format!("{}-{id}", self.run_tag),
            request,
            cancel: CancelFlag::new(),
            status: watch::Sender::new(status),
        });
        let mut jobs = self.jobs.lock().unwrap_or_else(|e| e.into_inner());
        match self.tx.try_send(Work::Job(entry.clone())) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                return Err(ApiError::new(
                    axum::http::StatusCode::TOO_MANY_REQUESTS,
                    "the job queue is full: wait for a job to finish (or cancel one) and try again",
                ))
            }
            Err(TrySendError::Disconnected(_)) => {
                return Err(ApiError::new(
                    axum::http::StatusCode::SERVICE_UNAVAILABLE,
                    "the generation thread has stopped (the server is shutting down)",
                ))
            }
        }
        jobs.map.insert(id.clone(), entry.clone());
        jobs.order.push_back(id);
        // Forget the oldest finished jobs beyond the bound (their files stay in the gallery).
        while jobs.order.len() > MAX_JOBS_KEPT {
            let Some(pos) =
                jobs.order.iter().position(|j| jobs.map.get(j).is_none_or(|e| e.status.borrow().state.is_final()))
            else {
                break;
            };
            if let Some(old) = jobs.order.remove(pos) {
                jobs.map.remove(&old);
            }
        }
        Ok(entry)
    }

    pub fn get(&self, id: &str) -> Option<Arc<JobEntry>> {
        self.jobs.lock().unwrap_or_else(|e| e.into_inner()).map.get(id).cloned()
    }

    /// Cancel a job: a queued one is cancelled at once, a running one stops at its next
    /// sampling step. 409 for a job that has already finished.
    pub fn cancel(&self, entry: &JobEntry) -> Result<JobStatus, ApiError> {
        let state = entry.status.borrow().state;
        if state.is_final() {
            return Err(ApiError::conflict(format!(
                "job {} has already finished ({}): nothing to cancel",
                entry.id,
                serde_json::to_value(state).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default()
            )));
        }
        entry.cancel.cancel();
        entry.update(|s| match s.state {
            JobState::Queued => {
                s.state = JobState::Cancelled;
                s.phase = "cancelled".into();
            }
            JobState::Running => s.phase = "cancelling".into(),
            _ => {}
        });
        Ok(entry.snapshot())
    }

    /// Cancel every job that has not finished (does not wait).
    pub fn cancel_all(&self) {
        let entries: Vec<Arc<JobEntry>> =
            self.jobs.lock().unwrap_or_else(|e| e.into_inner()).map.values().cloned().collect();
        for e in entries {
            let _ = self.cancel(&e);
        }
    }

    /// Cancel every job and wait for the generation thread to end (Ctrl-C): the running job stops
    /// at its next sampling step and writes nothing (finished volumes stay; writes are atomic).
    pub fn shutdown(&self) {
        self.cancel_all();
        let _ = self.tx.send(Work::Stop);
        if let Some(h) = self.worker.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = h.join();
        }
    }
}

/// The generation thread's loop.
fn work(p: &Pipeline, out: &Path, rx: Receiver<Work>) {
    while let Ok(Work::Job(entry)) = rx.recv() {
        if entry.cancel.is_cancelled() {
            continue;
        }
        entry.update(|s| {
            s.state = JobState::Running;
            s.phase = "sampling".into();
        });
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(p, out, &entry)));
        entry.update(|s| match result {
            Ok(Ok(())) => {
                s.state = JobState::Done;
                s.phase = "done".into();
            }
            Ok(Err(GenerateError::Cancelled)) => {
                s.state = JobState::Cancelled;
                s.phase = "cancelled".into();
            }
            Ok(Err(e)) => {
                s.state = JobState::Failed;
                s.phase = "failed".into();
                s.error = Some(e.to_string());
            }
            Err(_) => {
                s.state = JobState::Failed;
                s.phase = "failed".into();
                s.error = Some("the generation panicked (a bug: please report it)".into());
            }
        });
    }
}

fn run(p: &Pipeline, out: &Path, entry: &JobEntry) -> Result<(), GenerateError> {
    let r = &entry.request;
    let mut opts = r.opts.clone();
    opts.cancel = entry.cancel.clone();
    let jobs = JobList::for_prompt(&r.prompt, r.count, r.seed)?;
    for (k, mut job) in jobs.iter().enumerate() {
        job.id = entry.stem.clone();
        entry.update(|s| {
            s.volume = k;
            s.step = 0;
            s.phase = "sampling".into();
        });
        p.run_job(&job, &opts, out, None, &mut |i, n| {
            entry.update(|s| {
                s.step = i;
                s.steps = n;
                if i == n {
                    s.phase = "decoding".into();
                }
            })
        })?;
        entry.update(|s| s.volumes.push(job.stem()));
    }
    Ok(())
}
