//! Dense float64 linear algebra needed by the Fréchet distance (row-major `n×n` matrices in `Vec<f64>`).
//!
//! Choice: a self-written symmetric eigenvalue solver (Householder tridiagonalisation + implicit QL with Wilkinson
//! shifts, eigenvalues only) and a diagonally-pivoted Cholesky factorisation (LAPACK `dpstrf`'s algorithm), with
//! the `matrixmultiply` crate (the pure-Rust GEMM used by ndarray, already in the workspace) for the two cubic
//! matrix products. `nalgebra` was not used: it is not in the workspace lock, and its `SymmetricEigen` always
//! accumulates eigenvectors, which costs several times more than needed for 2048-d covariances. Jacobi is far too
//! slow at 2048.

use crate::error::{EvalError, Result};

/// `C = A·B` for row-major `A (m×k)`, `B (k×n)`; returns `C (m×n)`.
pub fn matmul(a: &[f64], b: &[f64], m: usize, k: usize, n: usize) -> Vec<f64> {
    assert_eq!(a.len(), m * k);
    assert_eq!(b.len(), k * n);
    let mut c = vec![0.0; m * n];
    if m == 0 || n == 0 || k == 0 {
        return c;
    }
    // SAFETY: the slices have exactly the sizes described by the dimensions and strides below.
    unsafe {
        matrixmultiply::dgemm(
            m,
            k,
            n,
            1.0,
            a.as_ptr(),
            k as isize,
            1,
            b.as_ptr(),
            n as isize,
            1,
            0.0,
            c.as_mut_ptr(),
            n as isize,
            1,
        );
    }
    c
}

/// `C = Aᵀ·B` for row-major `A (k×m)`, `B (k×n)`; returns `C (m×n)`.
pub fn matmul_tn(a: &[f64], b: &[f64], k: usize, m: usize, n: usize) -> Vec<f64> {
    assert_eq!(a.len(), k * m);
    assert_eq!(b.len(), k * n);
    let mut c = vec![0.0; m * n];
    if m == 0 || n == 0 || k == 0 {
        return c;
    }
    // SAFETY: A is read through transposed strides (row stride 1, column stride m); sizes match.
    unsafe {
        matrixmultiply::dgemm(
            m,
            k,
            n,
            1.0,
            a.as_ptr(),
            1,
            m as isize,
            b.as_ptr(),
            n as isize,
            1,
            0.0,
            c.as_mut_ptr(),
            n as isize,
            1,
        );
    }
    c
}

/// Eigenvalues (ascending) of a symmetric `n×n` matrix (only the lower triangle's symmetric part matters: the
/// matrix is symmetrised as `(A + Aᵀ)/2` first).
pub fn symmetric_eigenvalues(a: &[f64], n: usize) -> Result<Vec<f64>> {
    if a.len() != n * n {
        return Err(EvalError::ShapeMismatch { what: "symmetric matrix", expected: n * n, got: a.len() });
    }
    if a.iter().any(|v| !v.is_finite()) {
        return Err(EvalError::NonFinite { what: "symmetric matrix" });
    }
    let mut m = a.to_vec();
    for i in 0..n {
        for j in 0..i {
            let s = 0.5 * (m[i * n + j] + m[j * n + i]);
            m[i * n + j] = s;
            m[j * n + i] = s;
        }
    }
    let (mut d, mut e) = tridiagonalize(&mut m, n);
    tql_eigenvalues(&mut d, &mut e)?;
    d.sort_by(|x, y| x.total_cmp(y));
    Ok(d)
}

/// Householder reduction of a symmetric matrix (destroyed) to tridiagonal form. Returns the diagonal `d` and the
/// off-diagonal `e` (`e[k]` couples `k` and `k+1`; `e[n-1] = 0`).
fn tridiagonalize(a: &mut [f64], n: usize) -> (Vec<f64>, Vec<f64>) {
    let mut d = vec![0.0; n];
    let mut e = vec![0.0; n];
    if n == 0 {
        return (d, e);
    }
    let mut v = vec![0.0; n];
    let mut w = vec![0.0; n];
    for k in 0..n.saturating_sub(2) {
        d[k] = a[k * n + k];
        let lo = k + 1;
        let mlen = n - lo;
        // x = A[k, k+1..] (= column k below the diagonal by symmetry)
        let x = &a[k * n + lo..k * n + n];
        let scale: f64 = x.iter().map(|t| t.abs()).sum();
        if scale == 0.0 {
            e[k] = 0.0;
            continue;
        }
        let vv = &mut v[..mlen];
        let mut sigma = 0.0;
        for (vi, &xi) in vv.iter_mut().zip(x) {
            *vi = xi / scale;
            sigma += *vi * *vi;
        }
        let norm = sigma.sqrt();
        let alpha = if vv[0] > 0.0 { -norm } else { norm };
        e[k] = alpha * scale;
        // v = x/scale - alpha e1, H = I - beta v vᵀ with beta = 2/(vᵀv) = 1/(norm² - alpha·x0)
        let h = sigma - alpha * vv[0];
        vv[0] -= alpha;
        let beta = 1.0 / h;
        // p = beta · A22 v
        let ww = &mut w[..mlen];
        for i in 0..mlen {
            let row = &a[(lo + i) * n + lo..(lo + i) * n + n];
            ww[i] = beta * dot(row, vv);
        }
        // w = p - (beta/2)(vᵀp) v
        let kk = 0.5 * beta * dot(vv, ww);
        for (wi, &vi) in ww.iter_mut().zip(vv.iter()) {
            *wi -= kk * vi;
        }
        // A22 -= v wᵀ + w vᵀ
        for i in 0..mlen {
            let (vi, wi) = (vv[i], ww[i]);
            let row = &mut a[(lo + i) * n + lo..(lo + i) * n + n];
            for ((r, &vj), &wj) in row.iter_mut().zip(vv.iter()).zip(ww.iter()) {
                *r -= vi * wj + wi * vj;
            }
        }
    }
    if n >= 2 {
        d[n - 2] = a[(n - 2) * n + n - 2];
        e[n - 2] = a[(n - 1) * n + n - 2];
    }
    d[n - 1] = a[(n - 1) * n + n - 1];
    e[n - 1] = 0.0;
    (d, e)
}

