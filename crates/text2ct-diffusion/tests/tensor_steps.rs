//! The tensor forms of the samplers against the slice forms (the MONAI-checked reference), and the guided
//! sampling loop against a slice-level loop written out by hand.

use burn::prelude::{Device, Tensor, TensorData};
use text2ct_diffusion::*;

fn dev() -> Device {
    Device::flex()
}

fn tensor(v: &[f32]) -> Tensor<2> {
    Tensor::from_data(TensorData::new(v.to_vec(), [1, v.len()]), &dev())
}

fn vec(t: Tensor<2>) -> Vec<f32> {
    t.into_data().convert::<f32>().try_into_vec::<f32>().unwrap()
}

/// Deterministic test values: standard normal draws from a fixed stream, scaled.
fn values(stream: u64, n: usize, scale: f32) -> Vec<f32> {
    NoiseStream::new(99, stream).normal_vec(n).into_iter().map(|v| v * scale).collect()
}

fn assert_close(got: &[f32], want: &[f32], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}");
    for (i, (a, b)) in got.iter().zip(want).enumerate() {
        assert!((a - b).abs() <= 1e-6 * (1.0 + b.abs()), "{what}: element {i}: {a} vs {b}");
    }
}

#[test]
fn rflow_and_guidance_tensor_forms_equal_the_slice_forms() {
    let r = RFlowScheduler::text2ct();
    let s = r.set_timesteps(30, 64, RFlowMode::Released).unwrap();
    let (x, v) = (values(1, 97, 1.0), values(2, 97, 0.7));
    for &dt in &s.dts {
        let mut want = x.clone();
        r.step(&mut want, &v, dt).unwrap();
        // Bit for bit: the same float32 operations.
        assert_eq!(vec(r.step_tensor(tensor(&x), tensor(&v), dt).unwrap()), want);
    }
    let u = values(3, 97, 1.0);
    for w in [0.0f32, 1.0, 5.0, -2.5, 7.5] {
        let want = cfg_combine(&u, &v, w).unwrap();
        assert_eq!(vec(cfg_combine_tensor(tensor(&u), tensor(&v), w).unwrap()), want, "w = {w}");
    }
    assert!(matches!(r.step_tensor(tensor(&x), tensor(&v[..96]), 0.1), Err(DiffusionError::ShapeMismatch { .. })));
    assert!(r.step_tensor(tensor(&x), tensor(&v), f64::NAN).is_err());
    assert!(cfg_combine_tensor(tensor(&x), tensor(&v), f32::INFINITY).is_err());
}

#[test]
fn ddpm_tensor_step_equals_the_slice_step() {
    let n = 131;
    let (mo, sample, noise) = (values(4, n, 1.0), values(5, n, 1.3), values(6, n, 1.0));
    for kind in [BetaSchedule::maisi_scaled_linear(), BetaSchedule::linear_default()] {
        for pred in [PredictionType::Epsilon, PredictionType::Sample, PredictionType::VPrediction] {
            for var in [VarianceType::FixedSmall, VarianceType::FixedLarge] {
                for clip in [None, Some((-1.0f32, 1.0f32))] {
                    let mut d = DdpmScheduler::new(kind, 1000).unwrap();
                    (d.prediction_type, d.variance_type, d.clip_sample) = (pred, var, clip);
                    for t in [0usize, 1, 37, 500, 999] {
                        let want = d.step(&mo, t, &sample, Some(&noise)).unwrap().prev_sample;
                        let got =
                            d.step_tensor(tensor(&mo), t, tensor(&sample), (t > 0).then(|| tensor(&noise))).unwrap();
                        assert_close(&vec(got), &want, &format!("{kind:?} {pred:?} {var:?} {clip:?} t={t}"));
                    }
                }
            }
        }
    }
    let d = DdpmScheduler::new(BetaSchedule::maisi_scaled_linear(), 1000).unwrap();
    assert!(d.step_tensor(tensor(&mo), 5, tensor(&sample), None).is_err()); // noise needed for t > 0
    assert!(d.step_tensor(tensor(&mo), 1000, tensor(&sample), Some(tensor(&noise))).is_err());
    assert!(matches!(
        d.step_tensor(tensor(&mo[..n - 1]), 5, tensor(&sample), Some(tensor(&noise))),
        Err(DiffusionError::ShapeMismatch { .. })
    ));
}

