//! Compares against reference values written by `fixtures/gen_schedules.py` with MONAI's own schedulers
//! (`RFlowScheduler`, `DDPMScheduler`, `DDIMScheduler`) and torch's `PolynomialLR`.

use serde_json::Value;
use text2ct_diffusion::*;

fn fixture() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/schedules.json");
    serde_json::from_str(&std::fs::read_to_string(path).expect("read fixture")).expect("parse fixture")
}

fn f64s(v: &Value) -> Vec<f64> {
    v.as_array().expect("array").iter().map(|x| x.as_f64().expect("number")).collect()
}

fn f32s(v: &Value) -> Vec<f32> {
    f64s(v).into_iter().map(|x| x as f32).collect()
}

fn assert_close(got: &[f32], want: &[f32], rtol: f32, atol: f32, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= atol + rtol * w.abs(), "{what}[{i}]: got {g}, want {w}");
    }
}

#[test]
fn rflow_text2ct_30_steps_matches_documented_list() {
    // Values from the reference doc (§1.5.2), independent of our code.
    let want = [
        1000.0, 986.5, 972.5, 958.0, 942.5, 926.5, 909.5, 892.0, 874.0, 854.5, 834.5, 813.0, 791.0, 767.0, 742.5,
        716.0, 688.0, 658.5, 627.0, 593.5, 557.5, 519.0, 478.25, 434.0, 386.5, 335.0, 279.25, 218.75, 152.5, 79.9375,
    ];
    let s = RFlowScheduler::text2ct().set_timesteps(30, 128 * 128 * 32, RFlowMode::Released).unwrap();
    assert_eq!(s.timesteps, want.to_vec());
    let mut next = want[1..].to_vec();
    next.push(0.0);
    assert_eq!(s.next_timesteps, next);
    // documented as "Σdt = 1.00874" (rounded); the exact value is 1.0086875
    assert!((s.total_dt() - 1.00874).abs() < 1e-4, "sum dt = {}", s.total_dt());
    // first and last steps: (1000 - 986)/1000 and (79.9375 - 0)/1000
    assert_eq!(s.dts[0], 0.014);
    assert_eq!(s.dts[29], 0.0799375);
}

#[test]
fn rflow_set_timesteps_matches_monai() {
    let fx = fixture();
    let sch = RFlowScheduler::text2ct();
    for case in fx["rflow_set_timesteps"].as_array().unwrap() {
        let steps = case["steps"].as_u64().unwrap() as usize;
        let numel = case["numel"].as_u64().unwrap();
        let s = sch.set_timesteps(steps, numel, RFlowMode::Released).unwrap();
        assert_eq!(s.timesteps, f64s(&case["timesteps"]), "timesteps, steps={steps} numel={numel}");
        assert_eq!(s.next_timesteps, f64s(&case["next_timesteps"]));
        // MONAI's dt as applied in float32 (x = 0 + 1 * dt): must be bit-identical after our f32 cast.
        let dt32: Vec<f32> = s.dts.iter().map(|&d| d as f32).collect();
        assert_eq!(dt32, f32s(&case["dt"]), "dt, steps={steps} numel={numel}");
        // clean variant vs an independent float64 evaluation of the formula
        let e = sch.set_timesteps(steps, numel, RFlowMode::Exact).unwrap();
        for (g, w) in e.timesteps.iter().zip(f64s(&case["clean_timesteps"])) {
            assert!((g - w).abs() <= 1e-12 * w.abs().max(1.0), "clean timestep {g} vs {w}");
        }
        assert!((e.total_dt() - 1.0).abs() < 1e-12);
    }
}

#[test]
fn rflow_sample_timesteps_matches_monai() {
    let fx = fixture();
    let sch = RFlowScheduler::text2ct();
    for case in fx["rflow_sample_timesteps"].as_array().unwrap() {
        let numel: u64 = case["spatial"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).product();
        let got: Vec<f32> = f32s(&case["u"]).iter().map(|&u| sch.sample_timestep(u, numel).unwrap()).collect();
        assert_close(&got, &f32s(&case["t"]), 1e-6, 1e-6, "sample_timestep");
    }
}

#[test]
fn rflow_add_noise_and_step_match_monai() {
    let fx = fixture();
    let sch = RFlowScheduler::text2ct();
    let an = &fx["rflow_add_noise"];
    let (x0, eps, t, xt) = (f32s(&an["x0"]), f32s(&an["eps"]), f32s(&an["t"]), f32s(&an["xt"]));
    let b = an["batch"].as_u64().unwrap() as usize;
    let per = x0.len() / b;
    for i in 0..b {
        let r = i * per..(i + 1) * per;
        let got = sch.add_noise(&x0[r.clone()], &eps[r.clone()], t[i]).unwrap();
        assert_close(&got, &xt[r], 1e-6, 1e-7, "rflow add_noise");
    }
    let st = &fx["rflow_step"];
    let (v, x) = (f32s(&st["v"]), f32s(&st["x"]));
    let s = sch.set_timesteps(30, 128 * 128 * 32, RFlowMode::Released).unwrap();
    for c in st["cases"].as_array().unwrap() {
        let i = c["index"].as_u64().unwrap() as usize;
        assert_eq!(s.timesteps[i], c["t"].as_f64().unwrap());
        let mut y = x.clone();
        sch.step(&mut y, &v, s.dts[i]).unwrap();
        assert_close(&y, &f32s(&c["out"]), 1e-6, 1e-7, "rflow step");
    }
}

