//! Weight files of every architecture ([`load_tensors`]: safetensors, sharded indexes, PyTorch
//! `.bin`, nanoGPT `ckpt.pt`, read by name with shape, dtype and finiteness checks), and GPT-2's
//! weights on top: loading HF safetensors or PyTorch `pytorch_model.bin` (with or without the
//! `transformer.` prefix, Conv1D [in, out] layout, F32/F16/BF16) and the docs/reference.md §4 random-init control, both through the one
//! schema of [`Params::build`], onto a given device.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};

use super::config::Gpt2Config;
use super::gpt2::Gpt2;
use super::params::Params;
use candle_core::pickle::PthTensors;

use crate::util::tensor_file::TensorFile;
use crate::{bad, bail_bad};

/// Which weights a measurement uses (docs/reference.md §4 controls).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WeightsKind {
    /// The checkpoint's weights.
    Pretrained,
    /// The same architecture re-initialized as HF GPT-2 does, from the seed.
    RandomInit,
}

impl WeightsKind {
    pub fn as_str(self) -> &'static str {
        match self {
            WeightsKind::Pretrained => "pretrained",
            WeightsKind::RandomInit => "random-init",
        }
    }
    /// From its name (`pretrained`, `random-init`).
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "pretrained" => Ok(Self::Pretrained),
            "random-init" => Ok(Self::RandomInit),
            _ => bail_bad!("unknown weights \"{s}\" (expected pretrained or random-init)"),
        }
    }
}

impl std::fmt::Display for WeightsKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The weights files of a checkpoint directory, in the order they are read and hashed:
/// `model.safetensors` or the shards of `model.safetensors.index.json`; without safetensors,
/// PyTorch's `pytorch_model.bin` or the shards of `pytorch_model.bin.index.json`.
pub fn weights_files(dir: &Path) -> Result<Vec<PathBuf>> {
    for (single, index) in
        [("model.safetensors", "model.safetensors.index.json"), ("pytorch_model.bin", "pytorch_model.bin.index.json")]
    {
        if dir.join(single).is_file() {
            return Ok(vec![dir.join(single)]);
        }
        if dir.join(index).is_file() {
            return index_files(&dir.join(index));
        }
    }
    if super::nanogpt::is_nanogpt(dir) {
        return Ok(vec![dir.join(super::nanogpt::CKPT)]);
    }
    bail_bad!(
        "{}: no weights in this directory (model.safetensors, model.safetensors.index.json, pytorch_model.bin or \
         pytorch_model.bin.index.json)",
        dir.display()
    )
}

/// The shard files a `*.index.json` names in its `weight_map`, each a plain file name in its folder.
pub fn index_files(index: &Path) -> Result<Vec<PathBuf>> {
    let dir = index.parent().unwrap_or(Path::new("."));
    let text = std::fs::read_to_string(index)?;
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| bad!("{}: invalid JSON: {e}", index.display()))?;
    let map = v
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| bad!("{}: no weight_map object", index.display()))?;
    let mut files: Vec<String> = map.values().filter_map(|f| f.as_str().map(String::from)).collect();
    files.sort();
    files.dedup();
    for f in &files {
        // A shard must be a plain file name in this folder: no absolute path, no `..`.
        let p = Path::new(f);
        let plain =
            p.components().count() == 1 && matches!(p.components().next(), Some(std::path::Component::Normal(_)));
        if !plain {
            bail_bad!("{}: weight_map names {f:?}, which is not a file in the model folder", index.display());
        }
    }
    Ok(files.into_iter().map(|f| dir.join(f)).collect())
}

/// Open weights files: safetensors headers (tensors read one at a time later), or PyTorch zip
/// archives through candle's pickle reader, which parses the pickle without executing it.
enum WeightsReader {
    Safetensors(Vec<TensorFile>),
    Pytorch(Vec<(PathBuf, PthTensors)>),
}

/// One stored tensor: (file index, its name in the file, shape, dtype name).
type Entry = (usize, String, Vec<usize>, String);