#[inline]
fn dot(a: &[f64], b: &[f64]) -> f64 {
    // 4 accumulators so the loop vectorises
    let mut s = [0.0f64; 4];
    let ca = a.chunks_exact(4);
    let cb = b.chunks_exact(4);
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        s[0] += x[0] * y[0];
        s[1] += x[1] * y[1];
        s[2] += x[2] * y[2];
        s[3] += x[3] * y[3];
    }
    let mut t = (s[0] + s[1]) + (s[2] + s[3]);
    for (x, y) in ra.iter().zip(rb) {
        t += x * y;
    }
    t
}

/// Implicit QL with Wilkinson shifts on a symmetric tridiagonal matrix (eigenvalues only, in place in `d`).
fn tql_eigenvalues(d: &mut [f64], e: &mut [f64]) -> Result<()> {
    let n = d.len();
    for l in 0..n {
        let mut iter = 0;
        loop {
            let mut m = l;
            while m + 1 < n {
                let dd = d[m].abs() + d[m + 1].abs();
                if e[m].abs() <= f64::EPSILON * dd {
                    break;
                }
                m += 1;
            }
            if m == l {
                break;
            }
            iter += 1;
            if iter > 100 {
                return Err(EvalError::NoConvergence);
            }
            let mut g = (d[l + 1] - d[l]) / (2.0 * e[l]);
            let mut r = g.hypot(1.0);
            g = d[m] - d[l] + e[l] / (g + r.copysign(g));
            let (mut s, mut c, mut p) = (1.0f64, 1.0f64, 0.0f64);
            let mut underflow = false;
            let mut i = m;
            while i > l {
                i -= 1;
                let f = s * e[i];
                let b = c * e[i];
                r = f.hypot(g);
                e[i + 1] = r;
                if r == 0.0 {
                    d[i + 1] -= p;
                    e[m] = 0.0;
                    underflow = true;
                    break;
                }
                s = f / r;
                c = g / r;
                g = d[i + 1] - p;
                r = (d[i] - g) * s + 2.0 * c * b;
                p = s * r;
                d[i + 1] = g + p;
                g = c * r - b;
            }
            if underflow {
                continue;
            }
            d[l] -= p;
            e[l] = g;
            e[m] = 0.0;
        }
    }
    Ok(())
}

