//! Time one forward pass of the full-width Text2CT U-Net (217.7M parameters, seeded random
//! weights) on the CPU (`flex`) backend, with a breakdown of where the time goes.
//!
//! `cargo run --release -p text2ct-models --example unet_speed -- [X,Y,Z] [repeats] [bandwidth | bf16 | compare]`
//! (`text2ct bench unet --latent 4,X,Y,Z` times the same forward with the same inputs, without the
//! breakdown)
//! (default latent 16,16,8, i.e. input [1, 4, 16, 16, 8]; context [1, 1, 768], class label 1,
//! spacing [75, 75, 300], t = 500). Compare with `fixtures/time_monai_unet.py` on the same input and
//! thread count. Peak memory: run it under `/usr/bin/time -v` (without `bandwidth`, which
//! allocates 1 GiB to measure the machine's read bandwidth and prints the weight-streaming floor:
//! every weight is read once per batch-1 forward, whatever the kernels).
//!
//! `bf16`: the forwards and the breakdown with bf16 convolutions (`Unet::set_precision`).
//! `compare`: `repeats` forwards in f32, then `repeats` in bf16 on the same input, in the same run,
//! and the relative L2 difference of their outputs; no breakdown.
//!
//! The breakdown re-runs the network block by block (same arithmetic as `forward_cond`) and
//! times each ResBlock (3D convolutions + GroupNorm) and each SpatialTransformer, and inside the
//! transformers the self-attention, cross-attention and GEGLU feed-forward.

use std::time::Instant;

use burn::tensor::activation::silu;
use burn::tensor::{Device, Tensor};
use text2ct_models::attention::SpatialTransformer;
use text2ct_models::directconv::{best_isa, pack_weight, Kernel};
use text2ct_models::speed::{self, sync};
use text2ct_models::unet::UnetResBlock;
use text2ct_models::{Precision, Unet, UnetConfig};

#[derive(Default)]
struct Times {
    res: f64,
    /// ResBlock time per level, keyed by the input's voxel count (largest first when printed).
    res_by_voxels: std::collections::BTreeMap<usize, (usize, f64)>,
    st_total: f64,
    st_attn1: f64,
    st_attn2: f64,
    st_ff: f64,
}

fn res(t: &mut Times, r: &UnetResBlock, h: Tensor<5>, emb: &Tensor<2>) -> Tensor<5> {
    let [_, _, x, yy, z] = h.dims();
    let s = Instant::now();
    let y = r.forward(h, emb);
    sync(&y);
    let dt = s.elapsed().as_secs_f64();
    t.res += dt;
    let e = t.res_by_voxels.entry(x * yy * z).or_default();
    e.0 += 1;
    e.1 += dt;
    y
}

fn st(t: &mut Times, a: &SpatialTransformer, h: Tensor<5>, ctx: &Tensor<3>) -> Tensor<5> {
    // The same computation as SpatialTransformer::forward, timed piece by piece.
    let s = Instant::now();
    let [b, _, x, y, z] = h.dims();
    let p = a.proj_in.forward(a.norm.forward(h.clone()));
    let inner = p.dims()[1];
    let mut tok: Tensor<3> = p.permute([0, 2, 3, 4, 1]).reshape([b, x * y * z, inner]);
    for blk in &a.transformer_blocks {
        let s1 = Instant::now();
        let n1 = blk.norm1.forward(tok.clone());
        tok = blk.attn1.forward(n1.clone(), n1) + tok;
        sync(&tok);
        t.st_attn1 += s1.elapsed().as_secs_f64();
        let s2 = Instant::now();
        tok = blk.attn2.forward(blk.norm2.forward(tok.clone()), ctx.clone()) + tok;
        sync(&tok);
        t.st_attn2 += s2.elapsed().as_secs_f64();
        let s3 = Instant::now();
        tok = blk.ff.forward(blk.norm3.forward(tok.clone())) + tok;
        sync(&tok);
        t.st_ff += s3.elapsed().as_secs_f64();
    }
    let v: Tensor<5> = tok.reshape([b, x, y, z, inner]).permute([0, 4, 1, 2, 3]);
    let out = a.proj_out.forward(v) + h;
    sync(&out);
    t.st_total += s.elapsed().as_secs_f64();
    out
}

