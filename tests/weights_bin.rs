//! PyTorch `pytorch_model.bin` checkpoints (zip + pickle, read by candle's pickle reader, which
//! never executes code): the fixture written by torch.save (tests/fixtures/tiny-gpt2-bin/make.py)
//! loads to the same weights as the safetensors fixture and gives the same GOP sums; sharded
//! `.bin` files too; safetensors are preferred when both exist; bad files are exit 2.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use agop::fetch::ResolvedModel;
use agop::measure::{self, Estimator, Gop, MeasureOptions, Output, Settings};
use agop::model::{self, WeightsKind};
use agop::tokenize::{write_tokens, TokensMeta, Window};
use common::*;

fn bin_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-gpt2-bin").join(name)
}

fn params(dir: &Path) -> Vec<(String, Vec<f32>)> {
    let m = model::load_dir(dir, WeightsKind::Pretrained, 0).unwrap();
    m.params.named(&m.cfg).into_iter().map(|(n, t)| (n, t.flatten_all().unwrap().to_vec1::<f32>().unwrap())).collect()
}

#[test]
fn bin_checkpoints_load_the_same_weights_as_safetensors() {
    let want = params(&fixture_model());
    assert!(!want.is_empty());
    for dir in [bin_dir("single"), bin_dir("sharded")] {
        assert!(!dir.join("model.safetensors").exists());
        assert_eq!(params(&dir), want, "{}", dir.display());
    }
}

/// The test helper's `.bin` writer (PyTorch's zip layout, written in Rust) round-trips the
/// fixture's weights through candle's reader, as torch's own file does.
#[test]
fn bin_written_by_the_test_helper_loads_the_same_weights() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("helper");
    std::fs::create_dir(&dir).unwrap();
    std::fs::copy(fixture_model().join("config.json"), dir.join("config.json")).unwrap();
    let tensors = torch_bin::read_safetensors_f32(&fixture_model().join("model.safetensors"));
    torch_bin::write_pytorch_bin(&dir.join("pytorch_model.bin"), &tensors);
    assert_eq!(params(&dir), params(&fixture_model()));
    assert_eq!(params(&dir), params(&bin_dir("single")));
}

#[test]
fn bin_and_safetensors_give_identical_gop_sums() {
    let tmp = tempfile::tempdir().unwrap();
    let tokens = tmp.path().join("tokens.parquet");
    let w: Vec<Window> = (0..5u64)
        .map(|i| Window { index: i, tokens: (0..8u64).map(|j| ((i * 7 + j * 3) % 50) as u32).collect() })
        .collect();
    write_tokens(&tokens, &w, &TokensMeta::default()).unwrap();
    let settings = Settings { output: Output::Logits, estimator: Estimator::Sketch, probes: 2, seed: 1, fact: false };
    let opts = MeasureOptions::new(WeightsKind::Pretrained, settings, 2);
    let run = |dir: &Path, name: &str| -> Gop {
        measure::measure(&ResolvedModel::local(dir).unwrap(), &tokens, &tmp.path().join(name), &opts).unwrap()
    };
    let (a, b) = (run(&fixture_model(), "st.safetensors"), run(&bin_dir("single"), "bin.safetensors"));
    assert_eq!(a.sums, b.sums);
    // The weights fingerprint covers the file that was read.
    assert_ne!(a.meta.model_sha256, b.meta.model_sha256);
    let sha = agop::util::hash::sha256_file(&bin_dir("single").join("pytorch_model.bin")).unwrap();
    assert_eq!(
        b.meta.model_sha256,
        agop::util::hash::sha256_files(&[bin_dir("single").join("pytorch_model.bin")]).unwrap()
    );
    assert_eq!(sha.len(), 64);
}

#[test]
fn safetensors_are_preferred_when_both_exist() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("both");
    std::fs::create_dir(&dir).unwrap();
    std::fs::copy(fixture_model().join("config.json"), dir.join("config.json")).unwrap();
    std::fs::copy(fixture_model().join("model.safetensors"), dir.join("model.safetensors")).unwrap();
    std::fs::write(dir.join("pytorch_model.bin"), b"not read").unwrap();
    assert_eq!(model::weights::weights_files(&dir).unwrap(), vec![dir.join("model.safetensors")]);
    assert_eq!(params(&dir), params(&fixture_model()));
}

fn measure_exit(dir: &Path, tmp: &Path) -> (Option<i32>, String) {
    let tokens = tmp.join("tokens.parquet");
    let w = vec![Window { index: 0, tokens: vec![1, 2, 3, 4] }];
    write_tokens(&tokens, &w, &TokensMeta::default()).unwrap();
    let o = Command::new(agop_bin())
        .args(["measure", "--model"])
        .arg(dir)
        .arg("--tokens")
        .arg(&tokens)
        .arg("--out")
        .arg(tmp.join("gop.safetensors"))
        .output()
        .unwrap();
    (o.status.code(), String::from_utf8_lossy(&o.stderr).to_string())
}

