//! Voxel-to-world geometry: a 4x4 affine in NIfTI's RAS+ convention, orientation codes,
//! and the NIfTI quaternion (qform) representation.

use crate::error::{IoError, Result};

/// A 4x4 affine (row-major) mapping voxel index `(i, j, k, 1)` to world `(x, y, z, 1)` in mm.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Affine(pub [[f64; 4]; 4]);

impl Affine {
    pub fn identity() -> Self {
        let mut m = [[0.0; 4]; 4];
        for (i, row) in m.iter_mut().enumerate() {
            row[i] = 1.0;
        }
        Affine(m)
    }

    /// Axis-aligned RAS affine: `diag(spacing)` with the given origin.
    pub fn from_spacing_origin(spacing: [f64; 3], origin: [f64; 3]) -> Result<Self> {
        let mut a = Self::identity();
        for i in 0..3 {
            a.0[i][i] = spacing[i];
            a.0[i][3] = origin[i];
        }
        a.validate()?;
        Ok(a)
    }

    /// Build from direction cosines (columns: unit vector of each voxel axis in RAS+ world),
    /// spacing and origin.
    pub fn from_parts(direction: [[f64; 3]; 3], spacing: [f64; 3], origin: [f64; 3]) -> Result<Self> {
        let mut a = Self::identity();
        for r in 0..3 {
            for c in 0..3 {
                a.0[r][c] = direction[r][c] * spacing[c];
            }
            a.0[r][3] = origin[r];
        }
        a.validate()?;
        Ok(a)
    }

    /// Finite, with positive non-zero voxel sizes and an invertible 3x3 part.
    pub fn validate(&self) -> Result<()> {
        if self.0.iter().flatten().any(|v| !v.is_finite()) {
            return Err(IoError::invalid("affine holds non-finite values"));
        }
        let sp = self.spacing();
        if sp.iter().any(|&s| s <= 1e-9) {
            return Err(IoError::invalid(format!("affine gives zero voxel size: spacing {sp:?}")));
        }
        let d = self.det3();
        if d.abs() < 1e-12 * sp.iter().product::<f64>() {
            return Err(IoError::invalid("affine is singular (voxel axes are not independent)"));
        }
        Ok(())
    }

    fn det3(&self) -> f64 {
        let m = &self.0;
        m[0][0] * (m[1][1] * m[2][2] - m[1][2] * m[2][1]) - m[0][1] * (m[1][0] * m[2][2] - m[1][2] * m[2][0])
            + m[0][2] * (m[1][0] * m[2][1] - m[1][1] * m[2][0])
    }

    /// Voxel sizes: Euclidean norms of the first three columns.
    pub fn spacing(&self) -> [f64; 3] {
        let m = &self.0;
        [0, 1, 2].map(|c| (m[0][c] * m[0][c] + m[1][c] * m[1][c] + m[2][c] * m[2][c]).sqrt())
    }

    pub fn origin(&self) -> [f64; 3] {
        [self.0[0][3], self.0[1][3], self.0[2][3]]
    }

    /// Direction cosines: `direction()[row][col]` is world component `row` of voxel axis `col`.
    pub fn direction(&self) -> [[f64; 3]; 3] {
        let sp = self.spacing();
        let mut d = [[0.0; 3]; 3];
        for r in 0..3 {
            for c in 0..3 {
                d[r][c] = self.0[r][c] / sp[c];
            }
        }
        d
    }

    /// World position of a (possibly fractional) voxel index.
    pub fn apply(&self, p: [f64; 3]) -> [f64; 3] {
        let m = &self.0;
        [0, 1, 2].map(|r| m[r][0] * p[0] + m[r][1] * p[1] + m[r][2] * p[2] + m[r][3])
    }

    /// Matrix product `self * other`.
    pub fn mul(&self, other: &Affine) -> Affine {
        let mut out = [[0.0; 4]; 4];
        for (r, row) in out.iter_mut().enumerate() {
            for (c, v) in row.iter_mut().enumerate() {
                *v = (0..4).map(|k| self.0[r][k] * other.0[k][c]).sum();
            }
        }
        Affine(out)
    }