#[test]
fn ddim_tensor_step_equals_the_slice_step() {
    let n = 131;
    let (mo, sample, noise) = (values(7, n, 1.0), values(8, n, 1.3), values(9, n, 1.0));
    for pred in [PredictionType::Epsilon, PredictionType::Sample, PredictionType::VPrediction] {
        for clip in [None, Some((-1.0f32, 1.0f32))] {
            for alpha_one in [true, false] {
                let mut d = DdimScheduler::new(BetaSchedule::maisi_scaled_linear(), 1000).unwrap();
                (d.prediction_type, d.clip_sample, d.set_alpha_to_one) = (pred, clip, alpha_one);
                for steps in [1usize, 7, 50] {
                    for &t in &d.timesteps(steps).unwrap() {
                        let prev = d.prev_timestep(t, steps).unwrap();
                        for eta in [0.0f32, 0.5, 1.0] {
                            let nz = (eta > 0.0).then_some(&noise[..]);
                            let want = d.step(&mo, t, prev, &sample, eta, nz).unwrap().prev_sample;
                            let got =
                                d.step_tensor(tensor(&mo), t, prev, tensor(&sample), eta, nz.map(tensor)).unwrap();
                            let what = format!("{pred:?} {clip:?} one={alpha_one} steps={steps} t={t} eta={eta}");
                            if pred == PredictionType::Epsilon && clip.is_none() && eta == 0.0 {
                                // What `generate` runs: bit for bit, so its outputs did not change.
                                assert_eq!(vec(got), want, "{what}");
                            } else {
                                assert_close(&vec(got), &want, &what);
                            }
                        }
                    }
                }
            }
        }
    }
    let d = DdimScheduler::new(BetaSchedule::maisi_scaled_linear(), 1000).unwrap();
    assert!(d.step_tensor(tensor(&mo), 10, 0, tensor(&sample), 0.5, None).is_err()); // eta > 0 needs noise
    assert!(d.step_tensor(tensor(&mo), 10, 0, tensor(&sample), -1.0, None).is_err());
    assert!(d.step_tensor(tensor(&mo), 10, 1000, tensor(&sample), 0.0, None).is_err());
}

/// A toy network on `[batch, n]`: `0.1·x·(1 + t/1000) + c`, with `c = 0.3` on the conditional branch and
/// `c = −0.2` on the unconditional one.
fn toy(x: &[f32], t: f32, cond: bool) -> Vec<f32> {
    let c = if cond { 0.3f32 } else { -0.2 };
    x.iter().map(|&v| v * 0.1 * (1.0 + t / 1000.0) + c).collect()
}

fn toy_tensor(x: Tensor<2>, t: f32, branches: Branches) -> Tensor<2> {
    let [b, n] = x.dims();
    let v = vec(x);
    let out: Vec<f32> = match branches {
        Branches::Cond => toy(&v, t, true),
        Branches::Uncond => toy(&v, t, false),
        Branches::Both => {
            let mut o = toy(&v[..b / 2 * n], t, false);
            o.extend(toy(&v[b / 2 * n..], t, true));
            o
        }
    };
    Tensor::from_data(TensorData::new(out, [b, n]), &dev())
}

/// The guided loop written out with the slice-level schedulers.
fn reference(sch: &Scheduler, mut x: Vec<f32>, w: f32, seed: u64) -> Vec<f32> {
    let mut rng = NoiseStream::sampler(seed);
    let ts = sch.timesteps();
    for (i, &t) in ts.iter().enumerate() {
        let v = cfg_combine(&toy(&x, t as f32, false), &toy(&x, t as f32, true), w).unwrap();
        x = match sch {
            Scheduler::Rflow { scheduler, schedule } => {
                scheduler.step(&mut x, &v, schedule.dts[i]).unwrap();
                x
            }
            Scheduler::Ddpm { scheduler, timesteps } => {
                let t = timesteps[i];
                let noise = (t > 0).then(|| rng.normal_vec(x.len()));
                scheduler.step(&v, t, &x, noise.as_deref()).unwrap().prev_sample
            }
            Scheduler::Ddim { scheduler, timesteps, steps, eta } => {
                let t = timesteps[i];
                let prev = scheduler.prev_timestep(t, *steps).unwrap();
                scheduler.step(&v, t, prev, &x, *eta, None).unwrap().prev_sample
            }
        };
    }
    x
}