impl WeightsReader {
    fn open(files: &[PathBuf]) -> Result<Self> {
        let is_bin = files.first().is_some_and(|f| f.extension().is_some_and(|e| e == "bin" || e == "pt"));
        if !is_bin {
            return Ok(Self::Safetensors(files.iter().map(|f| TensorFile::open(f)).collect::<Result<_>>()?));
        }
        let open = |f: &PathBuf| -> Result<(PathBuf, PthTensors)> {
            super::torch_zip::check_torch_zip(f)?;
            let not_readable = |e: String| {
                bad!(
                    "{}: not a readable PyTorch checkpoint (a zip archive holding a pickled state dict, as \
                     torch.save writes since PyTorch 1.6): {e}",
                    f.display()
                )
            };
            // candle's pickle reader panics on some crafted pickles and recurses once per nesting
            // level: read on a thread with a large stack (reserved, touched only as used) and
            // turn a panic into an error naming the file.
            let path = f.clone();
            let read = std::thread::Builder::new()
                .stack_size(super::torch_zip::PICKLE_STACK)
                .spawn(move || {
                    // nanoGPT's ckpt.pt holds the state dict under "model".
                    let key = path.extension().is_some_and(|e| e == "pt").then_some("model");
                    std::panic::catch_unwind(|| PthTensors::new(&path, key).map_err(|e| e.to_string()))
                })?
                .join();
            let t = match read {
                Ok(Ok(Ok(t))) => t,
                Ok(Ok(Err(e))) => return Err(not_readable(e)),
                _ => return Err(not_readable("its pickle is malformed (the reader gave up on it)".into())),
            };
            Ok((f.clone(), t))
        };
        Ok(Self::Pytorch(files.iter().map(open).collect::<Result<_>>()?))
    }

    fn path(&self, i: usize) -> &Path {
        match self {
            Self::Safetensors(f) => &f[i].path,
            Self::Pytorch(f) => &f[i].0,
        }
    }

    fn entries(&self) -> Vec<Entry> {
        match self {
            Self::Safetensors(files) => files
                .iter()
                .enumerate()
                .flat_map(|(i, f)| f.entries.iter().map(move |(k, e)| (i, k.clone(), e.shape.clone(), e.dtype.clone())))
                .collect(),
            Self::Pytorch(files) => files
                .iter()
                .enumerate()
                .flat_map(|(i, (_, t))| {
                    t.tensor_infos().iter().map(move |(k, info)| {
                        let dtype = match info.dtype {
                            DType::F32 => "F32".to_string(),
                            DType::F16 => "F16".to_string(),
                            DType::BF16 => "BF16".to_string(),
                            DType::F64 => "F64".to_string(),
                            other => format!("{other:?}"),
                        };
                        (i, k.clone(), info.layout.dims().to_vec(), dtype)
                    })
                })
                .collect(),
        }
    }

    /// Tensor `key` of file `i` with the (checked) dtype and shape, on `device`.
    fn read(&self, i: usize, key: &str, dtype: DType, shape: &[usize], device: &Device) -> Result<Tensor> {
        match self {
            Self::Safetensors(f) => Ok(Tensor::from_raw_buffer(&f[i].read(key)?, dtype, shape, device)?),
            Self::Pytorch(f) => {
                let (path, t) = &f[i];
                let got = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| t.get(key)))
                    .map_err(|_| bad!("{}: tensor {key} is malformed (the reader gave up on it)", path.display()))?;
                let tensor = got
                    .map_err(|e| bad!("{}: cannot read tensor {key}: {e}", path.display()))?
                    .ok_or_else(|| bad!("{}: tensor {key} is missing", path.display()))?;
                // A stored view may be strided (a transposed `wte`): make it contiguous.
                Ok(tensor.contiguous()?.to_device(device)?)
            }
        }
    }
}