#[test]
fn ddpm_schedules_match_monai() {
    let fx = fixture();
    for (name, case) in fx["ddpm_schedules"].as_object().unwrap() {
        let kw = &case["kwargs"];
        let bs = kw.get("beta_start").and_then(Value::as_f64).unwrap_or(1e-4);
        let be = kw.get("beta_end").and_then(Value::as_f64).unwrap_or(2e-2);
        let kind = match case["schedule"].as_str().unwrap() {
            "linear_beta" => BetaSchedule::Linear { beta_start: bs, beta_end: be },
            "scaled_linear_beta" => BetaSchedule::ScaledLinear { beta_start: bs, beta_end: be },
            s => panic!("unknown schedule {s}"),
        };
        let sch = NoiseSchedule::new(kind, 1000).unwrap();
        let idx: Vec<usize> = case["index"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
        let betas: Vec<f32> = idx.iter().map(|&i| sch.betas[i]).collect();
        let ac: Vec<f32> = idx.iter().map(|&i| sch.alphas_cumprod[i]).collect();
        // torch's vectorised linspace may differ from the scalar formula by 1 ulp
        assert_close(&betas, &f32s(&case["betas"]), 2.5e-7, 0.0, &format!("{name} betas"));
        assert_close(&ac, &f32s(&case["alphas_cumprod"]), 1e-6, 0.0, &format!("{name} alphas_cumprod"));
    }
}

#[test]
fn ddpm_add_noise_and_step_match_monai() {
    let fx = fixture();
    let sch = DdpmScheduler::new(BetaSchedule::maisi_scaled_linear(), 1000).unwrap();
    let an = &fx["ddpm_add_noise"];
    let (x0, eps, xt) = (f32s(&an["x0"]), f32s(&an["eps"]), f32s(&an["xt"]));
    let ts: Vec<usize> = an["t"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
    let per = x0.len() / ts.len();
    for (i, &t) in ts.iter().enumerate() {
        let r = i * per..(i + 1) * per;
        let got = sch.schedule.add_noise(&x0[r.clone()], &eps[r.clone()], t).unwrap();
        assert_close(&got, &xt[r], 1e-6, 1e-6, "ddpm add_noise");
    }
    let st = &fx["ddpm_step"];
    let (mo, sample) = (f32s(&st["model_output"]), f32s(&st["sample"]));
    for c in st["cases"].as_array().unwrap() {
        let t = c["t"].as_u64().unwrap() as usize;
        let noise = f32s(&c["noise"]);
        let out = sch.step(&mo, t, &sample, Some(&noise)).unwrap();
        assert_close(&out.pred_original_sample, &f32s(&c["pred_x0"]), 1e-5, 1e-5, &format!("ddpm x0 t={t}"));
        assert_close(&out.prev_sample, &f32s(&c["prev"]), 1e-5, 1e-5, &format!("ddpm prev t={t}"));
    }
}

#[test]
fn ddim_timesteps_match_monai() {
    let fx = fixture();
    for c in fx["ddim_timesteps"].as_array().unwrap() {
        let n = c["steps"].as_u64().unwrap() as usize;
        let off = c["steps_offset"].as_u64().unwrap() as usize;
        let to_usize =
            |v: &Value| v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as usize).collect::<Vec<_>>();
        match &c["leading"] {
            Value::Null => assert!(inference_timesteps(1000, n, off, TimestepSpacing::Leading).is_err()),
            v => assert_eq!(inference_timesteps(1000, n, off, TimestepSpacing::Leading).unwrap(), to_usize(v)),
        }
        assert_eq!(inference_timesteps(1000, n, off, TimestepSpacing::Linspace).unwrap(), to_usize(&c["linspace"]));
    }
}

#[test]
fn ddim_step_matches_monai() {
    let fx = fixture();
    let mut sch = DdimScheduler::new(BetaSchedule::linear_default(), 1000).unwrap();
    let st = &fx["ddim_step"];
    let n = st["steps"].as_u64().unwrap() as usize;
    let (mo, sample) = (f32s(&st["model_output"]), f32s(&st["sample"]));
    for c in st["cases"].as_array().unwrap() {
        let t = c["t"].as_u64().unwrap() as usize;
        let eta = c["eta"].as_f64().unwrap() as f32;
        let noise = f32s(&c["noise"]);
        let prev_t = sch.prev_timestep(t, n).unwrap();
        let out = sch.step(&mo, t, prev_t, &sample, eta, Some(&noise)).unwrap();
        assert_close(&out.pred_original_sample, &f32s(&c["pred_x0"]), 1e-5, 1e-5, &format!("ddim x0 t={t}"));
        assert_close(&out.prev_sample, &f32s(&c["prev"]), 1e-5, 1e-5, &format!("ddim prev t={t}"));
    }
    sch.set_alpha_to_one = false;
    sch.steps_offset = 1;
    let c = &fx["ddim_step_no_alpha_one"];
    let prev_t = sch.prev_timestep(1, 50).unwrap();
    let out = sch.step(&mo, 1, prev_t, &sample, 0.0, None).unwrap();
    assert_close(&out.prev_sample, &f32s(&c["prev"]), 1e-5, 1e-5, "ddim no alpha one");
}

#[test]
fn polynomial_lr_matches_torch() {
    let fx = fixture();
    let c = &fx["polynomial_lr"];
    let lr0 = c["lr0"].as_f64().unwrap();
    let total = c["total_iters"].as_u64().unwrap() as usize;
    for (t, want) in f64s(&c["lrs"]).into_iter().enumerate() {
        let got = polynomial_lr(lr0, t, total, 2.0).unwrap();
        assert!((got - want).abs() <= 1e-12 * lr0, "lr step {t}: {got} vs {want}");
    }
}
