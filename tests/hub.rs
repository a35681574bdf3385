//! Hub access against a loopback server that serves the hub's URL layout over fixture files:
//! first download, cache reuse with the server stopped, HF_HUB_OFFLINE, redirects, pinned
//! revisions recorded in outputs, 404, 401/HF_TOKEN, truncated transfers, corrupted caches,
//! non-GPT-2 checkpoints, hub datasets by glob, and no network at all.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};

use agop::measure::Gop;
use agop::util::parquet::read_parquet;
use common::*;
use sha2::{Digest, Sha256};

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

/// A fake hub: repo ("models/owner/name" or "datasets/owner/name") → file → bytes.
struct FakeHub {
    server: Arc<tiny_http::Server>,
    port: u16,
    log: Arc<Mutex<Vec<String>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

type Repos = HashMap<String, BTreeMap<String, Vec<u8>>>;

#[derive(Clone, Default)]
struct Rules {
    /// Serve this file with only half of its bytes (and a matching Content-Length).
    truncate: Option<String>,
}

/// The commit a fake branch resolves to.
fn branch_commit(branch: &str) -> String {
    sha256(branch.as_bytes())[..40].to_string()
}

fn sha256(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

fn header(k: &str, v: &str) -> tiny_http::Header {
    tiny_http::Header::from_bytes(k.as_bytes(), v.as_bytes()).unwrap()
}

impl FakeHub {
    fn start(repos: Repos, rules: Rules) -> FakeHub {
        let server = Arc::new(tiny_http::Server::http("127.0.0.1:0").unwrap());
        let port = server.server_addr().to_ip().unwrap().port();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (s, l) = (server.clone(), log.clone());
        let thread = std::thread::spawn(move || {
            for req in s.incoming_requests() {
                l.lock().unwrap().push(format!("{} {}", req.method(), req.url()));
                let resp = route(&repos, &rules, &req);
                let _ = req.respond(resp);
            }
        });
        FakeHub { server, port, log, thread: Some(thread) }
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn requests(&self) -> usize {
        self.log.lock().unwrap().len()
    }

    fn stop(mut self) {
        self.server.unblock();
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

fn route(repos: &Repos, rules: &Rules, req: &tiny_http::Request) -> tiny_http::ResponseBox {
    let url = req.url().split('?').next().unwrap_or("").to_string();
    let authorized =
        req.headers().iter().any(|h| h.field.equiv("Authorization") && h.value.as_str() == "Bearer secret");
    let not_found = |code: &str| {
        tiny_http::Response::from_string("not found")
            .with_status_code(404)
            .with_header(header("X-Error-Code", code))
            .boxed()
    };
    let parts: Vec<&str> = url.trim_start_matches('/').split('/').collect();
    // The short id `tiny` moved to `testorg/tiny`: a relative redirect, as the hub does for gpt2.
    if parts.len() >= 3 && parts[0] == "tiny" && parts[1] == "resolve" {
        let loc = format!("/testorg/{}", parts.join("/"));
        return tiny_http::Response::empty(307).with_header(header("Location", &loc)).boxed();
    }
    // /api/datasets/{o}/{n}/tree/{rev}[/path]
    if parts.len() >= 6 && parts[0] == "api" && parts[4] == "tree" {
        let key = format!("{}/{}/{}", parts[1], parts[2], parts[3]);
        let Some(files) = repos.get(&key) else { return not_found("RepoNotFound") };
        let entries: Vec<serde_json::Value> = files
            .iter()
            .map(|(p, b)| serde_json::json!({"type": "file", "oid": sha256(b)[..40], "size": b.len(), "path": p}))
            .collect();
        return tiny_http::Response::from_string(serde_json::to_string(&entries).unwrap())
            .with_header(header("Content-Type", "application/json"))
            .boxed();
    }
    // /{o}/{n}/resolve/{rev}/{file...} or /datasets/{o}/{n}/resolve/{rev}/{file...}
    let (key, rest) = if parts.first() == Some(&"datasets") && parts.len() >= 6 {
        (format!("datasets/{}/{}", parts[1], parts[2]), &parts[3..])
    } else if parts.len() >= 5 {
        (format!("models/{}/{}", parts[0], parts[1]), &parts[2..])
    } else {
        return not_found("RepoNotFound");
    };
    if rest[0] != "resolve" {
        return not_found("RepoNotFound");
    }
    let (rev, file) = (rest[1], rest[2..].join("/"));
    if key.contains("/private/") && !authorized {
        return tiny_http::Response::from_string("unauthorized").with_status_code(401).boxed();
    }
    let Some(files) = repos.get(&key) else { return not_found("RepoNotFound") };
    // Branches: the entry `<repo>@<branch>` holds that branch's files, at commit branch_commit(branch).
    let (files, commit) = if rev == "main" || rev == COMMIT {
        (files, COMMIT.to_string())
    } else {
        let branch = repos.iter().find_map(|(k, f)| {
            let b = k.strip_prefix(&format!("{key}@"))?;
            (b == rev || branch_commit(b) == rev).then(|| (f, branch_commit(b)))
        });
        match branch {
            Some(b) => b,
            None => return not_found("RevisionNotFound"),
        }
    };
    let Some(body) = files.get(&file) else {
        return not_found("EntryNotFound").with_header(header("X-Repo-Commit", &commit)).boxed();
    };
    let lfs = file.ends_with(".safetensors") || file.ends_with(".parquet") || file.ends_with(".bin");
    let etag = if lfs { sha256(body) } else { sha256(body)[..40].to_string() };
    let mut served = body.clone();
    if rules.truncate.as_deref() == Some(file.as_str()) {
        served.truncate(body.len() / 2);
    }
    let len = served.len();
    let data = if req.method() == &tiny_http::Method::Head { Vec::new() } else { served };
    tiny_http::Response::new(
        tiny_http::StatusCode(200),
        vec![
            header("ETag", &format!("\"{etag}\"")),
            header("X-Repo-Commit", &commit),
            header("Content-Type", "application/octet-stream"),
        ],
        std::io::Cursor::new(data),
        Some(len),
        None,
    )
    .boxed()
}

/// A small GPT-2-vocabulary checkpoint (with tokenizer files) as hub files.
fn model_files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let config = r#"{"model_type":"gpt2","n_layer":1,"n_head":2,"n_embd":8,"n_positions":64,"vocab_size":50257}"#;
    let model = init_checkpoint(dir, "model", config, 4);
    ["config.json", "model.safetensors", "vocab.json", "merges.txt"]
        .iter()
        .map(|f| (f.to_string(), std::fs::read(model.join(f)).unwrap()))
        .collect()
}

fn corpus_parquet(dir: &Path) -> Vec<u8> {
    use polars::prelude::*;
    let p = dir.join("c.parquet");
    let text = Series::new("text".into(), ["To be, or not to be, that is the question:"; 40].to_vec());
    let mut df = DataFrame::new_infer_height(vec![text.into()]).unwrap();
    ParquetWriter::new(std::fs::File::create(&p).unwrap()).finish(&mut df).unwrap();
    std::fs::read(&p).unwrap()
}

fn repos(dir: &Path) -> Repos {
    let files = model_files(dir);
    let mut llama = files.clone();
    llama.insert(
        "config.json".into(),
        br#"{"model_type":"llama","n_layer":1,"n_head":2,"n_embd":8,"n_positions":64,"vocab_size":50257}"#.to_vec(),
    );
    let pq = corpus_parquet(dir);
    let mut data = BTreeMap::new();
    data.insert("data/test-00000.parquet".to_string(), pq.clone());
    data.insert("data/test-00001.parquet".to_string(), pq);
    data.insert("data/train-00000.parquet".to_string(), b"not used".to_vec());
    let mut r = Repos::new();
    r.insert("models/testorg/tiny".into(), files.clone());
    r.insert("models/private/tiny".into(), files);
    r.insert("models/testorg/llama".into(), llama);
    r.insert("datasets/testorg/corpus".into(), data);
    r
}

struct Env {
    tmp: tempfile::TempDir,
}

impl Env {
    fn new() -> Env {
        Env { tmp: tempfile::tempdir().unwrap() }
    }
    fn cache(&self) -> PathBuf {
        self.tmp.path().join("hf-cache")
    }
    fn agop(&self, endpoint: &str, args: &[&str], extra: &[(&str, &str)]) -> Output {
        let mut c = Command::new(agop_bin());
        c.args(args)
            .env("HF_ENDPOINT", endpoint)
            .env("HF_HUB_CACHE", self.cache())
            .env("HF_HOME", self.tmp.path().join("hf-home"))
            .env_remove("HF_TOKEN")
            .env_remove("HF_HUB_OFFLINE");
        for (k, v) in extra {
            c.env(k, v);
        }
        c.output().unwrap()
    }
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

#[test]
fn download_cache_offline_and_redirect() {
    let env = Env::new();
    let hub = FakeHub::start(repos(env.tmp.path()), Rules::default());
    let ep = hub.endpoint();
    let o = env.agop(&ep, &["fetch", "--model", "testorg/tiny"], &[]);
    assert!(o.status.success(), "{}", text(&o));
    let dir = PathBuf::from(String::from_utf8_lossy(&o.stdout).trim());
    assert!(dir.starts_with(env.cache()), "{dir:?}");
    assert!(dir.ends_with(format!("snapshots/{COMMIT}")), "{dir:?}");
    for f in ["config.json", "model.safetensors", "vocab.json", "merges.txt"] {
        assert!(dir.join(f).is_file(), "{f}");
    }
    assert!(text(&o).contains(COMMIT));

    // The short id is redirected (relative Location) to testorg/tiny.
    let o = env.agop(&ep, &["fetch", "--model", "tiny"], &[]);
    assert!(o.status.success(), "{}", text(&o));

    // A pinned commit works too.
    let o = env.agop(&ep, &["fetch", "--model", "testorg/tiny", "--revision", COMMIT], &[]);
    assert!(o.status.success(), "{}", text(&o));

    // HF_HUB_OFFLINE=1: served from the cache without a single request.
    let before = hub.requests();
    let o = env.agop(&ep, &["fetch", "--model", "testorg/tiny"], &[("HF_HUB_OFFLINE", "1")]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(hub.requests(), before, "offline mode made requests");

    // Offline and not cached: a clear error.
    let o = env.agop(&ep, &["fetch", "--model", "testorg/other"], &[("HF_HUB_OFFLINE", "1")]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("HF_HUB_OFFLINE"), "{}", text(&o));

    // Server gone: the cache still answers.
    hub.stop();
    let o = env.agop(&ep, &["fetch", "--model", "testorg/tiny"], &[]);
    assert!(o.status.success(), "{}", text(&o));
}

#[test]
fn run_against_the_hub_records_the_resolved_commit() {
    let env = Env::new();
    let hub = FakeHub::start(repos(env.tmp.path()), Rules::default());
    let pipeline = env.tmp.path().join("p.toml");
    std::fs::write(
        &pipeline,
        r#"name = "hubrun"
[model]
id = "testorg/tiny"
revision = "main"
[corpus]
sources = ["hf://datasets/testorg/corpus@main/data/test-*.parquet"]
seq_len = 16
[measure]
probes = 1
weights = ["pretrained"]
"#,
    )
    .unwrap();
    let out = env.tmp.path().join("out");
    let o = env.agop(&hub.endpoint(), &["run", pipeline.to_str().unwrap(), "--out", out.to_str().unwrap()], &[]);
    assert!(o.status.success(), "{}", text(&o));
    let gop = Gop::load(&out.join("gop-pretrained.safetensors")).unwrap();
    assert_eq!(gop.meta.revision, COMMIT);
    assert_eq!(gop.meta.model, "testorg/tiny");
    // 2 files × 40 rows × (13 tokens + EOS) = 1120 tokens → 70 windows of 16.
    assert_eq!(gop.meta.n_windows, 70);
    let df = read_parquet(&out.join("correlations.parquet")).unwrap();
    assert!(df.column("revision").unwrap().str().unwrap().iter().all(|r| r == Some(COMMIT)));
    hub.stop();
}

#[test]
fn http_errors_are_clear_with_exit_2() {
    let env = Env::new();
    let hub = FakeHub::start(repos(env.tmp.path()), Rules::default());
    let ep = hub.endpoint();

    let o = env.agop(&ep, &["fetch", "--model", "testorg/nope"], &[]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("testorg/nope") && text(&o).contains("404"), "{}", text(&o));

    let o = env.agop(&ep, &["fetch", "--model", "testorg/tiny", "--revision", "v9"], &[]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("404"), "{}", text(&o));

    let o = env.agop(&ep, &["fetch", "--model", "private/tiny"], &[]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("401") && text(&o).contains("HF_TOKEN"), "{}", text(&o));
    let o = env.agop(&ep, &["fetch", "--model", "private/tiny"], &[("HF_TOKEN", "secret")]);
    assert!(o.status.success(), "{}", text(&o));

    let o = env.agop(&ep, &["fetch", "--model", "testorg/llama"], &[]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("model_type is \"llama\""), "{}", text(&o));
    hub.stop();
}

#[test]
fn truncated_download_is_refused_and_nothing_is_left_in_the_cache() {
    let env = Env::new();
    let hub = FakeHub::start(repos(env.tmp.path()), Rules { truncate: Some("model.safetensors".into()) });
    let o = env.agop(&hub.endpoint(), &["fetch", "--model", "testorg/tiny"], &[]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("model.safetensors") && text(&o).contains("truncated"), "{}", text(&o));
    hub.stop();
    // Nothing that looks like a complete model.safetensors stays behind.
    let snap = env.cache().join(format!("models--testorg--tiny/snapshots/{COMMIT}/model.safetensors"));
    assert!(!snap.exists());
}

#[test]
fn corrupted_cache_is_refetched_or_reported_offline() {
    let env = Env::new();
    let hub = FakeHub::start(repos(env.tmp.path()), Rules::default());
    let ep = hub.endpoint();
    assert!(env.agop(&ep, &["fetch", "--model", "testorg/tiny"], &[]).status.success());
    let snap = env.cache().join(format!("models--testorg--tiny/snapshots/{COMMIT}/model.safetensors"));
    let blob = std::fs::canonicalize(&snap).unwrap();
    let mut bytes = std::fs::read(&blob).unwrap();
    let n = bytes.len();
    bytes[n - 1] ^= 0xff;
    std::fs::write(&blob, &bytes).unwrap();

    let o = env.agop(&ep, &["fetch", "--model", "testorg/tiny"], &[("HF_HUB_OFFLINE", "1")]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("corrupted"), "{}", text(&o));

    let o = env.agop(&ep, &["fetch", "--model", "testorg/tiny"], &[]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("downloading it again"), "{}", text(&o));
    let fixed = std::fs::read(&snap).unwrap();
    assert_eq!(sha256(&fixed), blob.file_name().unwrap().to_string_lossy());
    hub.stop();
}

#[test]
fn no_network_says_so() {
    let env = Env::new();
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let o = env.agop(&format!("http://127.0.0.1:{port}"), &["fetch", "--model", "testorg/tiny"], &[]);
    // Exit 1, not 2: nothing the user gave is wrong, and a retry may pass.
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let t = text(&o);
    assert!(
        t.contains("cannot reach the Hugging Face hub")
            && t.contains("HF_ENDPOINT")
            && t.contains("local model directory"),
        "{t}"
    );
}

#[test]
fn default_pipeline_without_network_stops_at_once() {
    let env = Env::new();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut c = Command::new(agop_bin());
    c.arg("run")
        .current_dir(env.tmp.path())
        .env("HF_ENDPOINT", format!("http://127.0.0.1:{port}"))
        .env("HF_HUB_CACHE", env.cache())
        .env_remove("HF_HUB_OFFLINE");
    let start = std::time::Instant::now();
    let o = c.output().unwrap();
    let t = text(&o);
    assert_eq!(o.status.code(), Some(1), "{t}");
    assert!(t.contains("openai-community/gpt2") && t.contains("cannot reach the Hugging Face hub"), "{t}");
    assert!(t.contains("local model directory") && t.contains("HF_ENDPOINT"), "{t}");
    assert!(start.elapsed().as_secs() < 60);
    assert!(t.contains("pipelines/shakespeare-train.toml"), "{t}");
    assert!(!env.tmp.path().join("outputs/gpt2-shakespeare").exists(), "an empty output folder was left");
}

/// A repository with only PyTorch weights (the sharded fixture written by torch.save): fetched
/// shard by shard, measured to the same sums as the safetensors fixture; a truncated
/// pytorch_model.bin download is refused like a truncated safetensors one.
#[test]
fn pytorch_bin_repositories_are_fetched_and_checked() {
    let env = Env::new();
    let fixture = |d: &str| Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-gpt2-bin").join(d);
    let read_dir = |d: &Path| -> BTreeMap<String, Vec<u8>> {
        std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().path())
            .map(|p| (p.file_name().unwrap().to_string_lossy().to_string(), std::fs::read(&p).unwrap()))
            .collect()
    };
    let mut r = repos(env.tmp.path());
    r.insert("models/testorg/sharded-bin".into(), read_dir(&fixture("sharded")));
    r.insert("models/testorg/single-bin".into(), read_dir(&fixture("single")));
    let hub = FakeHub::start(r.clone(), Rules::default());
    let o = env.agop(&hub.endpoint(), &["fetch", "--model", "testorg/sharded-bin"], &[]);
    assert!(o.status.success(), "{}", text(&o));
    let dir = PathBuf::from(String::from_utf8_lossy(&o.stdout).trim());
    for f in ["pytorch_model.bin.index.json", "pytorch_model-00001-of-00002.bin", "pytorch_model-00002-of-00002.bin"] {
        assert!(dir.join(f).is_file(), "{f}");
    }
    let tokens = env.tmp.path().join("tokens.parquet");
    let w: Vec<agop::tokenize::Window> = (0..3u64)
        .map(|i| agop::tokenize::Window { index: i, tokens: (0..6u64).map(|j| ((i * 5 + j) % 50) as u32).collect() })
        .collect();
    agop::tokenize::write_tokens(&tokens, &w, &Default::default()).unwrap();
    let measure = |model: &str, out: &str| {
        let o = env.agop(
            &hub.endpoint(),
            &["measure", "--model", model, "--tokens", tokens.to_str().unwrap(), "--out", out],
            &[],
        );
        assert!(o.status.success(), "{}", text(&o));
        agop::measure::Gop::load(Path::new(out)).unwrap()
    };
    let a = measure("testorg/sharded-bin", env.tmp.path().join("a.safetensors").to_str().unwrap());
    let b = measure(fixture_model().to_str().unwrap(), env.tmp.path().join("b.safetensors").to_str().unwrap());
    assert_eq!(a.sums, b.sums);
    assert_eq!(a.meta.revision, COMMIT);
    hub.stop();

    let hub = FakeHub::start(r, Rules { truncate: Some("pytorch_model.bin".into()) });
    let o = env.agop(&hub.endpoint(), &["fetch", "--model", "testorg/single-bin"], &[]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("pytorch_model.bin") && text(&o).contains("truncated"), "{}", text(&o));
}

/// A pipeline file `<dir>/<name>.toml` for the series tests: `[model]` lines as given, 16
/// windows of 16 tokens of `<dir>/corpus.txt`, 4 window groups, `[measure]` lines as given.
fn series_pipeline(dir: &Path, name: &str, model: &str, measure: &str) -> PathBuf {
    let p = dir.join(format!("{name}.toml"));
    std::fs::write(
        &p,
        format!(
            "name = \"{name}\"\n[model]\n{model}\n[corpus]\nsources = [\"corpus.txt\"]\nseq_len = 16\n\
             max_tokens = 256\n[measure]\n{measure}\ngroups = 4\n[correlate]\npowers = [1.0]\n"
        ),
    )
    .unwrap();
    p
}

/// A checkpoint series from hub branches (the second holding only pytorch_model.bin): each
/// revision measured on the same windows, pinned to its commit, with its step; random-init once; delta-gram rows against the first checkpoint;
/// each checkpoint's rows equal a pipeline measuring that revision alone; a missing branch is
/// exit 2 naming it, and the checkpoints measured before it are kept.
#[test]
fn checkpoint_series_from_hub_branches() {
    let env = Env::new();
    let mut r = repos(env.tmp.path());
    let config = r#"{"model_type":"gpt2","n_layer":1,"n_head":2,"n_embd":8,"n_positions":64,"vocab_size":50257}"#;
    let files = |seed: u64| -> BTreeMap<String, Vec<u8>> {
        let dir = init_checkpoint(env.tmp.path(), &format!("ckpt{seed}"), config, seed);
        ["config.json", "model.safetensors", "vocab.json", "merges.txt"]
            .iter()
            .map(|f| (f.to_string(), std::fs::read(dir.join(f)).unwrap()))
            .collect()
    };
    r.insert("models/testorg/series".into(), files(10));
    // Both checkpoints' branches hold only pytorch_model.bin: this one written by the test helper
    // (PyTorch's zip layout, from the same weights as main's safetensors).
    let mut first = files(10);
    let st = env.tmp.path().join("ckpt10/model.safetensors");
    let bin10 = env.tmp.path().join("ckpt10.bin");
    torch_bin::write_pytorch_bin(&bin10, &torch_bin::read_safetensors_f32(&st));
    first.remove("model.safetensors");
    first.insert("pytorch_model.bin".into(), std::fs::read(&bin10).unwrap());
    r.insert("models/testorg/series@checkpoint-10".into(), first);
    // The later checkpoint has only PyTorch weights (torch.save, as the CRFM runs' branches do).
    let mut bin = files(11);
    bin.remove("model.safetensors");
    let bin_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-gpt2-bin/gpt2-vocab");
    for f in ["config.json", "pytorch_model.bin"] {
        bin.insert(f.to_string(), std::fs::read(bin_dir.join(f)).unwrap());
    }
    r.insert("models/testorg/series@checkpoint-200".into(), bin);
    let hub = FakeHub::start(r, Rules::default());
    let text_file = env.tmp.path().join("corpus.txt");
    std::fs::write(&text_file, "To be, or not to be, that is the question. ".repeat(40)).unwrap();
    let pipeline = |name: &str, model: &str| series_pipeline(env.tmp.path(), name, model, "probes = 1");
    let run = |p: &PathBuf, out: &str| env.agop(&hub.endpoint(), &["run", p.to_str().unwrap(), "--out", out], &[]);
    let out = env.tmp.path().join("series-out");
    let series = pipeline("series", "id = \"testorg/series\"\nrevisions = [\"checkpoint-10\", \"checkpoint-200\"]");
    let o = run(&series, out.to_str().unwrap());
    assert!(o.status.success(), "{}", text(&o));
    let df = agop::util::parquet::read_parquet(&out.join("correlations.parquet")).unwrap();
    let col_s = |n: &str| -> Vec<Option<String>> {
        df.column(n).unwrap().str().unwrap().iter().map(|x| x.map(String::from)).collect()
    };
    let (weights, nfm, revision, metric) = (col_s("weights"), col_s("nfm"), col_s("revision"), col_s("metric"));
    let step: Vec<Option<u64>> = df.column("step").unwrap().u64().unwrap().iter().collect();
    let value: Vec<Option<f64>> = df.column("value").unwrap().f64().unwrap().iter().collect();
    let n = df.height();
    let count = |f: &dyn Fn(usize) -> bool| (0..n).filter(|&i| f(i)).count();
    // Per checkpoint: gram and delta-gram rows (delta-gram without the subspace rows, which are
    // the NFM's only); random-init once, gram only, no step.
    let per = count(&|i| weights[i].as_deref() == Some("random-init"));
    let subspace = |i: usize| metric[i].as_deref().is_some_and(|m| m.starts_with("subspace-"));
    let per_delta = count(&|i| weights[i].as_deref() == Some("random-init") && !subspace(i));
    assert!(per > per_delta && per_delta > 0);
    for s in [10u64, 200] {
        assert_eq!(count(&|i| step[i] == Some(s) && nfm[i].as_deref() == Some("gram")), per);
        assert_eq!(count(&|i| step[i] == Some(s) && nfm[i].as_deref() == Some("delta-gram")), per_delta);
        let want = branch_commit(&format!("checkpoint-{s}"));
        assert!((0..n).filter(|&i| step[i] == Some(s)).all(|i| revision[i].as_deref() == Some(want.as_str())));
    }
    assert_eq!(count(&|i| weights[i].as_deref() == Some("random-init") && step[i].is_none()), per);
    // The first checkpoint's ΔNFM is zero: undefined; the second's is not.
    assert!((0..n)
        .filter(|&i| step[i] == Some(10) && nfm[i].as_deref() == Some("delta-gram"))
        .all(|i| value[i].is_none()));
    assert!((0..n)
        .filter(|&i| step[i] == Some(200) && nfm[i].as_deref() == Some("delta-gram"))
        .all(|i| value[i].is_some()));
    assert!(out.join("plots/by-step-power1.png").is_file());
    // Each checkpoint was measured from its .bin (the fingerprint is that file's).
    let g = agop::measure::Gop::load(&out.join("gop-pretrained@checkpoint-200.safetensors")).unwrap();
    assert_eq!(g.meta.model_sha256, agop::util::hash::sha256_files(&[bin_dir.join("pytorch_model.bin")]).unwrap());
    let g = agop::measure::Gop::load(&out.join("gop-pretrained@checkpoint-10.safetensors")).unwrap();
    assert_eq!(g.meta.model_sha256, agop::util::hash::sha256_files(std::slice::from_ref(&bin10)).unwrap());

    // The same revision measured alone gives the same rows (value and se).
    let alone_out = env.tmp.path().join("alone-out");
    let alone = pipeline("alone", "id = \"testorg/series\"\nrevision = \"checkpoint-200\"");
    let o = run(&alone, alone_out.to_str().unwrap());
    assert!(o.status.success(), "{}", text(&o));
    let a = agop::util::parquet::read_parquet(&alone_out.join("correlations.parquet")).unwrap();
    let pick = |d: &polars::prelude::DataFrame, c: &str, rows: &[usize]| -> Vec<Option<f64>> {
        let v: Vec<Option<f64>> = d.column(c).unwrap().f64().unwrap().iter().collect();
        rows.iter().map(|&i| v[i]).collect()
    };
    let series_rows: Vec<usize> =
        (0..n).filter(|&i| step[i] == Some(200) && nfm[i].as_deref() == Some("gram")).collect();
    let aw: Vec<Option<String>> =
        a.column("weights").unwrap().str().unwrap().iter().map(|x| x.map(String::from)).collect();
    let alone_rows: Vec<usize> = (0..a.height()).filter(|&i| aw[i].as_deref() == Some("pretrained")).collect();
    for c in ["value", "se", "ci_low", "ci_high"] {
        assert_eq!(pick(&df, c, &series_rows), pick(&a, c, &alone_rows), "column {c}");
    }

    // As Slurm jobs: the scripts of `agop slurm --shards 2`, each array task run by hand with its
    // SLURM_ARRAY_TASK_ID (one task per (checkpoint, shard) for the series), then reduce: the same
    // table as the single-process run.
    let slurm_out = env.tmp.path().join("slurm-out");
    let o = env.agop(
        &hub.endpoint(),
        &["slurm", series.to_str().unwrap(), "--shards", "2", "--out", slurm_out.to_str().unwrap()],
        &[],
    );
    assert!(o.status.success(), "{}", text(&o));
    let script = |name: &str| slurm_out.join("slurm").join(format!("{name}.sbatch"));
    let measure_text = std::fs::read_to_string(script("measure-pretrained")).unwrap();
    assert!(measure_text.contains("#SBATCH --array=0-3") && measure_text.contains("--checkpoint"), "{measure_text}");
    let bash = |name: &str, task: Option<usize>| {
        let mut c = Command::new("bash");
        c.arg(script(name))
            .env("HF_ENDPOINT", hub.endpoint())
            .env("HF_HUB_CACHE", env.cache())
            .env("HF_HOME", env.tmp.path().join("hf-home"));
        if let Some(t) = task {
            c.env("SLURM_ARRAY_TASK_ID", t.to_string());
        }
        let o = c.output().unwrap();
        assert!(o.status.success(), "{name} {task:?}: {}", text(&o));
    };
    bash("prepare", None);
    for t in 0..4 {
        bash("measure-pretrained", Some(t));
    }
    for t in 0..2 {
        bash("measure-random-init", Some(t));
    }
    bash("reduce", None);
    let sl = agop::util::parquet::read_parquet(&slurm_out.join("correlations.parquet")).unwrap();
    assert_eq!(sl.height(), n);
    let (sv, dv) = (pick(&sl, "value", &(0..n).collect::<Vec<_>>()), pick(&df, "value", &(0..n).collect::<Vec<_>>()));
    let worst = sv.iter().zip(&dv).filter_map(|(a, b)| Some((a.as_ref()? - b.as_ref()?).abs())).fold(0.0, f64::max);
    assert!(worst < 1e-9, "slurm vs single process: {worst}");
    assert_eq!(sv.iter().filter(|v| v.is_none()).count(), dv.iter().filter(|v| v.is_none()).count());

    // A branch that does not exist: exit 2 naming it; the checkpoint before it is kept.
    let bad_out = env.tmp.path().join("bad-out");
    let bad = pipeline("bad", "id = \"testorg/series\"\nrevisions = [\"checkpoint-10\", \"checkpoint-999\"]");
    let o = run(&bad, bad_out.to_str().unwrap());
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("checkpoint-999"), "{}", text(&o));
    assert!(bad_out.join("gop-pretrained@checkpoint-10.safetensors").is_file());

    // keep_checkpoints = false: each later checkpoint is measured, correlated and deleted from the
    // cache; the table equals the run that kept them, and a re-run needs neither the weights nor
    // the hub.
    let evict_out = env.tmp.path().join("evict-out");
    let evict = pipeline(
        "evict",
        "id = \"testorg/series\"\nrevisions = [\"checkpoint-10\", \"checkpoint-200\"]\nkeep_checkpoints = false",
    );
    let o = run(&evict, evict_out.to_str().unwrap());
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("[evict pretrained@checkpoint-200]"), "{}", text(&o));
    let snapshot = |branch: &str| env.cache().join("models--testorg--series/snapshots").join(branch_commit(branch));
    assert!(
        !snapshot("checkpoint-200").join("pytorch_model.bin").exists(),
        "the checkpoint's weights are still cached"
    );
    assert!(snapshot("checkpoint-200").join("config.json").is_file());
    assert!(snapshot("checkpoint-10").join("pytorch_model.bin").is_file(), "the first checkpoint (the base) is kept");
    let keyed = |d: &polars::prelude::DataFrame| -> BTreeMap<String, (Option<f64>, Option<f64>)> {
        let s = |c: &str| -> Vec<String> {
            let col = d.column(c).unwrap().cast(&polars::prelude::DataType::String).unwrap();
            col.str().unwrap().iter().map(|x| x.unwrap_or("-").to_string()).collect()
        };
        let cols: Vec<Vec<String>> =
            ["weights", "step", "layer", "module", "head", "power", "metric", "ansatz", "nfm", "revision"]
                .iter()
                .map(|c| s(c))
                .collect();
        let (v, se) = (
            pick(d, "value", &(0..d.height()).collect::<Vec<_>>()),
            pick(d, "se", &(0..d.height()).collect::<Vec<_>>()),
        );
        (0..d.height())
            .map(|i| (cols.iter().map(|c| c[i].as_str()).collect::<Vec<_>>().join("|"), (v[i], se[i])))
            .collect()
    };
    let ev = agop::util::parquet::read_parquet(&evict_out.join("correlations.parquet")).unwrap();
    assert_eq!(ev.height(), n);
    assert_eq!(keyed(&ev), keyed(&df), "keep_checkpoints = false changed the table");
    assert!(
        !evict_out.join("contrasts.parquet").exists(),
        "a series with evicted checkpoints has no contrasts (their tables hold no leave-one-out values)"
    );
    // Re-run offline: every stage up to date, the deleted weights not fetched again.
    let o = env.agop(
        &hub.endpoint(),
        &["run", evict.to_str().unwrap(), "--out", evict_out.to_str().unwrap()],
        &[("HF_HUB_OFFLINE", "1")],
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("is up to date") && !text(&o).contains("[evict"), "{}", text(&o));
    assert!(!snapshot("checkpoint-200").join("pytorch_model.bin").exists());
    // Not for clusters: agop slurm refuses it, saying why.
    let o = env.agop(&hub.endpoint(), &["slurm", evict.to_str().unwrap(), "--shards", "2"], &[]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("keep_checkpoints = false is for single-process runs"), "{}", text(&o));
}

/// A Pythia-style series on the hub: a GPT-NeoX repository with branches `step0`, `step512` and
/// `step1000` (`revision_format = "step{step}"`), a tokenizer.json, and `step1000` a byte-identical
/// copy of `step512` (as some real Pythia branches are). Every checkpoint is measured; the copy
/// is reported ("identical weights", on stderr and in the report) and kept, its rows equal to
/// step512's; and each checkpoint's rows equal a pipeline measuring that revision alone.
#[test]
fn pythia_style_series_from_hub_branches() {
    let env = Env::new();
    let neox = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/neox/parallel");
    // A second set of weights: the fixture's, every tensor scaled by 1.1 (safetensors rewritten).
    let st = std::fs::read(neox.join("model.safetensors")).unwrap();
    let parsed = safetensors::SafeTensors::deserialize(&st).unwrap();
    let scaled: Vec<(String, Vec<u8>, Vec<usize>)> = parsed
        .tensors()
        .into_iter()
        .map(|(n, v)| {
            let x: Vec<u8> = v
                .data()
                .chunks_exact(4)
                .flat_map(|b| (f32::from_le_bytes(b.try_into().unwrap()) * 1.1).to_le_bytes())
                .collect();
            (n, x, v.shape().to_vec())
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView)> = scaled
        .iter()
        .map(|(n, x, s)| {
            (n.clone(), safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), x).unwrap())
        })
        .collect();
    let st2 = safetensors::serialize(views, None).unwrap();
    // A word-level tokenizer whose ids fit the fixture's vocabulary of 100.
    let words = ["To", "be", ",", "or", "not", "to", "that", "is", "the", "question", "."];
    let mut vocab = serde_json::json!({"<|endoftext|>": 0, "[UNK]": 1});
    for (i, w) in words.iter().enumerate() {
        vocab[*w] = serde_json::json!(i + 2);
    }
    let tokenizer = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": [{"id": 0, "content": "<|endoftext|>", "single_word": false, "lstrip": false,
                          "rstrip": false, "normalized": false, "special": true}],
        "normalizer": null, "pre_tokenizer": {"type": "Whitespace"}, "post_processor": null, "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "[UNK]"}
    })
    .to_string();
    let files = |weights: &[u8]| -> BTreeMap<String, Vec<u8>> {
        let mut f = BTreeMap::new();
        f.insert("config.json".to_string(), std::fs::read(neox.join("config.json")).unwrap());
        f.insert("model.safetensors".to_string(), weights.to_vec());
        f.insert("tokenizer.json".to_string(), tokenizer.clone().into_bytes());
        f
    };
    let mut r = repos(env.tmp.path());
    r.insert("models/testorg/pythia".into(), files(&st2));
    r.insert("models/testorg/pythia@step0".into(), files(&st));
    r.insert("models/testorg/pythia@step512".into(), files(&st2));
    r.insert("models/testorg/pythia@step1000".into(), files(&st2));
    let hub = FakeHub::start(r, Rules::default());
    std::fs::write(env.tmp.path().join("corpus.txt"), "To be, or not to be, that is the question. ".repeat(40))
        .unwrap();
    let pipeline = |name: &str, model: &str| series_pipeline(env.tmp.path(), name, model, "probes = 2\nfact = true");
    let run = |p: &PathBuf, out: &Path| {
        env.agop(&hub.endpoint(), &["run", p.to_str().unwrap(), "--out", out.to_str().unwrap()], &[])
    };
    let out = env.tmp.path().join("series");
    let series =
        pipeline("series", "id = \"testorg/pythia\"\nrevision_format = \"step{step}\"\nsteps = [0, 512, 1000]");
    let o = run(&series, &out);
    assert!(o.status.success(), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("identical weights") && err.contains("step512") && err.contains("step1000"), "{err}");
    let report = String::from_utf8_lossy(&o.stdout).split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(report.contains("WARNING: identical weights: checkpoints step512 and step1000"), "{report}");
    assert!(report.contains("attention.query_key_value"), "{report}");
    let df = read_parquet(&out.join("correlations.parquet")).unwrap();
    let keyed = |d: &polars::prelude::DataFrame, step: Option<u64>, weights: &str| -> BTreeMap<String, Option<f64>> {
        let s = |c: &str| -> Vec<String> {
            let col = d.column(c).unwrap().cast(&polars::prelude::DataType::String).unwrap();
            col.str().unwrap().iter().map(|x| x.unwrap_or("-").to_string()).collect()
        };
        let (w, st, nfm) = (s("weights"), s("step"), s("nfm"));
        let keys: Vec<Vec<String>> =
            ["layer", "module", "head", "power", "metric", "ansatz"].iter().map(|c| s(c)).collect();
        let v: Vec<Option<f64>> = d.column("value").unwrap().f64().unwrap().iter().collect();
        let want_step = step.map(|x| x.to_string()).unwrap_or("-".into());
        (0..d.height())
            .filter(|&i| w[i] == weights && st[i] == want_step && nfm[i] == "gram")
            .map(|i| (keys.iter().map(|k| k[i].as_str()).collect::<Vec<_>>().join("|"), v[i]))
            .collect()
    };
    let s512 = keyed(&df, Some(512), "pretrained");
    assert!(!s512.is_empty());
    assert_eq!(s512, keyed(&df, Some(1000), "pretrained"), "identical weights, identical rows");
    assert_ne!(s512, keyed(&df, Some(0), "pretrained"));
    let revisions: Vec<Option<&str>> = df.column("revision").unwrap().str().unwrap().iter().collect();
    assert!(revisions.contains(&Some(branch_commit("step512").as_str())), "each run records its commit");
    // Each revision alone gives the same rows.
    for step in [0u64, 512] {
        let alone = env.tmp.path().join(format!("alone{step}"));
        let p = pipeline(&format!("alone{step}"), &format!("id = \"testorg/pythia\"\nrevision = \"step{step}\""));
        let o = run(&p, &alone);
        assert!(o.status.success(), "{}", text(&o));
        let a = read_parquet(&alone.join("correlations.parquet")).unwrap();
        assert_eq!(keyed(&a, None, "pretrained"), keyed(&df, Some(step), "pretrained"), "step {step} alone");
    }
}
