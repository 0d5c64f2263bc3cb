//! Learning-rate schedules as burn [`LrScheduler`]s, with exact, checkpointable state (the
//! number of steps taken).
//!
//! `step()` returns the rate for the current step, then advances: the k-th call (k = 0, 1, …)
//! returns `lr(k)`.
//! - polynomial: `lr(k) = lr0 · (1 - min(k, total)/total)^power`, exactly
//!   [`text2ct_diffusion::polynomial_lr`] (MAISI's / Text2CT's `PolynomialLR`);
//! - constant: `lr0`, after an optional linear warm-up;
//! - cosine: linear warm-up over `warmup` steps to `lr0`, then
//!   `min + (lr0 - min)·(1 + cos(π·t))/2` with `t` going from 0 to 1 at `total`.
//!
//! Warm-up: `lr(k) = lr0 · (k + 1)/warmup` for `k < warmup` (never exactly 0).

use burn::optim::lr_scheduler::{LrScheduler, LrSchedulerRecord};
use burn::optim::LearningRate;

use crate::config::{ScheduleConfig, ScheduleKind};
use crate::error::{Result, TrainError};

/// A schedule over `total` steps.
#[derive(Clone, Debug, PartialEq)]
pub struct Schedule {
    pub kind: ScheduleKind,
    pub lr0: f64,
    pub total: usize,
    pub power: f64,
    pub warmup: usize,
    pub min_lr: f64,
    /// Steps taken so far (the state).
    pub step: usize,
}

impl Schedule {
    /// Polynomial decay of power `power` over `total` steps.
    pub fn polynomial(lr0: f64, total: usize, power: f64) -> Result<Self> {
        Self::new(ScheduleKind::Polynomial, lr0, total, power, 0, 0.0)
    }

    /// Build from a `[schedule]` table.
    pub fn from_config(cfg: &ScheduleConfig, lr0: f64, total: usize) -> Result<Self> {
        Self::new(cfg.kind, lr0, total, cfg.power, cfg.warmup_steps, cfg.min_lr)
    }

    pub fn new(kind: ScheduleKind, lr0: f64, total: usize, power: f64, warmup: usize, min_lr: f64) -> Result<Self> {
        if total == 0 {
            return Err(TrainError::Config("schedule: total steps must be > 0".into()));
        }
        if !(lr0.is_finite() && lr0 > 0.0) || !power.is_finite() || !min_lr.is_finite() {
            return Err(TrainError::Config("schedule: lr, power and min_lr must be finite, lr > 0".into()));
        }
        if kind == ScheduleKind::Polynomial && warmup > 0 {
            return Err(TrainError::Config(
                "schedule: warmup_steps is for the constant and cosine schedules only".into(),
            ));
        }
        Ok(Schedule { kind, lr0, total, power, warmup, min_lr, step: 0 })
    }

    /// The learning rate at step `k` (pure; does not change the state).
    pub fn lr_at(&self, k: usize) -> f64 {
        if k < self.warmup {
            return self.lr0 * (k + 1) as f64 / self.warmup as f64;
        }
        match self.kind {
            ScheduleKind::Polynomial => {
                // Same formula and rounding as text2ct_diffusion::polynomial_lr (checked in tests).
                let frac = 1.0 - k.min(self.total) as f64 / self.total as f64;
                self.lr0 * frac.powf(self.power)
            }
            ScheduleKind::Constant => self.lr0,
            ScheduleKind::Cosine => {
                let span = self.total.saturating_sub(self.warmup).max(1);
                let t = ((k - self.warmup) as f64 / span as f64).min(1.0);
                self.min_lr + (self.lr0 - self.min_lr) * 0.5 * (1.0 + (std::f64::consts::PI * t).cos())
            }
        }
    }

    /// The rate the next `step()` will return.
    pub fn current(&self) -> f64 {
        self.lr_at(self.step)
    }
}

impl LrScheduler for Schedule {
    fn step(&mut self) -> LearningRate {
        let lr = self.lr_at(self.step);
        self.step += 1;
        lr
    }

    fn to_record(&self) -> LrSchedulerRecord {
        LrSchedulerRecord::new().with_scalar("step", self.step as u64)
    }

    fn load_record(&mut self, record: LrSchedulerRecord) {
        if let Some(s) = record.scalar::<u64>("step") {
            self.step = s as usize;
        }
    }
}