#[test]
fn the_guided_loop_equals_the_slice_loop_and_calls_only_the_branches_it_needs() {
    let n = 53;
    let x0 = values(10, n, 1.0);
    for sampler in Sampler::ALL {
        let sch = Scheduler::text2ct(sampler, 6, n as u64, false).unwrap();
        assert_eq!((sch.sampler(), sch.len()), (sampler, 6));
        for (w, calls) in
            [(0.0f32, Branches::Uncond), (1.0, Branches::Cond), (5.0, Branches::Both), (-1.5, Branches::Both)]
        {
            let mut seen = Vec::new();
            let mut steps = Vec::new();
            let got = sample_guided(
                &sch,
                tensor(&x0),
                w,
                &mut NoiseStream::sampler(3),
                |x: Tensor<2>, t, b| -> Result<Tensor<2>> {
                    seen.push((b, x.dims()[0], t));
                    Ok(toy_tensor(x, t, b))
                },
                &mut |i, total| steps.push((i, total)),
            )
            .unwrap();
            let want = reference(&sch, x0.clone(), w, 3);
            assert_close(&vec(got), &want, &format!("{sampler} w={w}"));
            // One call per step, only the branches this scale needs, batched for both.
            let batch = if calls == Branches::Both { 2 } else { 1 };
            let ts: Vec<f32> = sch.timesteps().iter().map(|&t| t as f32).collect();
            assert_eq!(seen, ts.iter().map(|&t| (calls, batch, t)).collect::<Vec<_>>(), "{sampler} w={w}");
            assert_eq!(steps, (1..=6).map(|i| (i, 6)).collect::<Vec<_>>());
        }
    }
}

#[test]
fn ddpm_noise_comes_from_the_stream_and_the_other_samplers_use_none() {
    let n = 40;
    let x0 = values(11, n, 1.0);
    let run = |sampler: Sampler, seed: u64| {
        let sch = Scheduler::text2ct(sampler, 4, n as u64, false).unwrap();
        let model = |x: Tensor<2>, t, b| -> Result<Tensor<2>> { Ok(toy_tensor(x, t, b)) };
        vec(sample_guided(&sch, tensor(&x0), 3.0, &mut NoiseStream::sampler(seed), model, &mut |_, _| {}).unwrap())
    };
    let a = run(Sampler::Ddpm, 1);
    assert_eq!(a, run(Sampler::Ddpm, 1), "the same seed reproduces exactly");
    let b = run(Sampler::Ddpm, 2);
    assert!(a.iter().zip(&b).all(|(p, q)| p != q), "another seed, other noise at every element");
    for s in [Sampler::Rflow, Sampler::Ddim] {
        assert_eq!(run(s, 1), run(s, 2), "{s} draws no noise");
    }
}

#[test]
fn the_loop_refuses_bad_model_outputs_and_scales() {
    let sch = Scheduler::text2ct(Sampler::Rflow, 2, 8, false).unwrap();
    let x = tensor(&[0.5; 8]);
    let mut rng = NoiseStream::sampler(0);
    let model = |x: Tensor<2>, _t, _b| -> Result<Tensor<2>> { Ok(x.narrow(1, 0, 4)) };
    let e = sample_guided(&sch, x.clone(), 1.0, &mut rng, model, &mut |_, _| {}).unwrap_err();
    assert!(matches!(e, DiffusionError::ShapeMismatch { .. }), "{e}");
    // Both branches: the model must give twice the batch.
    let model = |x: Tensor<2>, _t, _b| -> Result<Tensor<2>> { Ok(x.narrow(0, 0, 1)) };
    let e = sample_guided(&sch, x.clone(), 5.0, &mut rng, model, &mut |_, _| {}).unwrap_err();
    assert!(e.to_string().contains("guided model output"), "{e}");
    let model = |x: Tensor<2>, _t, _b| -> Result<Tensor<2>> { Ok(x) };
    assert!(sample_guided(&sch, x.clone(), f32::NAN, &mut rng, model, &mut |_, _| {}).is_err());
    // The model's own error comes through.
    let model = |_x: Tensor<2>, _t, _b| -> Result<Tensor<2>> { Err(DiffusionError::InvalidConfig("boom".into())) };
    assert!(sample_guided(&sch, x.clone(), 5.0, &mut rng, model, &mut |_, _| {})
        .unwrap_err()
        .to_string()
        .contains("boom"));
    assert!(sch.step(2, x.clone(), x, &mut rng).is_err());
}

#[test]
fn sampler_names_round_trip_through_serde_and_the_command_line() {
    for s in Sampler::ALL {
        let j = serde_json::to_string(&s).unwrap();
        assert_eq!(j, format!("\"{}\"", s.name()));
        assert_eq!(serde_json::from_str::<Sampler>(&j).unwrap(), s);
        assert_eq!(s.name().parse::<Sampler>().unwrap(), s);
        assert_eq!(s.to_string(), s.name());
    }
    assert!(serde_json::from_str::<Sampler>("\"euler\"").unwrap_err().to_string().contains("euler"));
    let e = "euler".parse::<Sampler>().unwrap_err().to_string();
    assert!(e.contains("\"euler\"") && e.contains("rflow, ddpm or ddim"), "{e}");
}