fn main() {
    let mut args = std::env::args().skip(1);
    let size: [usize; 3] = match args.next() {
        Some(a) => {
            let v: Vec<usize> = a.split(',').map(|s| s.trim().parse().expect("latent size X,Y,Z")).collect();
            [v[0], v[1], v[2]]
        }
        None => [16, 16, 8],
    };
    let repeats: usize = args.next().map(|r| r.parse().expect("repeats")).unwrap_or(2);
    let mode = args.next().unwrap_or_default();
    assert!(
        ["", "bandwidth", "bf16", "compare"].contains(&mode.as_str()),
        "the third argument is bandwidth, bf16 or compare, not {mode:?}"
    );
    let bandwidth = mode == "bandwidth";
    let dev = Device::flex();
    let cfg = UnetConfig::text2ct();
    let t0 = Instant::now();
    let mut unet = Unet::new(&cfg, 0, &dev).expect("init");
    if mode == "bf16" {
        unet.set_precision(Precision::Bf16.on_this_cpu());
    }
    println!(
        "threads: {}; init {:.2} s; params {}",
        speed::current_threads(),
        t0.elapsed().as_secs_f64(),
        cfg.num_params().expect("spec")
    );
    pack_costs(&unet);
    let [x, y, z] = size;
    // The inputs of `text2ct bench unet` (and of benchmarks/monai_bench.py).
    let (lat, t, cond) = speed::unet_inputs(&cfg, [4, x, y, z], 1, &dev).expect("latent size");
    let ctx = cond.context.clone().expect("the Text2CT U-Net takes a context");
    let mut outputs = Vec::new();
    let precisions = if mode == "compare" { vec![Precision::F32, Precision::Bf16] } else { vec![unet.precision()] };
    for p in precisions {
        unet.set_precision(p.on_this_cpu());
        let mut out = None;
        for i in 0..repeats {
            let s = Instant::now();
            let o = unet.forward_cond(lat.clone(), t.clone(), &cond).expect("forward");
            sync(&o);
            println!("forward {i} ({}): {:.3} s -> {:?}", unet.precision(), s.elapsed().as_secs_f64(), o.dims());
            out = Some(o);
        }
        let (n, bytes) = unet.net.kernels.cached();
        println!("  packed weights held: {n}, {:.0} MB", bytes as f64 / 1e6);
        unet.net.kernels.clear_cache();
        outputs.extend(out);
    }
    if mode == "compare" {
        if let [a, b] = &outputs[..] {
            let a = a.clone().into_data().try_into_vec::<f32>().expect("f32");
            let b = b.clone().into_data().try_into_vec::<f32>().expect("f32");
            let (num, den) = a
                .iter()
                .zip(&b)
                .fold((0f64, 0f64), |(n, d), (x, y)| (n + f64::from(x - y).powi(2), d + f64::from(*x).powi(2)));
            println!("bf16 vs f32 output: relative L2 {:.3e}", (num / den).sqrt());
        }
        return;
    }

    // Breakdown.
    let net = &unet.net;
    let _kernels = net.kernels.enter();
    let mut tm = Times::default();
    let s_all = Instant::now();
    let emb = silu(net.embedding(t, &cond));
    let mut h = net.conv_in.forward(lat);
    let mut skips = vec![h.clone()];
    for db in &net.down_blocks {
        for (j, r) in db.resnets.iter().enumerate() {
            h = res(&mut tm, r, h, &emb);
            if let Some(a) = db.attentions.get(j) {
                h = st(&mut tm, a, h, &ctx);
            }
            skips.push(h.clone());
        }
        if let Some(d) = &db.downsampler {
            h = res(&mut tm, d, h, &emb);
            skips.push(h.clone());
        }
    }
    h = res(&mut tm, &net.middle_block.resnet_1, h, &emb);
    h = st(&mut tm, &net.middle_block.attention, h, &ctx);
    h = res(&mut tm, &net.middle_block.resnet_2, h, &emb);
    for ub in &net.up_blocks {
        for (j, r) in ub.resnets.iter().enumerate() {
            let sk = skips.pop().expect("skip");
            h = res(&mut tm, r, Tensor::cat(vec![h, sk], 1), &emb);
            if let Some(a) = ub.attentions.get(j) {
                h = st(&mut tm, a, h, &ctx);
            }
        }
        if let Some(u) = &ub.upsampler {
            h = res(&mut tm, u, h, &emb);
        }
    }
    let out = net.out_conv.forward(silu(net.out_norm.forward(h)));
    sync(&out);
    let total = s_all.elapsed().as_secs_f64();
    println!(
        "breakdown (one instrumented forward, {total:.3} s): ResBlocks (conv3d+GN) {:.3} s ({:.0}%), \
         SpatialTransformers {:.3} s ({:.0}%) [self-attn {:.3} s, cross-attn {:.3} s, GEGLU ff {:.3} s, \
         GN+proj+reshape {:.3} s], rest {:.3} s",
        tm.res,
        100.0 * tm.res / total,
        tm.st_total,
        100.0 * tm.st_total / total,
        tm.st_attn1,
        tm.st_attn2,
        tm.st_ff,
        tm.st_total - tm.st_attn1 - tm.st_attn2 - tm.st_ff,
        total - tm.res - tm.st_total
    );
    for (vox, (n, dt)) in tm.res_by_voxels.iter().rev() {
        println!("  ResBlocks on inputs of {vox} voxels: {n} blocks, {dt:.3} s");
    }

    // The floor of any batch-1 forward: every weight is read from memory once.
    if !bandwidth {
        return;
    }
    let weight_bytes = 4.0 * cfg.num_params().expect("spec") as f64;
    let gbs = read_bandwidth_gbs();
    println!(
        "memory floor: {:.0} MB of f32 weights at this machine's read bandwidth ({gbs:.1} GB/s, {} threads) = {:.3} s per forward",
        weight_bytes / 1e6,
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        weight_bytes / 1e9 / gbs
    );
}