/// Load the checkpoint in `dir` with the given (already validated) config onto `device`, from
/// safetensors or PyTorch `.bin` files ([`weights_files`]): the same names (with or without the
/// `transformer.` prefix), dtypes and checks for both.
pub fn load_pretrained(dir: &Path, cfg: &Gpt2Config, device: &Device) -> Result<Gpt2> {
    let what = format!("n_layer {}", cfg.n_layer);
    let params =
        load_tensors(dir, device, "transformer.", |take| Params::build(cfg, take), |n| is_known_buffer(n, cfg), &what)?;
    Ok(Gpt2::new(cfg.clone(), params))
}

/// The parameters of the checkpoint in `dir`, read by name: `build` asks for every tensor by its
/// name (the HF name without `prefix`) and shape, and gets it as f32 on `device`, after checks
/// (shape, a float dtype, finite values, no name stored twice); a stored tensor `build` did not
/// ask for must be one `known` accepts (a buffer), else it is a parameter of another config
/// (`what` describes the config in that message).
pub fn load_tensors<P>(
    dir: &Path,
    device: &Device,
    prefix: &str,
    build: impl FnOnce(&mut dyn FnMut(&str, &[usize]) -> Result<Tensor>) -> Result<P>,
    known: impl Fn(&str) -> bool,
    what: &str,
) -> Result<P> {
    // Headers first; each tensor's bytes are read when the schema asks for it, so memory holds
    // the converted tensors plus one file tensor at a time (not a copy of every file).
    let files = weights_files(dir)?;
    let reader = WeightsReader::open(&files)?;
    let mut tensors: HashMap<String, Entry> = HashMap::new();
    let nanogpt = files.first().is_some_and(|f| f.extension().is_some_and(|e| e == "pt"));
    for e in reader.entries() {
        // torch.compile'd nanoGPT models prefix every name with `_orig_mod.`.
        let bare = if nanogpt { e.1.strip_prefix("_orig_mod.").unwrap_or(&e.1) } else { &e.1 };
        let name = bare.strip_prefix(prefix).unwrap_or(bare).to_string();
        // Two tensors for one parameter (`wte.weight` and `transformer.wte.weight`, or one name in
        // two shards): which one a reader takes is arbitrary, so neither is taken.
        if let Some(first) = tensors.get(&name) {
            let (a, b) = (reader.path(first.0).display(), reader.path(e.0).display());
            let (ka, kb) = (&first.1, &e.1);
            bail_bad!(
                "parameter {name} is stored twice: as {ka} in {a} and as {kb} in {b}; refusing a checkpoint whose \
                 weights are ambiguous"
            );
        }
        tensors.insert(name, e);
    }
    let described = if files.len() == 1 { files[0].display().to_string() } else { format!("{}", dir.display()) };
    let mut take = |name: &str, shape: &[usize]| -> Result<Tensor> {
        let (i, key, stored_shape, dtype) =
            tensors.remove(name).ok_or_else(|| bad!("{described}: tensor {name} is missing"))?;
        let file = reader.path(i).display();
        // nanoGPT stores nn.Linear weights [out, in]; the schema's are Conv1D [in, out].
        let linear = nanogpt && shape.len() == 2 && name.starts_with("h.") && name.ends_with(".weight");
        let want: Vec<usize> = if linear { shape.iter().rev().copied().collect() } else { shape.to_vec() };
        if stored_shape != want {
            bail_bad!("{file}: tensor {name} has shape {stored_shape:?}, expected {want:?}");
        }
        let dtype = match dtype.as_str() {
            "F32" => DType::F32,
            "F16" => DType::F16,
            "BF16" => DType::BF16,
            "F64" => DType::F64,
            other => bail_bad!("{file}: tensor {name} has dtype {other}; expected a float type"),
        };
        let t = reader.read(i, &key, dtype, &want, device)?.to_dtype(DType::F32)?;
        let t = if linear { t.t()?.contiguous()? } else { t };
        check_finite(&t).map_err(|e| bad!("{file}: tensor {name} {e}"))?;
        Ok(t)
    };
    let params = build(&mut take)?;
    // What the schema did not take must be a known buffer, not a parameter of a bigger model.
    let mut extra: Vec<(&String, &Path)> =
        tensors.iter().filter(|(n, _)| !known(n)).map(|(n, e)| (n, reader.path(e.0))).collect();
    extra.sort();
    if let Some((name, file)) = extra.first() {
        bail_bad!(
            "{}: tensor {name} is not a parameter of this config ({what}){}; is config.json the checkpoint's?",
            file.display(),
            if extra.len() > 1 { format!(", and {} more", extra.len() - 1) } else { String::new() }
        );
    }
    Ok(params)
}

