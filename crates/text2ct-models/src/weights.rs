//! Weight files: PyTorch checkpoints (`.pt`, `.pth`, `.bin`) and `.safetensors`, read into a flat
//! map of f32 tensors keyed by PyTorch's dotted names.
//!
//! A `.pt` may hold the state dict itself, or nest it in a dictionary (`{"state_dict": {...}}`,
//! `{"model": {...}}`), possibly with a key prefix such as `module.` (DataParallel). The reader
//! flattens nested dictionaries into dotted names; [`StateDict::select_by_anchor`] then finds the
//! prefix in front of a key the model is known to have and keeps only the tensors under it.
//! Floating-point tensors of any width (f16, bf16, f32, f64) become f32; integer and bool
//! tensors are converted too.

use std::collections::BTreeMap;
use std::path::Path;

use crate::error::{ModelError, Result};

/// One tensor of a state dict: shape (outermost first) and row-major f32 values.
#[derive(Clone, Debug, PartialEq)]
pub struct RawTensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl RawTensor {
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Self {
        debug_assert_eq!(shape.iter().product::<usize>(), data.len());
        RawTensor { shape, data }
    }
    pub fn numel(&self) -> usize {
        self.data.len()
    }
}

/// A flat state dict: dotted PyTorch names to f32 tensors (sorted by name).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StateDict {
    pub tensors: BTreeMap<String, RawTensor>,
}

/// Largest weight file we read (the MAISI VAE is 84 MB, the Text2CT U-Net ~870 MB).
pub const MAX_WEIGHT_FILE_BYTES: u64 = 16 << 30;