/// What the packed-weight cache saves per forward: the time to pack every 3x3x3 convolution
/// weight of the network for the f32 and the bf16 kernels (what each forward paid before the
/// cache), and the memory the packs hold.
fn pack_costs(unet: &Unet) {
    let Some(isa) = best_isa() else { return };
    let net = &unet.net;
    let mut res: Vec<&UnetResBlock> = Vec::new();
    for db in &net.down_blocks {
        res.extend(db.resnets.iter().chain(&db.downsampler));
    }
    res.extend([&net.middle_block.resnet_1, &net.middle_block.resnet_2]);
    for ub in &net.up_blocks {
        res.extend(ub.resnets.iter().chain(&ub.upsampler));
    }
    let mut convs = vec![&net.conv_in, &net.out_conv];
    convs.extend(res.iter().flat_map(|r| [&r.conv1, &r.conv2]));
    let weights: Vec<(Vec<f32>, usize, usize)> = convs
        .iter()
        .map(|c| {
            let [co, ci, ..] = c.weight.dims();
            (c.weight.val().into_data().try_into_vec::<f32>().expect("f32"), co, ci)
        })
        .filter(|(_, co, _)| co % 16 == 0)
        .collect();
    let n: usize = weights.iter().map(|(w, ..)| w.len()).sum();
    let mut line = format!("packing the {} 3x3x3 weights ({:.0} M values) once:", weights.len(), n as f64 / 1e6);
    for k in [Kernel::F32(isa), Kernel::Bf16] {
        if !k.supported() {
            continue;
        }
        let t = Instant::now();
        let bytes: usize = weights.iter().map(|(w, co, ci)| pack_weight(w, *co, *ci, k).bytes()).sum();
        line.push_str(&format!(" {k:?} {:.3} s, {:.0} MB;", t.elapsed().as_secs_f64(), bytes as f64 / 1e6));
    }
    println!("{line} (what a forward spent packing before the cache, where every level takes the direct kernels)");
}

/// Read bandwidth (GB/s): the best of 5 sums over a 1 GiB buffer, one slice per thread.
fn read_bandwidth_gbs() -> f64 {
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let buf: Vec<f32> = (0..(1usize << 28)).map(|i| (i & 1023) as f32).collect();
    let chunk = buf.len().div_ceil(threads);
    let mut best = f64::INFINITY;
    for _ in 0..5 {
        let t = Instant::now();
        let total: f32 = std::thread::scope(|s| {
            let hs: Vec<_> = buf
                .chunks(chunk)
                .map(|c| {
                    s.spawn(move || {
                        // 16 independent accumulators so the loop is bound by memory, not by adds.
                        let mut acc = [0f32; 16];
                        for v in c.chunks_exact(16) {
                            for (a, x) in acc.iter_mut().zip(v) {
                                *a += x;
                            }
                        }
                        acc.iter().sum::<f32>()
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().expect("thread")).sum()
        });
        std::hint::black_box(total);
        best = best.min(t.elapsed().as_secs_f64());
    }
    (buf.len() * 4) as f64 / 1e9 / best
}