    /// Inverse of the affine (errors when singular).
    pub fn inverse(&self) -> Result<Affine> {
        let m = &self.0;
        let det = self.det3();
        if det.abs() < 1e-300 {
            return Err(IoError::invalid("affine is singular"));
        }
        let inv_det = 1.0 / det;
        let mut r = [[0.0; 4]; 4];
        r[0][0] = (m[1][1] * m[2][2] - m[1][2] * m[2][1]) * inv_det;
        r[0][1] = (m[0][2] * m[2][1] - m[0][1] * m[2][2]) * inv_det;
        r[0][2] = (m[0][1] * m[1][2] - m[0][2] * m[1][1]) * inv_det;
        r[1][0] = (m[1][2] * m[2][0] - m[1][0] * m[2][2]) * inv_det;
        r[1][1] = (m[0][0] * m[2][2] - m[0][2] * m[2][0]) * inv_det;
        r[1][2] = (m[0][2] * m[1][0] - m[0][0] * m[1][2]) * inv_det;
        r[2][0] = (m[1][0] * m[2][1] - m[1][1] * m[2][0]) * inv_det;
        r[2][1] = (m[0][1] * m[2][0] - m[0][0] * m[2][1]) * inv_det;
        r[2][2] = (m[0][0] * m[1][1] - m[0][1] * m[1][0]) * inv_det;
        for i in 0..3 {
            r[i][3] = -(r[i][0] * m[0][3] + r[i][1] * m[1][3] + r[i][2] * m[2][3]);
        }
        r[3][3] = 1.0;
        Ok(Affine(r))
    }

    /// For each voxel axis: the world axis (0 = x, 1 = y, 2 = z) it mostly points along and
    /// the sign (+1 toward R/A/S, -1 toward L/P/I). Uses nibabel's `io_orientation` rule:
    /// greedy assignment by the largest absolute direction cosine.
    pub fn axis_mapping(&self) -> [(usize, i8); 3] {
        let d = self.direction();
        let mut used_world = [false; 3];
        let mut used_vox = [false; 3];
        let mut out = [(0usize, 1i8); 3];
        for _ in 0..3 {
            let mut best = (0.0f64, 0usize, 0usize);
            for (w, used_w) in used_world.iter().enumerate() {
                if *used_w {
                    continue;
                }
                for (v, used_v) in used_vox.iter().enumerate() {
                    if *used_v {
                        continue;
                    }
                    if d[w][v].abs() > best.0 {
                        best = (d[w][v].abs(), w, v);
                    }
                }
            }
            let (_, w, v) = best;
            used_world[w] = true;
            used_vox[v] = true;
            out[v] = (w, if d[w][v] >= 0.0 { 1 } else { -1 });
        }
        out
    }

    /// Orientation code such as "RAS" or "LPS": the direction each voxel axis increases toward.
    pub fn orientation_code(&self) -> String {
        self.axis_mapping().iter().map(|&(w, s)| axis_letter(w, s)).collect()
    }