impl StateDict {
    pub fn len(&self) -> usize {
        self.tensors.len()
    }
    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }
    pub fn num_params(&self) -> usize {
        self.tensors.values().map(RawTensor::numel).sum()
    }

    /// Read a `.safetensors` file (by extension) or a PyTorch checkpoint (anything else).
    pub fn read(path: &Path) -> Result<Self> {
        Self::read_filtered(path, &|_| true)
    }

    /// [`StateDict::read`] keeping only the tensors whose full name passes `keep`; the others are
    /// never converted (a PyTorch checkpoint's skipped tensors are not even read), so loading part
    /// of a large checkpoint (e.g. the text half of the 3 GB CLIP3D) is cheap.
    pub fn read_filtered(path: &Path, keep: &dyn Fn(&str) -> bool) -> Result<Self> {
        let meta = std::fs::metadata(path).map_err(|e| ModelError::io(path, e))?;
        if meta.len() > MAX_WEIGHT_FILE_BYTES {
            return Err(ModelError::weights(path, format!("file is {} bytes, above the limit", meta.len())));
        }
        let is_st = path.extension().and_then(|e| e.to_str()).map(|e| e.eq_ignore_ascii_case("safetensors"));
        if is_st == Some(true) {
            Self::read_safetensors_filtered(path, keep)
        } else {
            Self::read_pytorch_filtered(path, keep)
        }
    }

    /// Read a PyTorch checkpoint (zip format of `torch.save` >= 1.6, or the legacy format).
    pub fn read_pytorch(path: &Path) -> Result<Self> {
        Self::read_pytorch_filtered(path, &|_| true)
    }

    fn read_pytorch_filtered(path: &Path, keep: &dyn Fn(&str) -> bool) -> Result<Self> {
        let reader = pytorch_reader::PytorchReader::new(path)
            .map_err(|e| ModelError::weights(path, format!("not a readable PyTorch checkpoint: {e}")))?;
        let mut tensors = BTreeMap::new();
        let mut any = false;
        for (name, t) in reader.into_tensors() {
            any = true;
            if !keep(&name) {
                continue;
            }
            let shape = t.shape().to_vec();
            let numel = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
            let Some(numel) = numel else {
                return Err(ModelError::weights(path, format!("tensor {name}: shape {shape:?} overflows")));
            };
            let bytes = t.read().map_err(|e| ModelError::weights(path, format!("tensor {name}: {e}")))?;
            let data = convert_pt(t.dtype(), &bytes, numel)
                .map_err(|m| ModelError::weights(path, format!("tensor {name}: {m}")))?;
            tensors.insert(name, RawTensor::new(shape, data));
        }
        if !any {
            return Err(ModelError::weights(path, "the checkpoint holds no tensors"));
        }
        Ok(StateDict { tensors })
    }

    /// Read a `.safetensors` file.
    pub fn read_safetensors(path: &Path) -> Result<Self> {
        Self::read_safetensors_filtered(path, &|_| true)
    }

    fn read_safetensors_filtered(path: &Path, keep: &dyn Fn(&str) -> bool) -> Result<Self> {
        let buf = std::fs::read(path).map_err(|e| ModelError::io(path, e))?;
        let st = safetensors::SafeTensors::deserialize(&buf)
            .map_err(|e| ModelError::weights(path, format!("not a valid safetensors file: {e}")))?;
        let mut tensors = BTreeMap::new();
        let mut any = false;
        for (name, view) in st.tensors() {
            any = true;
            if !keep(&name) {
                continue;
            }
            let shape = view.shape().to_vec();
            let numel: usize = shape.iter().product();
            let data = convert_st(view.dtype(), view.data(), numel)
                .map_err(|m| ModelError::weights(path, format!("tensor {name}: {m}")))?;
            tensors.insert(name, RawTensor::new(shape, data));
        }
        if !any {
            return Err(ModelError::weights(path, "the file holds no tensors"));
        }
        Ok(StateDict { tensors })
    }

    /// Write all tensors as f32 `.safetensors` (atomically: a sibling temporary file, then rename).
    pub fn write_safetensors(&self, path: &Path, metadata: Option<BTreeMap<String, String>>) -> Result<()> {
        let bytes: Vec<(String, Vec<u8>, Vec<usize>)> = self
            .tensors
            .iter()
            .map(|(k, t)| (k.clone(), t.data.iter().flat_map(|v| v.to_le_bytes()).collect(), t.shape.clone()))
            .collect();
        let views = bytes
            .iter()
            .map(|(k, b, s)| {
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b)
                    .map(|v| (k.clone(), v))
                    .map_err(|e| ModelError::weights(path, format!("tensor {k}: {e}")))
            })
            .collect::<Result<Vec<_>>>()?;
        let info = metadata.map(|m| m.into_iter().collect());
        let out = safetensors::serialize(views, info).map_err(|e| ModelError::weights(path, e.to_string()))?;
        atomic_write(path, &out)
    }

    /// Remove the position-ids buffer `key` (`[1, n]`, always `arange(n)` in transformers' BERT and
    /// CLIP text models, which from transformers 4.31 on no longer save it) and check it: absent
    /// is fine, present it must be `[1, n]` holding `0, 1, ..., n-1`. `Err` says what is wrong.
    pub fn take_position_ids(&mut self, key: &str, n: usize) -> std::result::Result<(), String> {
        let Some(t) = self.tensors.remove(key) else {
            return Ok(());
        };
        if t.shape != [1, n] {
            return Err(format!("{key}: file has {:?}, model needs [1, {n}]", t.shape));
        }
        match t.data.iter().enumerate().find(|(i, &v)| v != *i as f32) {
            None => Ok(()),
            Some((i, v)) => Err(format!(
                "{key} is not 0, 1, ..., {} ({key}[0, {i}] = {v}); this port uses absolute positions",
                n - 1
            )),
        }
    }

    /// Keep only the tensors under the prefix that precedes `anchor` (a key the model certainly
    /// has, e.g. `encoder.blocks.0.conv.conv.weight`), with that prefix removed. With the anchor
    /// present as is, the state dict is returned unchanged. Errors if the anchor is absent or
    /// found under several prefixes.
    pub fn select_by_anchor(self, anchor: &str, path: &Path) -> Result<Self> {
        if self.tensors.contains_key(anchor) {
            return Ok(self);
        }
        let dotted = format!(".{anchor}");
        let prefixes: Vec<String> = self
            .tensors
            .keys()
            .filter(|k| k.ends_with(&dotted))
            .map(|k| k[..k.len() - anchor.len()].to_string())
            .collect();
        match prefixes.len() {
            0 => {
                let some: Vec<&String> = self.tensors.keys().take(5).collect();
                Err(ModelError::weights(
                    path,
                    format!(
                        "no tensor named `{anchor}` (or `<prefix>.{anchor}`): not the expected model? \
                         The file has {} tensors, e.g. {some:?}",
                        self.tensors.len()
                    ),
                ))
            }
            1 => {
                let p = &prefixes[0];
                let tensors = self
                    .tensors
                    .into_iter()
                    .filter_map(|(k, v)| k.strip_prefix(p.as_str()).map(|s| (s.to_string(), v)));
                Ok(StateDict { tensors: tensors.collect() })
            }
            _ => Err(ModelError::weights(
                path,
                format!("`{anchor}` appears under several prefixes {prefixes:?}; cannot tell which model to load"),
            )),
        }
    }
}

