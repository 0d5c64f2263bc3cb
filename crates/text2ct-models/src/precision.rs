//! The arithmetic of the CPU convolution kernels ([`Precision`]: f32, or bf16 products summed in
//! f32) and the weights they pack once per model ([`ConvKernels`]).
//!
//! A network that uses the direct convolution (`directconv`) carries a [`ConvKernels`] beside its
//! parameters (a `#[module(skip)]` field: not a parameter, not recorded) and enters it for the
//! length of a forward pass ([`ConvKernels::enter`]); `directconv::conv3d_direct` reads the
//! entered one on that thread. This way the blocks' `forward` functions need no extra argument:
//! anything that runs a convolution inside the pass gets the model's precision and cache, and
//! code outside any pass (or on another thread) gets f32 and packs the weight on every call, as
//! before.
//!
//! **bf16**: inputs and weights of the 3 × 3 × 3 direct convolutions are rounded to bf16, products
//! summed in f32, outputs and everything else (GroupNorm statistics, SiLU, attention, softmax, the
//! other convolutions) stay f32. It needs AVX512-BF16; on a CPU without it the f32 kernels run
//! and a message says so once.
//!
//! **The packed-weight cache**: the direct kernels read the weight re-ordered into output-channel
//! blocks ([`crate::directconv::pack_weight`]). The cache keeps one packed copy per convolution
//! weight ([`ParamId`]) and kernel, and checks on every use that the weight it was packed from is
//! still the one in the model: it holds a weak reference to the weight's storage and reuses the
//! pack only while that storage is alive and is the same allocation. burn's CPU tensors never
//! change shared storage in place (copy on write; a write to storage with weak references moves
//! it), so a changed weight — an optimizer step, a loaded record — is new or moved storage, and
//! gets a fresh pack. Autodiff-tracked weights (training) never reach the direct kernels at all.
//! Cost: the packs take the memory of the weights they pack (f32), or half of it (bf16).

use std::cell::RefCell;
use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex, PoisonError, Weak};

use burn::backend::flex::FlexTensor;
use burn::module::ParamId;
use burn::tensor::Bytes;
use serde::{Deserialize, Serialize};

use crate::directconv::{best_isa, Kernel, PackedWeight};

/// The arithmetic of the 3 × 3 × 3 direct convolutions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// f32 products and sums (the default; what the parity tests check).
    #[default]
    F32,
    /// Inputs and weights rounded to bf16, products summed in f32 (AVX512-BF16).
    Bf16,
}

impl Precision {
    /// The names [`Precision::from_str`](std::str::FromStr) accepts.
    pub const NAMES: &'static str = "f32, bf16";

    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
        }
    }

    /// What this CPU computes when asked for `self`: bf16 falls back to f32 without AVX512-BF16
    /// (saying so once on stderr).
    pub fn on_this_cpu(self) -> Precision {
        match self {
            Precision::Bf16 if !crate::bf16conv::supported() => {
                static ONCE: std::sync::Once = std::sync::Once::new();
                ONCE.call_once(|| {
                    eprintln!(
                        "text2ct: this CPU has no AVX512-BF16, so bf16 precision runs the f32 convolution kernels"
                    )
                });
                Precision::F32
            }
            p => p,
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Precision {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "f32" | "fp32" | "float32" => Ok(Precision::F32),
            "bf16" | "bfloat16" => Ok(Precision::Bf16),
            _ => Err(format!("unknown precision {s:?}; use one of: {}", Precision::NAMES)),
        }
    }
}

/// A model's convolution settings and packed-weight cache (see the module documentation).
/// Clones share the cache (its entries are checked against the weights on every use) but not the
/// precision.
#[derive(Clone, Debug, Default)]
pub struct ConvKernels {
    precision: Precision,
    packs: Arc<PackCache>,
}

impl ConvKernels {
    pub fn precision(&self) -> Precision {
        self.precision
    }

    pub fn set_precision(&mut self, precision: Precision) {
        self.precision = precision;
    }