    /// The qform representation: (quatern_b, c, d), qfac, offset, pixdim. The rotation is the
    /// closest proper rotation to the direction matrix (with qfac = -1 for a left-handed grid).
    pub fn to_quaternion(&self) -> Quaternion {
        let sp = self.spacing();
        let mut r = self.direction();
        let det = r[0][0] * (r[1][1] * r[2][2] - r[1][2] * r[2][1]) - r[0][1] * (r[1][0] * r[2][2] - r[1][2] * r[2][0])
            + r[0][2] * (r[1][0] * r[2][1] - r[1][1] * r[2][0]);
        let qfac = if det < 0.0 { -1.0 } else { 1.0 };
        if qfac < 0.0 {
            for row in r.iter_mut() {
                row[2] = -row[2];
            }
        }
        // Standard rotation-matrix -> quaternion (nifti1_io's mat44_to_quatern).
        let trace = r[0][0] + r[1][1] + r[2][2] + 1.0;
        let (a, b, c, d);
        if trace > 0.5 {
            let aa = 0.5 * trace.sqrt();
            a = aa;
            b = 0.25 * (r[2][1] - r[1][2]) / aa;
            c = 0.25 * (r[0][2] - r[2][0]) / aa;
            d = 0.25 * (r[1][0] - r[0][1]) / aa;
        } else {
            let xd = 1.0 + r[0][0] - (r[1][1] + r[2][2]);
            let yd = 1.0 + r[1][1] - (r[0][0] + r[2][2]);
            let zd = 1.0 + r[2][2] - (r[0][0] + r[1][1]);
            if xd > 1.0 {
                let bb = 0.5 * xd.sqrt();
                b = bb;
                c = 0.25 * (r[0][1] + r[1][0]) / bb;
                d = 0.25 * (r[0][2] + r[2][0]) / bb;
                a = 0.25 * (r[2][1] - r[1][2]) / bb;
            } else if yd > 1.0 {
                let cc = 0.5 * yd.sqrt();
                c = cc;
                b = 0.25 * (r[0][1] + r[1][0]) / cc;
                d = 0.25 * (r[1][2] + r[2][1]) / cc;
                a = 0.25 * (r[0][2] - r[2][0]) / cc;
            } else {
                let dd = 0.5 * zd.sqrt();
                d = dd;
                b = 0.25 * (r[0][2] + r[2][0]) / dd;
                c = 0.25 * (r[1][2] + r[2][1]) / dd;
                a = 0.25 * (r[1][0] - r[0][1]) / dd;
            }
        }
        // Keep a >= 0 (NIfTI stores only b, c, d and derives a).
        let s = if a < 0.0 { -1.0 } else { 1.0 };
        Quaternion { b: b * s, c: c * s, d: d * s, qfac, offset: self.origin(), pixdim: sp }
    }

    /// Rebuild an affine from qform parameters (nifti1_io's quatern_to_mat44).
    pub fn from_quaternion(q: &Quaternion) -> Result<Self> {
        let (b, c, d) = (q.b, q.c, q.d);
        let a2 = 1.0 - (b * b + c * c + d * d);
        let a = if a2 < 1e-7 { 0.0 } else { a2.sqrt() };
        let (b, c, d) = if a2 < 1e-7 {
            let n = (b * b + c * c + d * d).sqrt();
            (b / n, c / n, d / n)
        } else {
            (b, c, d)
        };
        let r = [
            [a * a + b * b - c * c - d * d, 2.0 * (b * c - a * d), 2.0 * (b * d + a * c)],
            [2.0 * (b * c + a * d), a * a + c * c - b * b - d * d, 2.0 * (c * d - a * b)],
            [2.0 * (b * d - a * c), 2.0 * (c * d + a * b), a * a + d * d - c * c - b * b],
        ];
        let mut dir = r;
        if q.qfac < 0.0 {
            for row in dir.iter_mut() {
                row[2] = -row[2];
            }
        }
        Self::from_parts(dir, q.pixdim, q.offset)
    }

    /// Largest absolute element-wise difference from another affine.
    pub fn max_abs_diff(&self, other: &Affine) -> f64 {
        self.0.iter().flatten().zip(other.0.iter().flatten()).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max)
    }

    /// True when the 3x3 part has off-axis (oblique) components beyond `tol`.
    pub fn is_oblique(&self, tol: f64) -> bool {
        let d = self.direction();
        d.iter().flatten().any(|v| v.abs() > tol && (1.0 - v.abs()) > tol)
    }
}

/// NIfTI qform parameters.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Quaternion {
    pub b: f64,
    pub c: f64,
    pub d: f64,
    pub qfac: f64,
    pub offset: [f64; 3],
    pub pixdim: [f64; 3],
}

fn axis_letter(world_axis: usize, sign: i8) -> char {
    match (world_axis, sign > 0) {
        (0, true) => 'R',
        (0, false) => 'L',
        (1, true) => 'A',
        (1, false) => 'P',
        (2, true) => 'S',
        _ => 'I',
    }
}