fn chunks<const N: usize>(
    bytes: &[u8],
    numel: usize,
) -> std::result::Result<impl Iterator<Item = [u8; N]> + '_, String> {
    if bytes.len() != numel * N {
        return Err(format!("holds {} bytes, its shape needs {}", bytes.len(), numel * N));
    }
    Ok(bytes.chunks_exact(N).map(|c| c.try_into().expect("exact chunk")))
}

/// pytorch-reader returns native-endian bytes.
fn convert_pt(dtype: pytorch_reader::DType, b: &[u8], n: usize) -> std::result::Result<Vec<f32>, String> {
    use pytorch_reader::DType as D;
    Ok(match dtype {
        D::F32 => chunks::<4>(b, n)?.map(f32::from_ne_bytes).collect(),
        D::F64 => chunks::<8>(b, n)?.map(|c| f64::from_ne_bytes(c) as f32).collect(),
        D::F16 => chunks::<2>(b, n)?.map(|c| half::f16::from_ne_bytes(c).to_f32()).collect(),
        D::BF16 => chunks::<2>(b, n)?.map(|c| half::bf16::from_ne_bytes(c).to_f32()).collect(),
        D::I64 => chunks::<8>(b, n)?.map(|c| i64::from_ne_bytes(c) as f32).collect(),
        D::I32 => chunks::<4>(b, n)?.map(|c| i32::from_ne_bytes(c) as f32).collect(),
        D::I16 => chunks::<2>(b, n)?.map(|c| i16::from_ne_bytes(c) as f32).collect(),
        D::U64 => chunks::<8>(b, n)?.map(|c| u64::from_ne_bytes(c) as f32).collect(),
        D::U32 => chunks::<4>(b, n)?.map(|c| u32::from_ne_bytes(c) as f32).collect(),
        D::U16 => chunks::<2>(b, n)?.map(|c| u16::from_ne_bytes(c) as f32).collect(),
        D::I8 => chunks::<1>(b, n)?.map(|c| c[0] as i8 as f32).collect(),
        D::U8 | D::Bool => chunks::<1>(b, n)?.map(|c| c[0] as f32).collect(),
    })
}

/// safetensors stores little-endian bytes.
fn convert_st(dtype: safetensors::Dtype, b: &[u8], n: usize) -> std::result::Result<Vec<f32>, String> {
    use safetensors::Dtype as D;
    Ok(match dtype {
        D::F32 => chunks::<4>(b, n)?.map(f32::from_le_bytes).collect(),
        D::F64 => chunks::<8>(b, n)?.map(|c| f64::from_le_bytes(c) as f32).collect(),
        D::F16 => chunks::<2>(b, n)?.map(|c| half::f16::from_le_bytes(c).to_f32()).collect(),
        D::BF16 => chunks::<2>(b, n)?.map(|c| half::bf16::from_le_bytes(c).to_f32()).collect(),
        D::I64 => chunks::<8>(b, n)?.map(|c| i64::from_le_bytes(c) as f32).collect(),
        D::I32 => chunks::<4>(b, n)?.map(|c| i32::from_le_bytes(c) as f32).collect(),
        D::I16 => chunks::<2>(b, n)?.map(|c| i16::from_le_bytes(c) as f32).collect(),
        D::I8 => chunks::<1>(b, n)?.map(|c| c[0] as i8 as f32).collect(),
        D::U8 | D::BOOL => chunks::<1>(b, n)?.map(|c| c[0] as f32).collect(),
        other => return Err(format!("unsupported dtype {other:?}")),
    })
}

/// Write bytes to `path` through a sibling temporary file and a rename.
pub(crate) fn atomic_write(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes).map_err(|e| ModelError::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        ModelError::io(path, e)
    })
}

/// A numeric scalar stored in a PyTorch checkpoint's top-level dictionary as a plain Python
/// `int`/`float` (a tensor scalar is read with the tensors instead), e.g. the `scale_factor` of
/// MAISI / Text2CT U-Net checkpoints. `None` if the file is not a readable pickle, has no such
/// key, or holds something else there.
pub fn pytorch_scalar(path: &Path, key: &str) -> Option<f64> {
    use pytorch_reader::PickleValue;
    match pytorch_reader::PytorchReader::read_pickle_data(path, Some(key)).ok()? {
        PickleValue::Float(f) => Some(f),
        PickleValue::Int(i) => Some(i as f64),
        _ => None,
    }
}