    /// Makes these settings the ones the direct convolutions of this thread use, until the
    /// returned guard is dropped (then the previous ones, if any, come back).
    pub fn enter(&self) -> KernelScope {
        let prev = ACTIVE.with(|a| a.borrow_mut().replace(self.clone()));
        KernelScope { prev, _not_send: PhantomData }
    }

    /// The direct-convolution kernel for this precision on this CPU (`None`: no SIMD kernel).
    pub(crate) fn kernel(&self) -> Option<Kernel> {
        match self.precision.on_this_cpu() {
            Precision::Bf16 => Some(Kernel::Bf16),
            Precision::F32 => best_isa().map(Kernel::F32),
        }
    }

    /// The weight `w` (the value of parameter `id`) packed for `kernel`: from the cache when it
    /// was packed from this very storage, else packed by `pack` and cached.
    pub(crate) fn packed(
        &self,
        id: ParamId,
        kernel: Kernel,
        w: &FlexTensor,
        pack: impl FnOnce() -> PackedWeight,
    ) -> Arc<PackedWeight> {
        let data = w.data_arc();
        let shape = w.layout().shape().to_vec();
        let lock = || self.packs.map.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(e) = lock().get(&(id, kernel)) {
            if e.shape == shape && e.weight.upgrade().is_some_and(|a| Arc::ptr_eq(&a, &data)) {
                return Arc::clone(&e.packed);
            }
        }
        let packed = Arc::new(pack());
        let entry = Entry { weight: Arc::downgrade(&data), shape, packed: Arc::clone(&packed) };
        lock().insert((id, kernel), entry);
        packed
    }

    /// Packed weights held (entries, bytes).
    pub fn cached(&self) -> (usize, usize) {
        let map = self.packs.map.lock().unwrap_or_else(PoisonError::into_inner);
        (map.len(), map.values().map(|e| e.packed.bytes()).sum())
    }

    /// Drops every packed weight (they are made again on the next forward pass).
    pub fn clear_cache(&self) {
        self.packs.map.lock().unwrap_or_else(PoisonError::into_inner).clear();
    }
}

/// The guard of [`ConvKernels::enter`] (not `Send`: it restores this thread's setting).
pub struct KernelScope {
    prev: Option<ConvKernels>,
    _not_send: PhantomData<*const ()>,
}

impl Drop for KernelScope {
    fn drop(&mut self) {
        let prev = self.prev.take();
        ACTIVE.with(|a| *a.borrow_mut() = prev);
    }
}

thread_local! {
    static ACTIVE: RefCell<Option<ConvKernels>> = const { RefCell::new(None) };
}

/// The settings entered on this thread, if any.
pub(crate) fn active() -> Option<ConvKernels> {
    ACTIVE.with(|a| a.borrow().clone())
}

#[derive(Default)]
struct PackCache {
    map: Mutex<HashMap<(ParamId, Kernel), Entry>>,
}

impl std::fmt::Debug for PackCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.map.lock().map(|m| m.len()).unwrap_or(0);
        write!(f, "PackCache({n} packed weights)")
    }
}

/// A packed weight and the storage it was packed from.
struct Entry {
    weight: Weak<Bytes>,
    shape: Vec<usize>,
    packed: Arc<PackedWeight>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blocks::{conv3d, conv3d_forward, rel_l2, InitSource};
    use burn::tensor::{Device, Distribution, Tensor};

    #[test]
    fn precision_names_parse() {
        assert_eq!("f32".parse::<Precision>().unwrap(), Precision::F32);
        assert_eq!(" BF16 ".parse::<Precision>().unwrap(), Precision::Bf16);
        let e = "f16".parse::<Precision>().unwrap_err();
        assert!(e.contains("\"f16\"") && e.contains("bf16"), "{e}");
        assert_eq!(Precision::default(), Precision::F32);
        assert_eq!(serde_json::to_string(&Precision::Bf16).unwrap(), "\"bf16\"");
        assert_eq!(serde_json::from_str::<Precision>("\"f32\"").unwrap(), Precision::F32);
    }

