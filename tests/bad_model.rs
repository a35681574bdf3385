//! Bad checkpoints give clear errors (naming the tensor or field) and exit code 2, never a panic.

mod common;

use std::path::Path;
use std::process::Command;

use agop::model::{self, WeightsKind};
use agop::tokenize::{write_tokens, TokensMeta};
use common::*;

/// Copy the fixture model into `dir`, letting `edit_cfg` change config.json and `keep`
/// choose and reshape tensors.
fn variant(dir: &Path, edit_cfg: impl Fn(&mut serde_json::Value), drop: Option<&str>, reshape: Option<&str>) {
    std::fs::create_dir_all(dir).unwrap();
    let src = fixture_model();
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    edit_cfg(&mut cfg);
    std::fs::write(dir.join("config.json"), serde_json::to_string(&cfg).unwrap()).unwrap();
    let data = std::fs::read(src.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&data).unwrap();
    let mut owned: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    for (name, v) in st.tensors() {
        if Some(name.as_str()) == drop {
            continue;
        }
        let mut shape = v.shape().to_vec();
        let mut bytes = v.data().to_vec();
        if Some(name.as_str()) == reshape {
            // Drop the last row: same dtype, wrong shape.
            let row: usize = shape[1..].iter().product::<usize>() * 4;
            shape[0] -= 1;
            bytes.truncate(bytes.len() - row);
        }
        owned.push((name, v.dtype(), shape, bytes));
    }
    let views: Vec<(String, safetensors::tensor::TensorView)> = owned
        .iter()
        .map(|(n, d, s, b)| (n.clone(), safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    std::fs::write(dir.join("model.safetensors"), safetensors::serialize(views, None).unwrap()).unwrap();
}

fn load_err(dir: &Path) -> String {
    let err = model::load_dir(dir, WeightsKind::Pretrained, 0).expect_err("loading should fail");
    assert!(agop::error::is_bad_input(&err), "not marked as bad input: {err:#}");
    format!("{err:#}")
}

#[test]
fn missing_tensor_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    variant(tmp.path(), |_| {}, Some("transformer.h.1.mlp.c_fc.weight"), None);
    let msg = load_err(tmp.path());
    assert!(msg.contains("h.1.mlp.c_fc.weight") && msg.contains("missing"), "{msg}");
}

#[test]
fn wrong_shape_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    variant(tmp.path(), |_| {}, None, Some("transformer.h.0.attn.c_attn.weight"));
    let msg = load_err(tmp.path());
    assert!(msg.contains("h.0.attn.c_attn.weight") && msg.contains("[23, 72]") && msg.contains("[24, 72]"), "{msg}");
}

/// An edit of config.json.
type Edit = Box<dyn Fn(&mut serde_json::Value)>;

#[test]
fn config_errors_name_the_field() {
    let cases: Vec<(Edit, &str)> = vec![
        (Box::new(|c| c["n_head"] = 5.into()), "n_embd (24) is not divisible by n_head (5)"),
        (Box::new(|c| c["model_type"] = "llama".into()), "model_type is \"llama\""),
        (Box::new(|c| c["n_layer"] = 0.into()), "n_layer must be positive"),
        (Box::new(|c| c["activation_function"] = "relu".into()), "activation_function"),
    ];
    for (edit, want) in cases {
        let tmp = tempfile::tempdir().unwrap();
        variant(tmp.path(), edit, None, None);
        let msg = load_err(tmp.path());
        assert!(msg.contains(want) && msg.contains("config.json"), "{msg}");
    }
}

#[test]
fn truncated_safetensors_is_reported() {
    let tmp = tempfile::tempdir().unwrap();
    variant(tmp.path(), |_| {}, None, None);
    let p = tmp.path().join("model.safetensors");
    let data = std::fs::read(&p).unwrap();
    std::fs::write(&p, &data[..data.len() / 2]).unwrap();
    let msg = load_err(tmp.path());
    assert!(msg.contains("model.safetensors") && msg.contains("truncated or corrupted"), "{msg}");
}

#[test]
fn cli_exits_2_with_message_on_bad_model() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("model");
    variant(&dir, |c| c["n_head"] = 5.into(), None, None);
    let tokens = tmp.path().join("tokens.parquet");
    write_tokens(&tokens, &golden_windows(), &TokensMeta::default()).unwrap();
    let out = Command::new(agop_bin())
        .args(["measure", "--model"])
        .arg(&dir)
        .arg("--tokens")
        .arg(&tokens)
        .arg("--out")
        .arg(tmp.path().join("gop.safetensors"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("not divisible by n_head"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!tmp.path().join("gop.safetensors").exists());
}