/// Parse an orientation code like "RAS" or "lps" into (world axis, sign) per voxel axis.
pub fn parse_orientation(code: &str) -> Result<[(usize, i8); 3]> {
    let chars: Vec<char> = code.trim().to_ascii_uppercase().chars().collect();
    if chars.len() != 3 {
        return Err(IoError::invalid(format!("orientation code must have 3 letters, got {code:?}")));
    }
    let mut out = [(0usize, 1i8); 3];
    let mut seen = [false; 3];
    for (i, ch) in chars.iter().enumerate() {
        let (w, s) = match ch {
            'R' => (0, 1),
            'L' => (0, -1),
            'A' => (1, 1),
            'P' => (1, -1),
            'S' => (2, 1),
            'I' => (2, -1),
            _ => return Err(IoError::invalid(format!("orientation code {code:?} has an unknown letter {ch:?}"))),
        };
        if seen[w] {
            return Err(IoError::invalid(format!("orientation code {code:?} names one axis twice")));
        }
        seen[w] = true;
        out[i] = (w, s);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rot(ax: f64, ay: f64, az: f64) -> [[f64; 3]; 3] {
        let (sx, cx) = ax.sin_cos();
        let (sy, cy) = ay.sin_cos();
        let (sz, cz) = az.sin_cos();
        let rx = [[1.0, 0.0, 0.0], [0.0, cx, -sx], [0.0, sx, cx]];
        let ry = [[cy, 0.0, sy], [0.0, 1.0, 0.0], [-sy, 0.0, cy]];
        let rz = [[cz, -sz, 0.0], [sz, cz, 0.0], [0.0, 0.0, 1.0]];
        let m = |a: [[f64; 3]; 3], b: [[f64; 3]; 3]| {
            let mut o = [[0.0; 3]; 3];
            for r in 0..3 {
                for c in 0..3 {
                    o[r][c] = (0..3).map(|k| a[r][k] * b[k][c]).sum();
                }
            }
            o
        };
        m(rz, m(ry, rx))
    }

    #[test]
    fn quaternion_round_trip_for_rotations_and_flips() {
        for (i, angles) in
            [(0.0, 0.0, 0.0), (0.3, -0.2, 1.1), (3.0, 0.1, -2.5), (std::f64::consts::PI, 0.0, 0.0)].iter().enumerate()
        {
            let mut d = rot(angles.0, angles.1, angles.2);
            if i % 2 == 1 {
                for row in d.iter_mut() {
                    row[2] = -row[2];
                }
            }
            let a = Affine::from_parts(d, [0.7, 0.8, 1.5], [-10.0, 20.0, 30.5]).unwrap();
            let q = a.to_quaternion();
            let b = Affine::from_quaternion(&q).unwrap();
            assert!(a.max_abs_diff(&b) < 1e-9, "case {i}: {a:?} vs {b:?}");
        }
    }

    #[test]
    fn orientation_codes() {
        let ras = Affine::from_spacing_origin([1.0, 1.0, 1.0], [0.0; 3]).unwrap();
        assert_eq!(ras.orientation_code(), "RAS");
        let lps =
            Affine::from_parts([[-1.0, 0.0, 0.0], [0.0, -1.0, 0.0], [0.0, 0.0, 1.0]], [1.0; 3], [0.0; 3]).unwrap();
        assert_eq!(lps.orientation_code(), "LPS");
        // Axes permuted: voxel axis 0 runs along world z (toward inferior).
        let p = Affine::from_parts([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [-1.0, 0.0, 0.0]], [1.0; 3], [0.0; 3]).unwrap();
        assert_eq!(p.orientation_code(), "IRA");
        assert_eq!(parse_orientation("ira").unwrap(), p.axis_mapping());
        assert!(parse_orientation("RRS").is_err());
        assert!(parse_orientation("RA").is_err());
    }

    #[test]
    fn inverse_and_singular() {
        let a = Affine::from_parts(rot(0.2, 0.4, 0.6), [0.5, 2.0, 3.0], [1.0, 2.0, 3.0]).unwrap();
        let i = a.inverse().unwrap();
        assert!(a.mul(&i).max_abs_diff(&Affine::identity()) < 1e-12);
        assert!(Affine::from_spacing_origin([1.0, 0.0, 1.0], [0.0; 3]).is_err());
        assert!(Affine::from_spacing_origin([1.0, f64::NAN, 1.0], [0.0; 3]).is_err());
    }
}