    /// Inside a scope, the weight is packed once and reused; a weight changed under the same
    /// parameter id (as an optimizer step or a loaded record changes it) gets a fresh pack — also
    /// when burn updates the only reference to its storage in place — and the output follows the
    /// new weight; the scope ends with its guard, and the cache is per model (shared by clones).
    #[test]
    fn packed_weights_are_reused_until_the_weight_changes() {
        if crate::directconv::best_isa().is_none() {
            return;
        }
        let dev = Device::flex();
        for precision in [Precision::F32, Precision::Bf16] {
            let mut kernels = ConvKernels::default();
            kernels.set_precision(precision);
            let tol = if precision.on_this_cpu() == Precision::Bf16 { 1e-2 } else { 1e-6 };
            let mut conv = conv3d(&mut InitSource::new(5), "c", 6, 32, 3, 1, 1, &dev);
            let x = Tensor::<5>::random([1, 6, 6, 5, 7], Distribution::Normal(0.0, 1.0), &dev);
            let id = conv.weight.id;
            {
                let _s = kernels.enter();
                let y1 = conv3d_forward(&conv, x.clone());
                assert_eq!(kernels.cached().0, 1, "{precision}: one packed weight");
                let y2 = conv3d_forward(&conv, x.clone());
                assert_eq!(kernels.cached().0, 1, "{precision}: reused, not packed again");
                assert!(rel_l2(y1.clone(), y2) == 0.0);
                assert!(rel_l2(conv.forward(x.clone()), y1) < tol);
            }
            // The same parameter with new values: in place where burn can (the model holds the
            // only strong reference), a copy otherwise. Either way the next pass sees it.
            conv.weight = conv.weight.map(|w| w.mul_scalar(-2.0).add_scalar(0.01));
            assert_eq!(conv.weight.id, id);
            {
                let _s = kernels.enter();
                let y = conv3d_forward(&conv, x.clone());
                let e = rel_l2(conv.forward(x.clone()), y);
                assert!(e < tol, "{precision}: a changed weight must not use the old pack (error {e})");
            }
            // Outside any scope: f32 and no cache.
            assert!(active().is_none());
            kernels.clear_cache();
            let y = conv3d_forward(&conv, x.clone());
            assert!(rel_l2(conv.forward(x.clone()), y) < 1e-6);
            assert_eq!(kernels.cached().0, 0);
            // Clones share the cache.
            let clone = kernels.clone();
            {
                let _s = clone.enter();
                conv3d_forward(&conv, x.clone());
            }
            assert_eq!(kernels.cached().0, 1);
        }
    }

    /// A weight packed from one storage is served again for that storage, not for another storage
    /// under the same id (checked directly, with a counter of packs).
    #[test]
    fn the_cache_checks_the_storage() {
        if crate::directconv::best_isa().is_none() {
            return;
        }
        let dev = Device::flex();
        let kernels = ConvKernels::default();
        let kernel = kernels.kernel().unwrap();
        let conv = conv3d(&mut InitSource::new(5), "c", 4, 16, 3, 1, 1, &dev);
        let w1 = crate::device::flex_tensor(&conv.weight.val()).unwrap();
        let mut packs = 0;
        let mut pack = || {
            packs += 1;
            PackedWeight::F32(vec![])
        };
        let a = kernels.packed(conv.weight.id, kernel, &w1, &mut pack);
        // The parameter's value read again is the same storage: served from the cache.
        let w1b = crate::device::flex_tensor(&conv.weight.val()).unwrap();
        let b = kernels.packed(conv.weight.id, kernel, &w1b, &mut pack);
        assert!(Arc::ptr_eq(&a, &b));
        // Equal values in another allocation: packed again.
        let copy = Tensor::<5>::from_data(conv.weight.val().into_data(), &dev);
        let w2 = crate::device::flex_tensor(&copy).unwrap();
        let c = kernels.packed(conv.weight.id, kernel, &w2, &mut pack);
        assert!(!Arc::ptr_eq(&a, &c));
        // A storage that was freed: packed again (never matched by address).
        drop((w2, copy));
        let w3 = crate::device::flex_tensor(&Tensor::<5>::from_data(conv.weight.val().into_data(), &dev)).unwrap();
        kernels.packed(conv.weight.id, kernel, &w3, &mut pack);
        assert_eq!(packs, 3);
    }
}
