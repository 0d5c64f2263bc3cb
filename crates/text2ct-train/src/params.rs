//! Parameter bookkeeping that makes a restarted run identical to an uninterrupted one.
//!
//! burn's optimizer state is keyed by [`ParamId`], and a freshly built module gets fresh random
//! ids. [`assign_ids`] gives every float parameter a deterministic id (`base + visit index`), so
//! the ids of a module rebuilt from saved weights match those in a saved optimizer record.
//! [`export`] / [`import`] read and replace all float parameters in visit order (used for the
//! discriminator, which has no MONAI names).

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::tensor::{Tensor, TensorData};

use crate::error::{Result, TrainError};

struct IdMapper {
    next: u64,
}

impl ModuleMapper for IdMapper {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let (_, value, mapper) = param.consume();
        let id = ParamId::from(self.next);
        self.next += 1;
        Param::from_mapped_value(id, value, mapper)
    }
}

/// Give every float parameter the id `base + i` (i = visit order). Use distinct bases for
/// distinct modules that share an optimizer-record namespace.
pub fn assign_ids<M: Module>(module: M, base: u64) -> M {
    module.map(&mut IdMapper { next: base })
}

struct Collect {
    out: Vec<(Vec<usize>, Vec<f32>)>,
    err: Option<String>,
}

impl ModuleVisitor for Collect {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let t = param.val();
        let shape = t.dims().to_vec();
        match t.into_data().convert::<f32>().try_into_vec::<f32>() {
            Ok(v) => self.out.push((shape, v)),
            Err(e) => self.err = Some(format!("{e:?}")),
        }
    }
}

/// All float parameters in visit order: `(shape, values)`.
pub fn export<M: Module>(module: &M) -> Result<Vec<(Vec<usize>, Vec<f32>)>> {
    let mut c = Collect { out: Vec::new(), err: None };
    module.visit(&mut c);
    match c.err {
        Some(e) => Err(TrainError::Train(format!("reading parameters: {e}"))),
        None => Ok(c.out),
    }
}

struct Replace {
    values: std::vec::IntoIter<(Vec<usize>, Vec<f32>)>,
    err: Option<String>,
    index: usize,
}

impl ModuleMapper for Replace {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let (id, value, mapper) = param.consume();
        let i = self.index;
        self.index += 1;
        let Some((shape, data)) = self.values.next() else {
            self.err.get_or_insert(format!("too few tensors (the module has more than {i})"));
            return Param::from_mapped_value(id, value, mapper);
        };
        if shape != value.dims().to_vec() {
            self.err.get_or_insert(format!("tensor {i}: saved shape {shape:?}, module {:?}", value.dims()));
            return Param::from_mapped_value(id, value, mapper);
        }
        let device = value.device();
        let requires_grad = value.is_require_grad();
        let mut t = Tensor::<D>::from_data(TensorData::new(data, shape), &device);
        if requires_grad {
            t = t.require_grad();
        }
        Param::from_mapped_value(id, t, mapper)
    }
}

/// Replace all float parameters (visit order) by `values`; ids are kept. Errors on a count or
/// shape mismatch.
pub fn import<M: Module>(module: M, values: Vec<(Vec<usize>, Vec<f32>)>) -> Result<M> {
    let n = values.len();
    let mut r = Replace { values: values.into_iter(), err: None, index: 0 };
    let m = module.map(&mut r);
    if let Some(e) = r.err {
        return Err(TrainError::Train(format!("loading parameters: {e}")));
    }
    if r.index != n {
        return Err(TrainError::Train(format!("loading parameters: {n} saved tensors, the module has {}", r.index)));
    }
    Ok(m)
}

/// Write `export(module)` as f32 safetensors with keys `p0000`, `p0001`, ….
pub fn save_safetensors<M: Module>(module: &M, path: &std::path::Path) -> Result<()> {
    let mut sd = text2ct_models::StateDict::default();
    for (i, (shape, data)) in export(module)?.into_iter().enumerate() {
        sd.tensors.insert(format!("p{i:04}"), text2ct_models::RawTensor::new(shape, data));
    }
    sd.write_safetensors(path, None)?;
    Ok(())
}

/// Load what [`save_safetensors`] wrote.
pub fn load_safetensors<M: Module>(module: M, path: &std::path::Path) -> Result<M> {
    let sd = text2ct_models::StateDict::read_safetensors(path)?;
    // BTreeMap order of zero-padded keys is the visit order.
    let values = sd.tensors.into_values().map(|t| (t.shape, t.data)).collect();
    import(module, values)
}