/// Tensors HF GPT-2 checkpoints carry beside the parameters: the causal-mask buffers
/// `h.{l}.attn.bias` / `h.{l}.attn.masked_bias` of older files, and `lm_head.weight` when the
/// config ties it to `wte` (transformers then uses `wte` too, whatever the file holds).
fn is_known_buffer(name: &str, cfg: &Gpt2Config) -> bool {
    if name == "lm_head.weight" && cfg.tie_word_embeddings {
        return true;
    }
    let Some(rest) = name.strip_prefix("h.") else { return false };
    let Some((layer, tail)) = rest.split_once('.') else { return false };
    layer.parse::<usize>().is_ok_and(|l| l < cfg.n_layer) && matches!(tail, "attn.bias" | "attn.masked_bias")
}

/// Ok when every value is finite; else the first bad value and its flat index. (One reduction,
/// on whatever device the tensor is.)
pub fn check_finite(t: &Tensor) -> Result<()> {
    // t·0 is 0 for finite entries and NaN for ±Inf and NaN (IEEE 754), so the sum is finite
    // exactly when every entry is.
    let probe = (t * 0.0)?.sum_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?;
    if probe.is_finite() {
        return Ok(());
    }
    let v = t.flatten_all()?.to_dtype(DType::F64)?.to_vec1::<f64>()?;
    let (i, x) = v.iter().enumerate().find(|(_, x)| !x.is_finite()).map(|(i, x)| (i, *x)).unwrap_or((0, f64::NAN));
    bail_bad!("has a non-finite value ({x} at flat index {i}); refusing weights that would make every result NaN")
}

/// The random-init control of docs/reference.md §4: weights and embeddings N(0, initializer_range), both
/// c_proj weights N(0, initializer_range/√(2·n_layer)), biases 0, LayerNorm 1/0. Tensors are
/// drawn in the schema's order from a ChaCha8 stream keyed by `seed`, so the same seed gives the
/// same model on every device.
pub fn random_init(cfg: &Gpt2Config, seed: u64, device: &Device) -> Result<Gpt2> {
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&seed.to_le_bytes());
    key[24..].copy_from_slice(b"agopinit");
    let mut rng = ChaCha8Rng::from_seed(key);
    let std = cfg.initializer_range;
    let proj_std = std / (2.0 * cfg.n_layer as f64).sqrt();
    let take = |name: &str, shape: &[usize]| -> Result<Tensor> {
        let n: usize = shape.iter().product();
        let t = if name.ends_with(".bias") {
            Tensor::zeros(shape, DType::F32, device)?
        } else if name.contains("ln_") {
            Tensor::ones(shape, DType::F32, device)?
        } else {
            let s = if name.ends_with("c_proj.weight") { proj_std } else { std };
            let normal = Normal::new(0.0f32, s as f32).context("initializer_range")?;
            let data: Vec<f32> = (0..n).map(|_| normal.sample(&mut rng)).collect();
            Tensor::from_vec(data, shape, device)?
        };
        Ok(t)
    };
    Ok(Gpt2::new(cfg.clone(), Params::build(cfg, take)?))
}

/// Load `pretrained` GPT-2 weights from `dir`, or build the `random-init` control from `seed`.
pub fn load_gpt2(dir: &Path, cfg: &Gpt2Config, weights: WeightsKind, seed: u64, device: &Device) -> Result<Gpt2> {
    match weights {
        WeightsKind::Pretrained => load_pretrained(dir, cfg, device),
        WeightsKind::RandomInit => random_init(cfg, seed, device),
    }
}
