//! IEEE 754 binary16 rounding, as `numpy.ndarray.astype(np.float16)` does it.

/// Rounds an `f64` to the nearest IEEE half-precision value (round-to-nearest, ties to even) and returns that value
/// as `f64` (every half value is exactly representable). Overflow beyond the largest finite half (65504) gives ±inf,
/// values below half the smallest subnormal flush to ±0, NaN stays NaN.
///
/// The rounding is done directly from `f64` (no intermediate `f32`), as NumPy's `npy_double_to_half` does, so there
/// is no double rounding.
pub fn round_to_f16(x: f64) -> f64 {
    if !x.is_finite() || x == 0.0 {
        return x;
    }
    let a = x.abs();
    // Exponent of the leading bit: floor(log2(a)), exact from the bit pattern (a is normal in f64 here for any value
    // that matters; f64 subnormals round to 0 in half anyway).
    let bits = a.to_bits();
    let biased = ((bits >> 52) & 0x7ff) as i32;
    if biased == 0 {
        return 0.0f64.copysign(x);
    }
    let e = biased - 1023;
    // Half: normal exponents -14..=15 with 10 fraction bits; subnormals have quantum 2^-24.
    let q_exp = if e < -14 { -24 } else { e - 10 };
    let quantum = 2f64.powi(q_exp);
    let r = (a / quantum).round_ties_even() * quantum;
    if r > 65504.0 {
        return f64::INFINITY.copysign(x);
    }
    r.copysign(x)
}

#[cfg(test)]
mod tests {
    use super::round_to_f16;

    #[test]
    fn known_half_values() {
        assert_eq!(round_to_f16(1.0), 1.0);
        assert_eq!(round_to_f16(0.1), 0.0999755859375);
        assert_eq!(round_to_f16(65504.0), 65504.0);
        assert_eq!(round_to_f16(65520.0), f64::INFINITY); // halfway to 65536 rounds up to overflow
        assert_eq!(round_to_f16(65519.99), 65504.0);
        assert_eq!(round_to_f16(-2049.0), -2048.0); // tie -> even
        assert_eq!(round_to_f16(2051.0), 2052.0); // tie -> even
        assert_eq!(round_to_f16(5.960464477539063e-8), 5.960464477539063e-8); // smallest subnormal
        assert_eq!(round_to_f16(2.9802322387695312e-8), 0.0); // exactly half of it: tie to even (0)
        assert_eq!(round_to_f16(3.0e-8), 5.960464477539063e-8);
        assert_eq!(round_to_f16(986.4), 986.5);
        assert_eq!(round_to_f16(79.94), 79.9375);
        assert!(round_to_f16(f64::NAN).is_nan());
    }
}
