//! Behavioural checks: error handling, sampler consistency, report JSON.

use text2ct_diffusion::*;

#[test]
fn errors_instead_of_panics() {
    let r = RFlowScheduler::text2ct();
    assert_eq!(r.set_timesteps(0, 1000, RFlowMode::Released), Err(DiffusionError::ZeroSteps));
    assert!(matches!(r.set_timesteps(1001, 1000, RFlowMode::Released), Err(DiffusionError::TooManySteps { .. })));
    assert!(r.sample_timestep(1.0, 1000).is_err());
    assert!(r.sample_timestep(f32::NAN, 1000).is_err());
    assert!(r.add_noise(&[1.0], &[1.0, 2.0], 10.0).is_err());
    assert!(r.add_noise(&[f32::INFINITY], &[1.0], 10.0).is_err());
    assert!(r.add_noise(&[1.0], &[1.0], 1000.5).is_err());
    let mut x = vec![0.0f32; 2];
    assert!(r.step(&mut x, &[f32::NAN, 0.0], 0.1).is_err());
    assert!(r.step(&mut x, &[0.0, 0.0], f64::NAN).is_err());
    assert!(inference_timesteps(1000, 0, 0, TimestepSpacing::Leading).is_err());
    assert!(inference_timesteps(10, 11, 0, TimestepSpacing::Linspace).is_err());
    let d = DdpmScheduler::new(BetaSchedule::linear_default(), 1000).unwrap();
    assert!(d.step(&[0.0], 1000, &[0.0], Some(&[0.0])).is_err());
    assert!(d.step(&[0.0], 5, &[0.0], None).is_err()); // noise needed for t > 0
    assert!(d.step(&[0.0], 0, &[0.0], None).is_ok());
    assert!(NoiseSchedule::new(BetaSchedule::Linear { beta_start: 0.1, beta_end: f64::NAN }, 10).is_err());
    assert!(polynomial_lr(1e-4, 3, 0, 2.0).is_err());
    assert!(schedule_report(Sampler::Rflow, 30, &[4, 128, 128], false).is_err());
    assert!(schedule_report(Sampler::Ddim, 0, &[4, 128, 128, 32], false).is_err());
    assert!("foo".parse::<Sampler>().is_err());
}

#[test]
fn rflow_sampler_transports_constant_velocity_exactly() {
    // With v = x0 - eps constant (a perfect model for a single-point data distribution), the exact schedule brings
    // noise to x0; the released schedule overshoots by Σdt - 1 = 0.00874.
    let r = RFlowScheduler::text2ct();
    let x0 = vec![0.5f32, -1.0, 2.0];
    let eps = vec![1.0f32, 0.25, -0.75];
    let v = velocity_target(&x0, &eps).unwrap();
    for (mode, total) in [(RFlowMode::Exact, 1.0f64), (RFlowMode::Released, 1.0086875)] {
        let s = r.set_timesteps(30, 128 * 128 * 32, mode).unwrap();
        assert!((s.total_dt() - total).abs() < 1e-5);
        let out = r.sample(&s, eps.clone(), |_, _| v.clone()).unwrap();
        for i in 0..3 {
            let want = eps[i] as f64 + v[i] as f64 * s.total_dt();
            assert!((out[i] as f64 - want).abs() < 1e-5, "{mode:?}: {} vs {want}", out[i]);
        }
    }
    // add_noise at t = T is the noise, at t = 0 the data
    assert_eq!(r.add_noise(&x0, &eps, 1000.0).unwrap(), eps);
    assert_eq!(r.add_noise(&x0, &eps, 0.0).unwrap(), x0);
    // sample_timestep(0) = 0 and the shift is monotone and pushes toward noise for large volumes
    assert_eq!(r.sample_timestep(0.0, 524288).unwrap(), 0.0);
    assert!(r.sample_timestep(0.5, 524288).unwrap() > 700.0);
    assert!((r.sample_timestep(0.5, 32768).unwrap() - 500.0).abs() < 1e-3);
}

#[test]
fn ddim_with_exact_eps_recovers_x0() {
    // If the model returns the true noise, every DDIM (eta = 0) step lands on the forward process of the same x0.
    let d = DdimScheduler::new(BetaSchedule::maisi_scaled_linear(), 1000).unwrap();
    let x0 = vec![0.3f32, -0.7, 0.1, 0.9];
    let eps = vec![-1.2f32, 0.4, 0.8, -0.1];
    let ts = d.timesteps(20).unwrap();
    let mut x = d.schedule.add_noise(&x0, &eps, ts[0]).unwrap();
    for &t in &ts {
        let prev = d.prev_timestep(t, 20).unwrap();
        x = d.step(&eps, t, prev, &x, 0.0, None).unwrap().prev_sample;
        if prev >= 0 {
            let want = d.schedule.add_noise(&x0, &eps, prev as usize).unwrap();
            for (a, b) in x.iter().zip(&want) {
                assert!((a - b).abs() < 1e-4, "t={t}: {a} vs {b}");
            }
        }
    }
    for (a, b) in x.iter().zip(&x0) {
        assert!((a - b).abs() < 1e-4);
    }
}

#[test]
fn schedule_report_serializes() {
    let r = schedule_report(Sampler::Rflow, 30, &[4, 128, 128, 32], false).unwrap();
    assert_eq!(r.input_img_size_numel, 524288);
    assert_eq!(r.timesteps.len(), 30);
    assert_eq!(r.timesteps[29], 79.9375);
    let json = serde_json::to_value(&r).unwrap();
    assert_eq!(json["sampler"], "rflow");
    assert_eq!(json["timesteps"][1], 986.5);
    let e = schedule_report("rflow".parse().unwrap(), 30, &[4, 128, 128, 32], true).unwrap();
    assert!((e.total_step_size - 1.0).abs() < 1e-12);
    let d = schedule_report(Sampler::Ddim, 50, &[4, 64, 64, 64], false).unwrap();
    assert_eq!(d.timesteps[0], 980.0);
    assert_eq!(d.next_timesteps[49], -20.0);
    assert!((d.total_step_size - 1.0).abs() < 1e-12);
    let p = schedule_report(Sampler::Ddpm, 1000, &[4, 8, 8, 8], false).unwrap();
    assert_eq!(p.timesteps.len(), 1000);
    assert!(serde_json::to_string(&p).unwrap().contains("\"ddpm\""));
}