#[test]
fn bad_bin_files_are_exit_2_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let good = std::fs::read(bin_dir("single").join("pytorch_model.bin")).unwrap();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("truncated", good[..good.len() / 2].to_vec(), "not a readable PyTorch checkpoint"),
        ("garbage", b"\x80\x02}q\x00.".to_vec(), "not a readable PyTorch checkpoint"),
        ("unknown-class", std::fs::read(bin_dir("unknown-class.bin")).unwrap(), "is missing"),
    ];
    for (name, bytes, want) in cases {
        let dir = tmp.path().join(name);
        std::fs::create_dir(&dir).unwrap();
        std::fs::copy(fixture_model().join("config.json"), dir.join("config.json")).unwrap();
        std::fs::write(dir.join("pytorch_model.bin"), bytes).unwrap();
        let (code, err) = measure_exit(&dir, &dir);
        assert_eq!(code, Some(2), "{name}: {err}");
        assert!(err.contains(want) && err.contains("pytorch_model.bin"), "{name}: {err}");
        assert!(!dir.join("gop.safetensors").exists());
    }
}

/// A nanoGPT `ckpt.pt` (torch.compile's `_orig_mod.` prefix, nn.Linear [out, in] weights, tied
/// lm_head, `model_args`) measures to exactly the GOP sums of the same weights in HF layout;
/// `bias = False` and a missing `model_args` field are refused, named.
#[test]
fn a_nanogpt_checkpoint_measures_like_its_hf_layout_twin() {
    use common::torch_bin::{write_nanogpt_ckpt, Arg};
    let tmp = tempfile::tempdir().unwrap();
    let cfg = r#"{"model_type":"gpt2","n_layer":2,"n_head":2,"n_embd":16,"n_positions":32,"vocab_size":50304,
                  "activation_function":"gelu","eos_token_id":50256}"#;
    let hf = init_checkpoint(tmp.path(), "hf", cfg, 3);
    let mut nano = Vec::new();
    for (name, shape, values) in torch_bin::read_safetensors_f32(&hf.join("model.safetensors")) {
        let bare = name.strip_prefix("transformer.").unwrap_or(&name).to_string();
        let linear = shape.len() == 2 && bare.starts_with("h.") && bare.ends_with(".weight");
        let (shape, values) = if linear {
            let (r, c) = (shape[0], shape[1]);
            (vec![c, r], (0..c).flat_map(|j| (0..r).map(move |i| (i, j))).map(|(i, j)| values[i * c + j]).collect())
        } else {
            (shape, values)
        };
        if bare == "wte.weight" {
            nano.push(("_orig_mod.lm_head.weight".to_string(), shape.clone(), values.clone()));
        }
        nano.push((format!("_orig_mod.transformer.{bare}"), shape, values));
    }
    let args = |bias: bool, with_block: bool| {
        let mut a = vec![
            ("n_layer", Arg::Int(2)),
            ("n_head", Arg::Int(2)),
            ("n_embd", Arg::Int(16)),
            ("bias", Arg::Bool(bias)),
            ("vocab_size", Arg::Int(50304)),
            ("dropout", Arg::Float(0.0)),
        ];
        if with_block {
            a.push(("block_size", Arg::Int(32)));
        }
        a
    };
    let folder = |name: &str, bias: bool, with_block: bool| {
        let d = tmp.path().join(name);
        std::fs::create_dir_all(&d).unwrap();
        write_nanogpt_ckpt(&d.join("ckpt.pt"), &nano, &args(bias, with_block));
        d
    };
    let dir = folder("nano", true, true);
    let run = |args: &[&std::ffi::OsStr]| {
        let o = Command::new(agop_bin()).args(args).output().unwrap();
        (o.status.code(), String::from_utf8_lossy(&o.stderr).to_string())
    };
    let tokens = tmp.path().join("tokens.parquet");
    let corpus = tmp.path().join("c.txt");
    std::fs::write(&corpus, "To be, or not to be, that is the question: ".repeat(30)).unwrap();
    let os = |s: &std::path::Path| s.as_os_str().to_owned();
    let (code, err) = run(&[
        "tokenize".as_ref(),
        "--model".as_ref(),
        &os(&dir),
        "--corpus".as_ref(),
        &os(&corpus),
        "--seq-len".as_ref(),
        "16".as_ref(),
        "--out".as_ref(),
        &os(&tokens),
    ]);
    assert_eq!(code, Some(0), "{err}");
    let measure = |model: &std::path::Path, out: &std::path::Path| {
        let (code, err) = run(&[
            "measure".as_ref(),
            "--model".as_ref(),
            &os(model),
            "--tokens".as_ref(),
            &os(&tokens),
            "--out".as_ref(),
            &os(out),
            "--fact".as_ref(),
        ]);
        assert_eq!(code, Some(0), "{err}");
        agop::measure::Gop::load(out).unwrap()
    };
    let a = measure(&dir, &tmp.path().join("nano.safetensors"));
    let b = measure(&hf, &tmp.path().join("hf.safetensors"));
    assert!(!a.sums.is_empty());
    assert_eq!(a.sums, b.sums, "nanoGPT and HF layout gave different GOP sums");
    for (k, f) in &a.fact {
        assert_eq!(f.values, b.fact[k].values, "{k}");
    }
    // Refused, named.
    for (name, bias, block, want) in [("nobias", false, true, "bias"), ("noblock", true, false, "block_size")] {
        let d = folder(name, bias, block);
        let (code, err) = measure_exit(&d, &d);
        assert_eq!(code, Some(2), "{name}: {err}");
        assert!(err.contains(want) && err.contains("ckpt.pt"), "{name}: {err}");
    }
}
