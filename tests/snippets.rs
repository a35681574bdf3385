//! Every Python snippet in the README and docs/ runs as written against the outputs of the
//! offline pipelines it names in its first line (`# after `agop run pipelines/<name>.toml``):
//! `tiny.toml` itself, and `shakespeare-train.toml` shortened (10 training steps, fewer tokens:
//! the same files and columns, so the same queries run). Skipped with a message where no Python
//! with polars is found (`AGOP_PYTHON`, else `python3`; `.ci/run` installs one).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

/// A fenced ```python block: where it is, the pipeline its first line names, its code.
struct Snippet {
    place: String,
    pipeline: String,
    code: String,
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn snippets() -> Vec<Snippet> {
    let mut files = vec![root().join("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root().join("docs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    files.extend(docs);
    let mut out = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        let mut i = 0;
        while i < lines.len() {
            if lines[i].trim_start() == "```python" {
                let start = i + 1;
                let end = start + lines[start..].iter().position(|l| l.trim_start().starts_with("```")).unwrap();
                let code = lines[start..end].join("\n");
                let place = format!("{}:{}", f.strip_prefix(root()).unwrap().display(), start);
                let first = lines[start];
                let pipeline = first
                    .split("agop run pipelines/")
                    .nth(1)
                    .and_then(|r| r.split(".toml").next())
                    .unwrap_or_else(|| {
                        panic!("{place}: the first line must say `# after `agop run pipelines/<name>.toml``")
                    })
                    .to_string();
                out.push(Snippet { place, pipeline, code });
                i = end;
            }
            i += 1;
        }
    }
    out
}

fn python() -> Option<String> {
    let candidates = std::env::var("AGOP_PYTHON").into_iter().chain(["python3".to_string()]);
    candidates
        .into_iter()
        .find(|py| Command::new(py).args(["-c", "import polars"]).output().map(|o| o.status.success()).unwrap_or(false))
}

/// Run `pipeline` (its text, with paths made absolute) into `outputs/<name>` under `dir`.
fn run_pipeline(dir: &Path, name: &str, text: String) {
    let base = root().join("pipelines");
    let text = text
        .replace("init_config = \"", &format!("init_config = \"{}/", base.display()))
        .replace("\"corpus/", &format!("\"{}/corpus/", base.display()));
    let file = dir.join(format!("{name}.toml"));
    std::fs::write(&file, text).unwrap();
    let out = dir.join("outputs").join(name);
    let o = agop(&["run", file.to_str().unwrap(), "--out", out.to_str().unwrap()]);
    assert!(o.status.success(), "agop run {name}: {}", stderr(&o));
}

#[test]
fn every_python_snippet_in_the_docs_runs() {
    let all = snippets();
    assert!(all.len() >= 4, "found only {} snippets", all.len());
    let Some(py) = python() else {
        eprintln!(
            "SKIPPED: no Python with polars (set AGOP_PYTHON, or `pip install polars`); {} snippets not run",
            all.len()
        );
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let mut pipelines: Vec<&str> = all.iter().map(|s| s.pipeline.as_str()).collect();
    pipelines.sort();
    pipelines.dedup();
    for name in pipelines {
        let text = std::fs::read_to_string(root().join(format!("pipelines/{name}.toml")))
            .unwrap_or_else(|e| panic!("a snippet names pipelines/{name}.toml: {e}"));
        let text = match name {
            "tiny" => text,
            // The demo, shortened; the same outputs, columns and steps-series shape.
            "shakespeare-train" => [
                ("steps = 200", "steps = 10"),
                ("save_steps = [0, 25, 50, 100, 200]", "save_steps = [0, 5, 10]"),
                ("warmup = 20", "warmup = 1"),
                ("max_tokens = 8192", "max_tokens = 512"),
                ("groups = 8", "groups = 4"),
                ("init_seeds = 5", "init_seeds = 2"),
                ("eval_windows = 32", "eval_windows = 4"),
            ]
            .iter()
            .fold(text, |t, (a, b)| {
                assert!(t.contains(a), "pipelines/shakespeare-train.toml no longer has {a:?}: update this test");
                t.replace(a, b)
            }),
            other => panic!("no offline recipe for pipelines/{other}.toml in this test"),
        };
        run_pipeline(tmp.path(), name, text);
    }
    for s in &all {
        let o = Command::new(&py).arg("-c").arg(&s.code).current_dir(tmp.path()).output().unwrap();
        assert!(
            o.status.success(),
            "the snippet at {} failed:\n{}\n--- stderr:\n{}",
            s.place,
            s.code,
            String::from_utf8_lossy(&o.stderr)
        );
    }
}
