//! Helpers shared by the integration tests: fixture paths and golden values.
#![allow(dead_code)]

pub mod torch_bin;

use std::collections::HashMap;
use std::path::PathBuf;

use agop::tokenize::Window;

pub fn fixture_model() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-gpt2/model")
}

pub fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-gpt2/golden")
}

/// golden.json parsed.
pub fn golden_json() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(golden_dir().join("golden.json")).unwrap()).unwrap()
}

/// The golden windows (2 × 8 token ids).
pub fn golden_windows() -> Vec<Window> {
    golden_json()["ids"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
        .map(|(i, w)| Window {
            index: i as u64,
            tokens: w.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect(),
        })
        .collect()
}

/// Every tensor of golden.safetensors: name → (shape, f64 values).
pub fn golden_tensors() -> HashMap<String, (Vec<usize>, Vec<f64>)> {
    let data = std::fs::read(golden_dir().join("golden.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&data).unwrap();
    st.tensors()
        .into_iter()
        .map(|(n, v)| {
            assert_eq!(v.dtype(), safetensors::Dtype::F64);
            let vals = v.data().chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap())).collect();
            (n, (v.shape().to_vec(), vals))
        })
        .collect()
}

/// ‖a − b‖ / ‖b‖.
pub fn rel_frob(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    let num: f64 = a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum();
    let den: f64 = b.iter().map(|y| y * y).sum();
    (num / den).sqrt()
}

/// A random-init checkpoint `dir/name`, as `agop init-model` writes it, from a config.json text
/// (kept as `dir/name.config.json`).
pub fn init_checkpoint(dir: &std::path::Path, name: &str, config: &str, seed: u64) -> PathBuf {
    let cfg = dir.join(format!("{name}.config.json"));
    std::fs::write(&cfg, config).unwrap();
    let out = dir.join(name);
    // init-model refuses to replace a model; a test asking for the same name again gets it anew.
    let _ = std::fs::remove_dir_all(&out);
    agop::model::init_model(&cfg, seed, &out).unwrap();
    out
}

/// Path to the built `agop` binary.
pub fn agop_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_agop"))
}

/// Run the `agop` binary with `args`.
pub fn agop(args: &[&str]) -> std::process::Output {
    std::process::Command::new(agop_bin()).args(args).output().unwrap()
}

/// A command's stderr as text.
pub fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Exit 2 with every `want` in the message.
pub fn assert_bad(o: &std::process::Output, want: &[&str]) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(2), "expected exit 2, got {:?}: {err}", o.status.code());
    for w in want {
        assert!(err.contains(w), "message lacks {w:?}: {err}");
    }
}

/// A model and a tokens file big enough that `agop measure` runs for seconds (4 layers, 128
/// wide, 1,500 windows of 256 tokens): for tests that interrupt or race a measurement.
pub fn slow_measure_inputs(dir: &std::path::Path) -> (PathBuf, PathBuf) {
    let config = r#"{"model_type":"gpt2","n_layer":4,"n_head":4,"n_embd":128,"n_positions":256,"vocab_size":1000}"#;
    let model = init_checkpoint(dir, "model", config, 0);
    let windows: Vec<Window> = (0..1500)
        .map(|i| Window { index: i, tokens: (0..256).map(|j| ((i * 7 + j) % 1000) as u32).collect() })
        .collect();
    let tokens = dir.join("tokens.parquet");
    agop::tokenize::write_tokens(&tokens, &windows, &Default::default()).unwrap();
    (model, tokens)
}

/// A Python with torch, transformers and polars (AGOP_PYTHON, else python3), or None.
pub fn torch_python() -> Option<String> {
    let py = std::env::var("AGOP_PYTHON").unwrap_or_else(|_| "python3".into());
    let ok = std::process::Command::new(&py)
        .args(["-c", "import torch, transformers, polars"])
        .output()
        .ok()?
        .status
        .success();
    ok.then_some(py)
}
