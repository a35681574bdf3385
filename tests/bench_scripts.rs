//! The benchmark scripts keep working between the sessions that have the hardware they are for:
//! `benches/gpu.sh` (`just bench-gpu`) runs here on the CPU at tiny sizes (DEVICE=cpu), through
//! every step a GPU run takes (models, windows, agop and PyTorch at several batch sizes, FACT,
//! the profile, the summary line). Skipped without a Python that has torch and transformers
//! (AGOP_PYTHON, else python3).

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

#[test]
fn gpu_bench_script_runs_through_on_the_cpu() {
    let Some(py) = torch_python() else {
        eprintln!("skipped: no Python with torch, transformers and polars (AGOP_PYTHON)");
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let o = Command::new("bash")
        .arg(root.join("benches/gpu.sh"))
        .envs([
            ("DEVICE", "cpu"),
            ("SMALL", "2:64:4"),
            ("XL_DIMS", "2:96:4"),
            ("PRECISIONS", "f32"),
            ("WINDOWS", "4"),
            ("BATCHES", "2 4"),
            ("TORCH_BATCHES", "2"),
            ("XL_WINDOWS", "2"),
            ("XL_BATCHES", "2"),
            ("XL_TORCH_BATCHES", "2"),
            ("STEPS", "1"),
        ])
        .env("AGOP", agop_bin())
        .env("PYTHON", &py)
        .env("BENCH_DIR", tmp.path())
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{out}\n{}", String::from_utf8_lossy(&o.stderr));
    let last = out.lines().last().unwrap_or_default();
    let fields: Vec<&str> = last.split_whitespace().collect();
    let names: Vec<&str> = fields.iter().step_by(2).copied().collect();
    assert_eq!(names, ["ratio_fp32", "ratio_tf32", "ratio_bf16", "ratio_xl_fp32", "ratio_fact"], "{out}");
    for (name, value) in names.iter().zip(fields.iter().skip(1).step_by(2)) {
        let want_number = !matches!(*name, "ratio_tf32" | "ratio_bf16"); // f32 only on the CPU
        assert_eq!(value.parse::<f64>().is_ok_and(|v| v > 0.0), want_number, "{name} {value}\n{out}");
    }
    assert!(out.contains("profile (cpu") && out.contains("FACT backward"), "{out}");
    // Both batch sizes were measured, each from its own run.
    let runs = std::fs::read_to_string(tmp.path().join("runs.txt")).unwrap();
    for b in ["batch 2", "batch 4"] {
        assert!(runs.lines().any(|l| l.starts_with("small agop") && l.contains(b)), "{runs}");
    }
}
