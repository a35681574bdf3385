//! nanoGPT checkpoints: a folder holding `ckpt.pt` as karpathy/nanoGPT's `train.py` saves it,
//! `torch.save({"model": state_dict, "model_args": {...}, "optimizer": ..., ...})`. The state
//! dict's names carry `transformer.` (and `_orig_mod.` when the model was `torch.compile`d),
//! its linear weights are nn.Linear's [out, in] (GPT-2's Conv1D is [in, out]), and `lm_head.weight`
//! is tied to `transformer.wte.weight`. The optimizer state is not read.
//!
//! `model_args` gives the config: n_layer, n_head, n_embd, block_size (n_positions), vocab_size
//! (nanoGPT pads GPT-2's to 50304) and bias, which must be true (GPT-2 has biases). nanoGPT's MLP
//! uses `nn.GELU()`, the exact erf form, and LayerNorm ε = 1e-5.

use std::path::Path;

use anyhow::Result;
use candle_core::pickle::{Object, Stack};

use super::config::Gpt2Config;
use crate::{bad, bail_bad};

/// The checkpoint file of a nanoGPT folder.
pub const CKPT: &str = "ckpt.pt";

/// Is `dir` a nanoGPT folder (a `ckpt.pt` and no `config.json`)?
pub fn is_nanogpt(dir: &Path) -> bool {
    dir.join(CKPT).is_file() && !dir.join("config.json").is_file()
}

/// The config of a nanoGPT checkpoint, from its `model_args`.
pub fn config(path: &Path) -> Result<Gpt2Config> {
    super::torch_zip::check_torch_zip(path)?;
    let p = path.to_path_buf();
    // The same guards as the weights reader: a large stack and no panic escaping.
    let top = std::thread::Builder::new()
        .stack_size(super::torch_zip::PICKLE_STACK)
        .spawn(move || std::panic::catch_unwind(|| read_pickle(&p)))?
        .join();
    let top = match top {
        Ok(Ok(r)) => r?,
        _ => bail_bad!("{}: its pickle is malformed (the reader gave up on it)", path.display()),
    };
    let name = path.display();
    let Object::Dict(items) = top else { bail_bad!("{name}: not a nanoGPT checkpoint (the pickle is not a dict)") };
    let args = items
        .iter()
        .find(|(k, _)| *k == Object::Unicode("model_args".into()))
        .map(|(_, v)| v)
        .ok_or_else(|| bad!("{name}: no model_args (not a nanoGPT checkpoint?)"))?;
    let Object::Dict(args) = args else { bail_bad!("{name}: model_args is not a dict") };
    let get = |key: &str| args.iter().find(|(k, _)| *k == Object::Unicode(key.into())).map(|(_, v)| v);
    let int = |key: &str| -> Result<usize> {
        match get(key) {
            Some(Object::Int(i)) if *i > 0 => Ok(*i as usize),
            Some(Object::Long(i)) if *i > 0 => Ok(*i as usize),
            Some(other) => bail_bad!("{name}: model_args {key} is {other:?}, expected a positive integer"),
            None => bail_bad!("{name}: model_args has no {key}"),
        }
    };
    match get("bias") {
        Some(Object::Bool(true)) | None => {}
        Some(other) => bail_bad!(
            "{name}: model_args bias is {other:?}; agop's GPT-2 has biases in every linear layer and LayerNorm \
             (nanoGPT with bias = False is another architecture)"
        ),
    }
    let vocab_size = int("vocab_size")?;
    let cfg = Gpt2Config {
        model_type: Some("gpt2".into()),
        n_layer: int("n_layer")?,
        n_head: int("n_head")?,
        n_embd: int("n_embd")?,
        n_positions: int("block_size")?,
        vocab_size,
        n_inner: None,
        layer_norm_epsilon: 1e-5,
        activation_function: "gelu".into(),
        scale_attn_weights: true,
        scale_attn_by_inverse_layer_idx: false,
        initializer_range: 0.02,
        eos_token_id: (vocab_size > 50256).then_some(50256),
        tie_word_embeddings: true,
    };
    cfg.validate().map_err(|e| e.context(format!("model_args of {name}")))?;
    Ok(cfg)
}

/// The top-level object of the archive's `data.pkl`.
fn read_pickle(path: &Path) -> Result<Object> {
    let file = std::fs::File::open(path)?;
    let mut zip = zip::ZipArchive::new(std::io::BufReader::new(file))?;
    let name = (0..zip.len())
        .filter_map(|i| zip.by_index_raw(i).ok().and_then(|f| f.name().ok().map(|n| n.to_string())))
        .find(|n| n.ends_with("data.pkl"))
        .ok_or_else(|| bad!("{}: no data.pkl", path.display()))?;
    let mut reader = std::io::BufReader::new(zip.by_name(&name)?);
    let mut stack = Stack::empty();
    stack.read_loop(&mut reader).map_err(|e| bad!("{}: unreadable pickle: {e}", path.display()))?;
    stack.finalize().map_err(|e| bad!("{}: unreadable pickle: {e}", path.display()))
}