/// Diagonally pivoted Cholesky of a symmetric positive semi-definite matrix: `A[p_i, p_j] = (L Lᵀ)[i, j]` with
/// `L` (`n×rank`, row-major, lower trapezoidal) and permutation `p`. Stops when the largest remaining pivot is
/// `≤ n·ε·max(diag A)` (LAPACK `dpstrf`'s default tolerance), so directions whose variance is at rounding level
/// are dropped (the analogue of clipping tiny/negative eigenvalues to 0).
pub fn pivoted_cholesky(a: &[f64], n: usize) -> Result<(Vec<f64>, Vec<usize>, usize)> {
    if a.len() != n * n {
        return Err(EvalError::ShapeMismatch { what: "covariance", expected: n * n, got: a.len() });
    }
    let mut perm: Vec<usize> = (0..n).collect();
    let mut diag: Vec<f64> = (0..n).map(|i| a[i * n + i]).collect();
    let maxd = diag.iter().cloned().fold(0.0f64, f64::max);
    // L stored as n×n row-major (row i = permuted index i), only the first `rank` columns are used.
    let mut l = vec![0.0; n * n];
    let tol = n as f64 * f64::EPSILON * maxd;
    let mut rank = 0;
    if maxd <= 0.0 {
        return Ok((Vec::new(), perm, 0));
    }
    for k in 0..n {
        let (mut j, mut best) = (k, diag[k]);
        for (i, &v) in diag.iter().enumerate().skip(k + 1) {
            if v > best {
                best = v;
                j = i;
            }
        }
        if best <= tol {
            break;
        }
        if j != k {
            perm.swap(j, k);
            diag.swap(j, k);
            for c in 0..k {
                l.swap(j * n + c, k * n + c);
            }
        }
        let lkk = best.sqrt();
        l[k * n + k] = lkk;
        let pk = perm[k];
        let (head, tail) = l.split_at_mut((k + 1) * n);
        let lk = &head[k * n..k * n + k];
        for i in k + 1..n {
            let row = &mut tail[(i - k - 1) * n..(i - k) * n];
            let v = (a[perm[i] * n + pk] - dot(&row[..k], lk)) / lkk;
            row[k] = v;
            diag[i] -= v * v;
        }
        rank = k + 1;
    }
    // compact to n×rank
    let mut lr = vec![0.0; n * rank];
    for i in 0..n {
        lr[i * rank..(i + 1) * rank].copy_from_slice(&l[i * n..i * n + rank]);
    }
    Ok((lr, perm, rank))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jacobi_eigenvalues(a: &[f64], n: usize) -> Vec<f64> {
        let mut m = a.to_vec();
        for _ in 0..100 {
            let mut off = 0.0;
            for p in 0..n {
                for q in p + 1..n {
                    off += m[p * n + q] * m[p * n + q];
                }
            }
            if off < 1e-30 {
                break;
            }
            for p in 0..n {
                for q in p + 1..n {
                    let apq = m[p * n + q];
                    if apq.abs() < 1e-300 {
                        continue;
                    }
                    let theta = (m[q * n + q] - m[p * n + p]) / (2.0 * apq);
                    let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                    let t = if theta == 0.0 { 1.0 } else { t };
                    let c = 1.0 / (t * t + 1.0).sqrt();
                    let s = t * c;
                    for k in 0..n {
                        let (akp, akq) = (m[k * n + p], m[k * n + q]);
                        m[k * n + p] = c * akp - s * akq;
                        m[k * n + q] = s * akp + c * akq;
                    }
                    for k in 0..n {
                        let (apk, aqk) = (m[p * n + k], m[q * n + k]);
                        m[p * n + k] = c * apk - s * aqk;
                        m[q * n + k] = s * apk + c * aqk;
                    }
                }
            }
        }
        let mut d: Vec<f64> = (0..n).map(|i| m[i * n + i]).collect();
        d.sort_by(|x, y| x.total_cmp(y));
        d
    }

    fn lcg_matrix(n: usize, seed: u64) -> Vec<f64> {
        let mut s = seed;
        let mut a = vec![0.0; n * n];
        for i in 0..n {
            for j in 0..=i {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                let v = ((s >> 11) as f64 / (1u64 << 53) as f64) - 0.5;
                a[i * n + j] = v;
                a[j * n + i] = v;
            }
        }
        a
    }

    #[test]
    fn eigenvalues_agree_with_jacobi() {
        for (n, seed) in [(1, 1), (2, 2), (3, 3), (7, 4), (20, 5), (33, 6)] {
            let a = lcg_matrix(n, seed);
            let got = symmetric_eigenvalues(&a, n).unwrap();
            let want = jacobi_eigenvalues(&a, n);
            for (g, w) in got.iter().zip(&want) {
                assert!((g - w).abs() < 1e-12 * n as f64, "n={n}: {g} vs {w}");
            }
        }
        // diagonal and zero matrices, repeated eigenvalues
        let z = vec![0.0; 16];
        assert_eq!(symmetric_eigenvalues(&z, 4).unwrap(), vec![0.0; 4]);
        let mut i3 = vec![0.0; 9];
        i3[0] = 2.0;
        i3[4] = 2.0;
        i3[8] = -1.0;
        assert_eq!(symmetric_eigenvalues(&i3, 3).unwrap(), vec![-1.0, 2.0, 2.0]);
    }

    #[test]
    fn pivoted_cholesky_reconstructs_psd_and_finds_rank() {
        // A = B Bᵀ with B 10×4 -> rank 4
        let (n, r) = (10, 4);
        let b = lcg_matrix(n, 9)[..n * r].to_vec();
        let a = matmul(&b, &transpose(&b, n, r), n, r, n);
        let (l, p, rank) = pivoted_cholesky(&a, n).unwrap();
        assert_eq!(rank, r);
        let llt = matmul(&l, &transpose(&l, n, rank), n, rank, n);
        for i in 0..n {
            for j in 0..n {
                assert!((llt[i * n + j] - a[p[i] * n + p[j]]).abs() < 1e-12);
            }
        }
    }

    fn transpose(a: &[f64], m: usize, n: usize) -> Vec<f64> {
        let mut t = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                t[j * m + i] = a[i * n + j];
            }
        }
        t
    }

    #[test]
    fn matmul_tn_matches_naive() {
        let a = lcg_matrix(5, 1)[..15].to_vec(); // 3×5
        let b = lcg_matrix(5, 2)[..12].to_vec(); // 3×4
        let c = matmul_tn(&a, &b, 3, 5, 4);
        for i in 0..5 {
            for j in 0..4 {
                let want: f64 = (0..3).map(|k| a[k * 5 + i] * b[k * 4 + j]).sum();
                assert!((c[i * 4 + j] - want).abs() < 1e-15);
            }
        }
    }
}
