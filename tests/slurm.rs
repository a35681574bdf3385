//! A real single-node Slurm (Debian's slurmctld, slurmd, munge) runs `pipelines/tiny.toml`
//! through `agop slurm --submit` with 3 shards; the result must equal the single-process run.
//! Skipped (loudly) where Slurm is not installed, unless AGOP_REQUIRE_SLURM=1 (set by .ci/run).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use agop::measure::Gop;
use agop::util::parquet::read_parquet;
use common::*;

struct Cluster {
    dir: PathBuf,
    conf: String,
}

impl Cluster {
    fn start(dir: &Path) -> Cluster {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/slurm-local.sh");
        let o = Command::new("bash").arg(&script).arg("start").arg(dir).output().unwrap();
        assert!(o.status.success(), "slurm bring-up failed: {}", String::from_utf8_lossy(&o.stderr));
        let out = String::from_utf8_lossy(&o.stdout);
        let conf = out.trim().strip_prefix("export SLURM_CONF=").expect("SLURM_CONF line").to_string();
        Cluster { dir: dir.to_path_buf(), conf }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/slurm-local.sh");
        let _ = Command::new("bash").arg(&script).arg("stop").arg(&self.dir).status();
    }
}

fn slurm_available() -> bool {
    let have = ["slurmctld", "slurmd", "sbatch", "munged"]
        .iter()
        .all(|b| ["/usr/sbin", "/usr/bin"].iter().any(|d| Path::new(d).join(b).exists()));
    let root = Command::new("id").arg("-u").output().map(|o| o.stdout == b"0\n").unwrap_or(false);
    have && root
}

/// Wait until `scontrol` reports the job finished; returns its final state.
fn wait_job(conf: &str, id: &str, limit: Duration) -> String {
    let start = Instant::now();
    loop {
        let o = Command::new("timeout")
            .args(["10", "scontrol", "show", "job", id])
            .env("SLURM_CONF", conf)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&o.stdout).to_string();
        if let Some(state) = text.split_whitespace().find_map(|w| w.strip_prefix("JobState=")) {
            if !matches!(state, "PENDING" | "RUNNING" | "CONFIGURING" | "COMPLETING") {
                return state.to_string();
            }
        }
        assert!(start.elapsed() < limit, "job {id} did not finish within {limit:?}: {text}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn tiny_pipeline_on_real_slurm_equals_single_process() {
    if !slurm_available() {
        assert!(
            std::env::var("AGOP_REQUIRE_SLURM").is_err(),
            "AGOP_REQUIRE_SLURM is set but Slurm (or root) is not available"
        );
        eprintln!(
            "SKIPPED: Slurm is not installed here (apt-get install slurmctld slurmd slurm-client munge), or not root"
        );
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(&tmp.path().join("slurm"));
    let pipeline = Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines/tiny.toml");
    let out = tmp.path().join("sharded");
    let o = Command::new(agop_bin())
        .args(["slurm"])
        .arg(&pipeline)
        .args(["--shards", "3", "--submit", "--cpus", "1", "--mem", "2G", "--time", "30", "--out"])
        .arg(&out)
        .env("SLURM_CONF", &cluster.conf)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(o.status.success(), "agop slurm failed: {}", String::from_utf8_lossy(&o.stderr));
    let ids: Vec<(String, String)> = stdout
        .lines()
        .map(|l| {
            let (a, b) = l.split_once(' ').unwrap();
            (a.to_string(), b.to_string())
        })
        .collect();
    assert_eq!(
        ids.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
        ["prepare", "measure-pretrained", "measure-random-init", "reduce"]
    );
    let state = wait_job(&cluster.conf, &ids[3].1, Duration::from_secs(300));
    let logs = out.join("slurm/logs");
    assert_eq!(state, "COMPLETED", "reduce job ended {state}; logs in {}", logs.display());
    for i in 0..3 {
        assert!(out.join(format!("shards/gop-pretrained-{i}-of-3.safetensors")).is_file());
    }

    // The same pipeline in one process.
    let single = tmp.path().join("single");
    let o = Command::new(agop_bin()).arg("run").arg(&pipeline).arg("--out").arg(&single).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for w in ["pretrained", "random-init"] {
        let a = Gop::load(&out.join(format!("gop-{w}.safetensors"))).unwrap();
        let b = Gop::load(&single.join(format!("gop-{w}.safetensors"))).unwrap();
        assert_eq!(a.meta.n_tokens, b.meta.n_tokens);
        assert_eq!(a.meta.windows, b.meta.windows);
        for (k, (_, v)) in &b.sums {
            let e = rel_frob(&a.sums[k].1, v);
            assert!(e < 1e-9, "{w} {k}: sharded vs single differ by {e:.3e}");
        }
    }
    let (a, b) = (
        read_parquet(&out.join("correlations.parquet")).unwrap(),
        read_parquet(&single.join("correlations.parquet")).unwrap(),
    );
    let va: Vec<f64> = a.column("value").unwrap().f64().unwrap().iter().map(|v| v.unwrap()).collect();
    let vb: Vec<f64> = b.column("value").unwrap().f64().unwrap().iter().map(|v| v.unwrap()).collect();
    assert_eq!(va.len(), vb.len());
    for (x, y) in va.iter().zip(&vb) {
        assert!((x - y).abs() < 1e-9, "{x} vs {y}");
    }
    drop(cluster);
}
