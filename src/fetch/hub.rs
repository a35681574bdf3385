//! Models and datasets on the Hugging Face hub, through hf-hub's blocking client and the
//! standard cache (`HF_HUB_CACHE`, `HF_HOME`), so files Python tools downloaded are reused.
//! `HF_ENDPOINT` and `HF_TOKEN` are read by hf-hub; `HF_HUB_OFFLINE=1` is honoured here: no
//! request is made, files come from the cache or the command fails saying so.
//!
//! Integrity: a cached LFS file is stored as `blobs/<sha256>` (the hub's ETag); after every
//! download or cache hit the file's sha256 is checked against that name. A mismatch (a corrupted
//! cache, a truncated transfer) is re-fetched once, or reported when offline.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::Result;
use hf_hub::progress::{DownloadEvent, ProgressEvent, ProgressHandler};
use hf_hub::{HFClientSync, HFError, HFRepositorySync, RepoType};

use super::resolve::ResolvedModel;
use crate::model::ModelConfig;
use crate::util::{progress_bar, sha256_file};
use crate::{bad, bail_bad};

/// Is `HF_HUB_OFFLINE` set to a true value?
pub fn offline() -> bool {
    std::env::var("HF_HUB_OFFLINE")
        .map(|v| matches!(v.trim().to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"))
        .unwrap_or(false)
}

/// The hub endpoint in use.
pub fn endpoint() -> String {
    std::env::var("HF_ENDPOINT").unwrap_or_else(|_| "https://huggingface.co".into())
}

/// The cache folder in use.
pub fn cache_dir() -> PathBuf {
    hf_hub::resolve_cache_dir()
}

fn client() -> Result<HFClientSync> {
    HFClientSync::new().map_err(|e| bad!("cannot set up the Hugging Face hub client: {e}"))
}

/// Translate an hf-hub error into a message that says what was wrong and what to do.
fn explain(e: HFError, what: &str) -> anyhow::Error {
    let ep = endpoint();
    match e {
        HFError::RepoNotFound { .. } => bad!("{what}: repository not found on {ep} (404); check the id, or set HF_TOKEN if it is private"),
        HFError::EntryNotFound { path, .. } => bad!("{what}: file {path} not found (404)"),
        HFError::RevisionNotFound { revision, .. } => bad!("{what}: revision {revision} not found (404)"),
        HFError::AuthRequired { .. } => bad!("{what}: authentication required (401); set HF_TOKEN to a token with access to this repository"),
        HFError::Forbidden { .. } => bad!("{what}: access forbidden (403); the token in HF_TOKEN has no access (gated repository: accept its terms on the hub)"),
        HFError::LocalEntryNotFound { path } => bad!(
            "{what}: {path} is not in the cache {} and HF_HUB_OFFLINE is set; run once with network (or unset HF_HUB_OFFLINE)",
            cache_dir().display()
        ),
        // Not bad input but a failure that may pass (network, rate limit): exit 1, which a job
        // wrapper may retry.
        other @ (HFError::Request { .. } | HFError::Io(_) | HFError::Http { .. } | HFError::RateLimited { .. }) => anyhow::anyhow!(
            "{what}: cannot reach the Hugging Face hub at {ep}: {other}. Without network: use a local model directory \
             (`--model DIR` for fetch, tokenize, measure and correlate; for `agop run`, id = \"DIR\" under [model] in \
             a pipeline file; DIR holds config.json and model.safetensors), point HF_ENDPOINT at a reachable mirror, or \
             set HF_HUB_OFFLINE=1 to use files already in the cache ({}). To see agop work with no network at all: \
             `agop run pipelines/shakespeare-train.toml` (trains a small GPT-2 here) or `agop run pipelines/tiny.toml`",
            cache_dir().display()
        ),
        other => bad!("{what}: {other}"),
    }
}

/// Download progress as an indicatif bar (hidden when stderr is not a terminal).
struct Bar(Mutex<Option<indicatif::ProgressBar>>, String);

impl ProgressHandler for Bar {
    fn on_progress(&self, event: &ProgressEvent) {
        let ProgressEvent::Download(ev) = event else { return };
        let mut slot = self.0.lock().unwrap();
        match ev {
            DownloadEvent::Start { total_bytes, .. } => {
                *slot = Some(progress_bar(*total_bytes, true, &self.1, "bytes"));
            }
            DownloadEvent::Progress { files } => {
                if let Some(b) = slot.as_ref() {
                    if let Some(f) = files.last() {
                        b.set_position(f.bytes_completed);
                    }
                }
            }
            DownloadEvent::AggregateProgress { bytes_completed, .. } => {
                if let Some(b) = slot.as_ref() {
                    b.set_position(*bytes_completed);
                }
            }
            DownloadEvent::Complete => {
                if let Some(b) = slot.take() {
                    b.finish_and_clear();
                }
            }
        }
    }
}

/// The blob (content) name of a cached snapshot file: the ETag for LFS files.
fn blob_name(snapshot_file: &Path) -> Option<String> {
    let target = std::fs::read_link(snapshot_file).ok()?;
    target.file_name().map(|n| n.to_string_lossy().into_owned())
}

/// Does the cached file match its sha256 ETag? (Files whose ETag is not a sha256 pass.)
fn verify(snapshot_file: &Path) -> Result<std::result::Result<(), String>> {
    let Some(etag) = blob_name(snapshot_file) else { return Ok(Ok(())) };
    if etag.len() != 64 || !etag.chars().all(|c| c.is_ascii_hexdigit()) {
        return Ok(Ok(()));
    }
    let got = sha256_file(snapshot_file)?;
    Ok(if got == etag.to_ascii_lowercase() {
        Ok(())
    } else {
        Err(format!("sha256 {got} but the hub's ETag is {etag}"))
    })
}

/// Download one file of a repository into the cache (or find it there), checked against its
/// ETag; `Ok(None)` when the repository has no such file (404).
fn fetch_optional<T: RepoType>(
    repo: &HFRepositorySync<T>,
    what: &str,
    file: &str,
    revision: &str,
) -> Result<Option<PathBuf>> {
    let get = |force: bool| -> Result<Option<PathBuf>> {
        let sent = repo
            .download_file()
            .filename(file)
            .revision(revision.to_string())
            .local_files_only(offline())
            .force_download(force)
            .progress(hf_hub::progress::Progress::new(Bar(Mutex::new(None), file.to_string())))
            .send();
        match sent {
            Ok(p) => Ok(Some(p)),
            Err(HFError::EntryNotFound { .. }) => Ok(None),
            Err(e) => Err(explain(e, what)),
        }
    };
    let Some(path) = get(false)? else { return Ok(None) };
    if let Err(why) = verify(&path)? {
        if offline() {
            bail_bad!(
                "{what}: the cached {file} is corrupted ({why}); HF_HUB_OFFLINE is set, so it cannot be re-fetched"
            );
        }
        eprintln!("warning: cached {file} of {what} is corrupted ({why}); downloading it again");
        let blob = std::fs::canonicalize(&path).unwrap_or_else(|_| path.clone());
        let _ = std::fs::remove_file(&blob);
        let _ = std::fs::remove_file(&path);
        let path = get(true)?.ok_or_else(|| bad!("{what}: file {file} not found (404)"))?;
        if let Err(why) = verify(&path)? {
            let _ = std::fs::remove_file(std::fs::canonicalize(&path).unwrap_or_else(|_| path.clone()));
            let _ = std::fs::remove_file(&path);
            bail_bad!(
                "{what}: downloaded {file} does not match the hub ({why}); the transfer was truncated or corrupted"
            );
        }
        return Ok(Some(path));
    }
    Ok(Some(path))
}

/// [`fetch_optional`] for a file that must exist.
fn fetch<T: RepoType>(repo: &HFRepositorySync<T>, what: &str, file: &str, revision: &str) -> Result<PathBuf> {
    fetch_optional(repo, what, file, revision)?.ok_or_else(|| bad!("{what}: file {file} not found (404)"))
}

/// Resolve a hub model id to a local snapshot directory: config.json (checked to be GPT-2
/// before the weights are fetched), model.safetensors or its sharded index and shards, and the
/// tokenizer (tokenizer.json, or vocab.json + merges.txt) when the repository has one.
pub fn resolve_model(id: &str, revision: Option<&str>) -> Result<ResolvedModel> {
    if id.is_empty() || id.starts_with('/') || id.starts_with('.') || id.split('/').count() > 2 {
        bail_bad!("--model {id}: no such local directory, and not a hub id (owner/name or name)");
    }
    let rev = revision.unwrap_or("main");
    let what = format!("model {id}@{rev}");
    let client = client()?;
    let (owner, name) = hf_hub::split_id(id);
    let repo = client.model(owner, name);
    let config = fetch(&repo, &what, "config.json", rev)?;
    ModelConfig::from_file(&config)?;
    let dir = config.parent().map(Path::to_path_buf).unwrap_or_default();
    let commit = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| rev.to_string());
    // Pin every later request to the resolved commit.
    let what = format!("model {id}@{commit}");
    // Weights: safetensors when the repository has them, else PyTorch's pytorch_model.bin
    // (single or sharded); each file checked against its ETag as it arrives.
    let mut found = false;
    for (single, index) in
        [("model.safetensors", "model.safetensors.index.json"), ("pytorch_model.bin", "pytorch_model.bin.index.json")]
    {
        if fetch_optional(&repo, &what, single, &commit)?.is_some() {
            found = true;
            break;
        }
        if let Some(index) = fetch_optional(&repo, &what, index, &commit)? {
            for shard in crate::model::weights::index_files(&index)? {
                let f = shard.file_name().unwrap().to_string_lossy().into_owned();
                fetch(&repo, &what, &f, &commit)?;
            }
            found = true;
            break;
        }
    }
    if !found {
        bail_bad!(
            "{what}: has no weights (model.safetensors, model.safetensors.index.json, pytorch_model.bin or \
             pytorch_model.bin.index.json)"
        );
    }
    // The tokenizer: tokenizer.json, else vocab.json + merges.txt. What the snapshot already
    // holds is used first, so a cached model needs no request for a file the repo lacks.
    let has = |f: &str| dir.join(f).is_file();
    let pair = || -> Result<bool> {
        Ok(fetch_optional(&repo, &what, "vocab.json", &commit)?.is_some()
            && fetch_optional(&repo, &what, "merges.txt", &commit)?.is_some())
    };
    let tokenizer_ok = if has("tokenizer.json") || !(has("vocab.json") && has("merges.txt")) {
        fetch_optional(&repo, &what, "tokenizer.json", &commit)?.is_some() || pair()?
    } else {
        pair()?
    };
    if !tokenizer_ok {
        eprintln!("note: {what} has no tokenizer files; `tokenize` will need another model directory");
    }
    Ok(ResolvedModel::new(id.to_string(), commit, dir))
}

/// Delete a hub model's weights from the cache: each weights file's snapshot link and the blob it
/// points to (config and tokenizer stay, so the snapshot still names its commit; a later
/// resolve fetches the weights again). Refuses a folder outside the hub cache: a local model is
/// never deleted.
///
/// Nothing another checkpoint can still need is touched: when `m` is `keep`'s snapshot (a later
/// revision at the same commit, e.g. `main` = the first checkpoint), nothing is deleted; a link
/// is removed only from `m`'s own snapshot, and a blob only when no file of any other snapshot of
/// the repository points to it (the hub cache shares one blob between commits with equal files).
/// Returns the bytes freed.
pub fn evict_weights(m: &ResolvedModel, keep: &ResolvedModel) -> Result<u64> {
    evict_weights_in(&cache_dir(), m, keep)
}

/// [`evict_weights`] with the cache folder given (tests use a folder of their own).
pub fn evict_weights_in(cache: &Path, m: &ResolvedModel, keep: &ResolvedModel) -> Result<u64> {
    let canon = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    let cache = canon(cache);
    let dir = canon(&m.dir);
    if m.revision == "local" || !dir.starts_with(&cache) {
        anyhow::bail!("{} is not in the hub cache {}; its weights are not deleted", m.dir.display(), cache.display());
    }
    if dir == canon(&keep.dir) {
        return Ok(0);
    }
    // Blobs that a file of another snapshot of this repository points to (the snapshots folder is
    // the parent of every commit's folder).
    let mut shared = std::collections::HashSet::new();
    if let Some(snapshots) = dir.parent() {
        for snap in std::fs::read_dir(snapshots)?.flatten() {
            let snap = canon(&snap.path());
            if snap == dir {
                continue;
            }
            let mut stack = vec![snap];
            while let Some(d) = stack.pop() {
                for e in std::fs::read_dir(&d)?.flatten() {
                    let p = e.path();
                    let target = canon(&p);
                    if target.is_dir() {
                        stack.push(p);
                    } else {
                        shared.insert(target);
                    }
                }
            }
        }
    }
    let kept: std::collections::HashSet<PathBuf> =
        crate::model::weights::weights_files(&keep.dir).unwrap_or_default().iter().map(|f| canon(f)).collect();
    let mut freed = 0;
    for f in crate::model::weights::weights_files(&m.dir)? {
        let blob = canon(&f);
        let size = std::fs::metadata(&blob).map(|md| md.len()).unwrap_or(0);
        if !std::fs::symlink_metadata(&f)?.file_type().is_symlink() {
            freed += size; // a plain file in the snapshot: removing it frees it
        } else if blob.starts_with(&cache) && !shared.contains(&blob) && !kept.contains(&blob) {
            freed += size;
            std::fs::remove_file(&blob)?;
        }
        std::fs::remove_file(&f)?;
    }
    Ok(freed)
}

/// A parsed `hf://datasets/{owner}/{name}[@revision]/{path or glob}`.
#[derive(Debug, Clone, PartialEq)]
pub struct DatasetPath {
    pub repo: String,
    pub revision: String,
    pub path: String,
}

impl DatasetPath {
    pub fn parse(src: &str) -> Result<Self> {
        let rest = src
            .strip_prefix("hf://datasets/")
            .ok_or_else(|| bad!("{src}: expected hf://datasets/{{owner}}/{{name}}[@revision]/{{path or glob}}"))?;
        let mut parts = rest.splitn(3, '/');
        let (owner, name, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        if owner.is_empty() || name.is_empty() || path.is_empty() {
            bail_bad!("{src}: expected hf://datasets/{{owner}}/{{name}}[@revision]/{{path or glob}}");
        }
        let (name, revision) = match name.split_once('@') {
            Some((n, r)) => (n, r.to_string()),
            None => (name, "main".to_string()),
        };
        Ok(Self { repo: format!("{owner}/{name}"), revision, path: path.to_string() })
    }

    fn is_glob(&self) -> bool {
        self.path.contains(['*', '?', '['])
    }
}

/// Resolve an `hf://datasets/...` source to local files (sorted by path in the repository):
/// globs through the hub's tree listing, or, offline, through the cached snapshot.
pub fn resolve_dataset_files(src: &str) -> Result<Vec<PathBuf>> {
    let ds = DatasetPath::parse(src)?;
    let what = format!("dataset {}@{}", ds.repo, ds.revision);
    let client = client()?;
    let (owner, name) = hf_hub::split_id(&ds.repo);
    let repo = client.dataset(owner, name);
    let files: Vec<String> = if !ds.is_glob() {
        vec![ds.path.clone()]
    } else {
        let pattern = glob::Pattern::new(&ds.path).map_err(|e| bad!("{src}: bad glob: {e}"))?;
        let mut names: Vec<String> = if offline() {
            cached_dataset_files(&ds)?
        } else {
            repo.list_tree()
                .revision(ds.revision.clone())
                .recursive(true)
                .send()
                .map_err(|e| explain(e, &what))?
                .into_iter()
                .filter_map(|e| match e {
                    hf_hub::repository::RepoTreeEntry::File { path, .. } => Some(path),
                    _ => None,
                })
                .collect()
        };
        names.retain(|p| pattern.matches(p));
        names.sort();
        if names.is_empty() {
            bail_bad!("{src}: no file of {what} matches {}", ds.path);
        }
        names
    };
    files.iter().map(|f| fetch(&repo, &what, f, &ds.revision)).collect()
}

/// Files of a cached dataset snapshot (offline glob resolution).
fn cached_dataset_files(ds: &DatasetPath) -> Result<Vec<String>> {
    let folder = cache_dir().join(format!("datasets--{}", ds.repo.replace('/', "--")));
    let commit = if ds.revision.len() == 40 && ds.revision.chars().all(|c| c.is_ascii_hexdigit()) {
        ds.revision.clone()
    } else {
        std::fs::read_to_string(folder.join("refs").join(&ds.revision)).map(|s| s.trim().to_string()).map_err(|_| {
            bad!(
                "dataset {}@{}: not in the cache {} and HF_HUB_OFFLINE is set",
                ds.repo,
                ds.revision,
                cache_dir().display()
            )
        })?
    };
    let snap = folder.join("snapshots").join(commit);
    let mut out = Vec::new();
    let mut stack = vec![snap.clone()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d)? {
            let p = e?.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(rel) = p.strip_prefix(&snap) {
                out.push(rel.to_string_lossy().replace('\\', "/"));
            }
        }
    }
    Ok(out)
}
