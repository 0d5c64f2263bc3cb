//! The random streams of one generation job, all derived from the job's seed.
//!
//! ChaCha8 keyed by `seed_from_u64(seed)` (so a seed reproduces on any machine), one stream per use:
//! [`NoiseStream::latent`] (stream 0) is the initial latent noise — what `generate` has always drawn —, and
//! [`NoiseStream::sampler`] (stream 1) the sampler's own noise (DDPM's per-step noise), so the two never repeat
//! each other and the per-step noise changes with the seed. Values are standard normal float32 draws
//! (`rand_distr::StandardNormal`), generated on the host and sent to the device as one tensor.

use burn::prelude::{Device, Tensor, TensorData};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

/// A seeded stream of standard normal values.
#[derive(Clone, Debug)]
pub struct NoiseStream {
    rng: ChaCha8Rng,
}

impl NoiseStream {
    /// The stream of the initial latent noise.
    pub const LATENT: u64 = 0;
    /// The stream of the sampler's per-step noise.
    pub const SAMPLER: u64 = 1;

    /// Stream `stream` of the ChaCha8 generator keyed by `seed`.
    pub fn new(seed: u64, stream: u64) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        rng.set_stream(stream);
        Self { rng }
    }

    /// The initial latent noise of the job with this seed.
    pub fn latent(seed: u64) -> Self {
        Self::new(seed, Self::LATENT)
    }

    /// The sampler's per-step noise of the job with this seed.
    pub fn sampler(seed: u64) -> Self {
        Self::new(seed, Self::SAMPLER)
    }

    /// The next `n` values.
    pub fn normal_vec(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| StandardNormal.sample(&mut self.rng)).collect()
    }

    /// The next values as a tensor of `shape` on `device` (filled in row-major order).
    pub fn normal_tensor<const D: usize>(&mut self, shape: [usize; D], device: &Device) -> Tensor<D> {
        let n = shape.iter().product();
        Tensor::from_data(TensorData::new(self.normal_vec(n), shape), device)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_reproduce_and_differ() {
        let a = NoiseStream::latent(7).normal_vec(64);
        assert_eq!(a, NoiseStream::latent(7).normal_vec(64));
        assert_ne!(a, NoiseStream::latent(8).normal_vec(64));
        assert_ne!(a, NoiseStream::sampler(7).normal_vec(64));
        // The latent stream is the plain seeded generator (the noise `generate` has always drawn).
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let plain: Vec<f32> = (0..64).map(|_| StandardNormal.sample(&mut rng)).collect();
        assert_eq!(a, plain);
        // Drawing in pieces continues the stream.
        let mut s = NoiseStream::sampler(7);
        let mut pieces = s.normal_vec(10);
        pieces.extend(s.normal_vec(54));
        assert_eq!(pieces, NoiseStream::sampler(7).normal_vec(64));
    }
}
