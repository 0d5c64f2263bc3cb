//! Choosing the compute device by name (`--device`, `[run] device`).
//!
//! - `cpu`: burn's pure-Rust `flex` backend (SIMD + rayon). Always present; the default.
//! - `wgpu`: the best adapter burn's `wgpu` backend finds (Vulkan on Linux, Metal on macOS, DX12
//!   on Windows; a high-power GPU first, `CUBECL_WGPU_DEFAULT_DEVICE` overrides), `wgpu:N`: the
//!   N-th discrete GPU. Only in builds with the cargo feature
//!   `wgpu` (`cargo build --release --features wgpu`): it adds about 20 minutes to a clean
//!   build, so the default build and CI leave it out. With the feature `vulkan` instead, the same
//!   device names run cubecl's SPIR-V kernels on Vulkan (cooperative-matrix products where the
//!   driver has them) rather than WGSL.
//!
//! Unknown names and GPU names in a CPU-only build are errors that say how to get the device,
//! never a silent fall-back to the CPU.
//!
//! Also: [`flex_tensor`], the raw CPU storage of a plain CPU tensor, for the CPU kernels
//! (`directconv`, `fusednorm`) that read and write it directly.

use burn::backend::flex::FlexTensor;
use burn::backend::Flex;
use burn::tensor::{Device, Tensor};

/// The device names this build accepts, for help texts and error messages.
pub fn available() -> &'static str {
    if cfg!(feature = "vulkan") {
        "cpu, wgpu, wgpu:N (Vulkan, SPIR-V kernels)"
    } else if cfg!(feature = "wgpu") {
        "cpu, wgpu, wgpu:N"
    } else {
        "cpu (GPU: rebuild with --features wgpu)"
    }
}

/// Parse a device name (see the module docs).
pub fn parse(spec: &str) -> Result<Device, String> {
    let s = spec.trim().to_ascii_lowercase();
    match s.as_str() {
        "cpu" | "flex" => Ok(Device::flex()),
        "wgpu" | "gpu" => gpu(None, spec),
        _ => match s.strip_prefix("wgpu:").or_else(|| s.strip_prefix("gpu:")) {
            Some(n) => {
                let index = n.parse::<usize>().map_err(|_| format!("device {spec:?}: {n:?} is not a GPU index"))?;
                gpu(Some(index), spec)
            }
            None => Err(format!("unknown device {spec:?}; this build has: {}", available())),
        },
    }
}

/// Parse a comma-separated list of device names (`"wgpu:0,wgpu:1"`) for data-parallel training.
/// Each name is parsed by [`parse`]; an empty entry is an error. A name may repeat (two replicas
/// on one device: no faster, but the same arithmetic; the tests use it on the CPU).
pub fn parse_list(spec: &str) -> Result<Vec<Device>, String> {
    let names: Vec<&str> = spec.split(',').map(str::trim).collect();
    if names.iter().any(|n| n.is_empty()) {
        return Err(format!("device list {spec:?} has an empty entry; write e.g. \"wgpu:0,wgpu:1\""));
    }
    names.into_iter().map(parse).collect()
}

#[cfg(feature = "wgpu")]
fn gpu(index: Option<usize>, _spec: &str) -> Result<Device, String> {
    use burn::tensor::DeviceKind;
    Ok(Device::wgpu(index.map_or(DeviceKind::DefaultDevice, DeviceKind::DiscreteGpu)))
}

#[cfg(not(feature = "wgpu"))]
fn gpu(_index: Option<usize>, spec: &str) -> Result<Device, String> {
    Err(format!(
        "device {spec:?} needs a GPU build: `cargo build --release --features wgpu` (this build has: {})",
        available()
    ))
}

/// The CPU (`flex`) primitive of `t` when `t` is a plain f32 CPU tensor with contiguous storage
/// (no copy). `None` on other backends, other dtypes, non-contiguous views and tensors tracked by
/// autodiff (which must keep burn's differentiable operations).
pub(crate) fn flex_tensor<const D: usize>(t: &Tensor<D>) -> Option<FlexTensor> {
    if t.is_require_grad() || t.device() != Device::flex() {
        return None;
    }
    let p = t.clone().try_into_primitive::<Flex>().ok()?;
    p.as_slice::<f32>()?;
    Some(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_lists_parse_each_name() {
        assert_eq!(parse_list("cpu").unwrap().len(), 1);
        assert_eq!(parse_list(" cpu , cpu ").unwrap().len(), 2);
        let e = parse_list("cpu,,cpu").unwrap_err();
        assert!(e.contains("empty entry"), "{e}");
        let e = parse_list("cpu,tpu").unwrap_err();
        assert!(e.contains("unknown device \"tpu\""), "{e}");
    }

    #[test]
    fn names_parse_or_fail_clearly() {
        assert!(parse("cpu").is_ok());
        assert!(parse(" CPU ").is_ok());
        let e = parse("tpu").unwrap_err();
        assert!(e.contains("unknown device") && e.contains("cpu"), "{e}");
        let e = parse("wgpu:x").unwrap_err();
        assert!(e.contains("not a GPU index"), "{e}");
        if !cfg!(feature = "wgpu") {
            let e = parse("wgpu:1").unwrap_err();
            assert!(e.contains("--features wgpu"), "{e}");
        }
    }
}
