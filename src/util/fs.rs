//! Atomic writes: a reader never sees a half-written file under its final name.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// Write `bytes` to `path` through a temporary file in the same folder, then rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic_with(path, |f| Ok(f.write_all(bytes)?))
}

/// Like [`write_atomic`], with a writer callback.
pub fn write_atomic_with(path: &Path, write: impl FnOnce(&mut File) -> Result<()>) -> Result<()> {
    write_atomic_path(path, |tmp| {
        let mut f = File::create(tmp).with_context(|| format!("creating {}", tmp.display()))?;
        write(&mut f)
    })
}

/// Like [`write_atomic`], for a writer that wants a path: `write(tmp)` creates the temporary
/// file, which is then synced and renamed to `path` (or removed if anything failed).
pub fn write_atomic_path(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let tmp = tmp_name(path);
    let result = (|| {
        // The mode a file created here gets (0644 under the usual umask): a writer that makes
        // its file another way (safetensors 0.8 renames a private 0600 temporary file onto
        // `tmp`) must not leave a model others on a shared cluster cannot read.
        let mode = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?.metadata()?.permissions();
        write(&tmp)?;
        std::fs::set_permissions(&tmp, mode)?;
        File::open(&tmp)?.sync_all()?;
        std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

fn tmp_name(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp{}", std::process::id()))
}

/// Check an output path before any work: it is not one of `inputs` (the same file under
/// another name included), not inside an input folder, not a folder, and its folder can be
/// written (created if missing; a probe file is written and removed). `flag` names the option
/// in messages (`--out`). All failures are bad input naming the path.
pub fn check_output(out: &Path, flag: &str, inputs: &[PathBuf]) -> Result<()> {
    let canon = |p: &Path| std::fs::canonicalize(p).ok();
    if out.is_dir() {
        crate::bail_bad!("{flag} {} is a folder; give a file name", out.display());
    }
    let parent = folder_of(out);
    // Compare through the canonical folder (the file itself may not exist yet).
    let out_full = canon(&parent).map(|d| d.join(out.file_name().unwrap_or_default()));
    for input in inputs {
        // An input that does not exist (a protected name, another output of the same command)
        // is compared through its folder.
        let inp = match canon(input) {
            Some(c) => c,
            None => match (canon(&folder_of(input)), input.file_name()) {
                (Some(d), Some(n)) => d.join(n),
                _ => continue,
            },
        };
        if out_full.as_ref().is_some_and(|o| *o == inp || canon(o).is_some_and(|c| c == inp)) {
            crate::bail_bad!(
                "{flag} {} is also an input or another output of this command ({}); write it elsewhere",
                out.display(),
                input.display()
            );
        }
    }
    check_output_dir(out, flag, inputs)?;
    check_not_model_file(out, flag)?;
    std::fs::create_dir_all(&parent)
        .map_err(|e| crate::bad!("{flag} {}: cannot create its folder {}: {e}", out.display(), parent.display()))?;
    let probe = parent.join(format!(".agop-write-probe{}", std::process::id()));
    match File::create(&probe) {
        Ok(_) => {
            let _ = std::fs::remove_file(&probe);
            Ok(())
        }
        Err(e) => crate::bail_bad!("{flag} {}: its folder {} is not writable: {e}", out.display(), parent.display()),
    }
}

/// The files of a model folder (Hugging Face layout, nanoGPT's `ckpt.pt`), and the names that
/// would become one of them there (a `model.safetensors` beside `pytorch_model.bin` is loaded
/// instead of it).
fn is_model_file(name: &str) -> bool {
    const NAMES: [&str; 12] = [
        "config.json",
        "model.safetensors",
        "model.safetensors.index.json",
        "pytorch_model.bin",
        "pytorch_model.bin.index.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "generation_config.json",
        "vocab.json",
        "merges.txt",
        "ckpt.pt",
    ];
    // Shards of a sharded checkpoint: `model-00001-of-00002.safetensors`.
    let shard = |prefix: &str, ext: &str| {
        let numbers = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        name.strip_prefix(prefix)
            .and_then(|r| r.strip_suffix(ext))
            .and_then(|r| r.split_once("-of-"))
            .is_some_and(|(k, n)| numbers(k) && numbers(n))
    };
    NAMES.contains(&name) || shard("model-", ".safetensors") || shard("pytorch_model-", ".bin")
}

/// An output may not be (or become) a file of a model folder (one that holds `config.json` or
/// `ckpt.pt`): the model would load it as its own.
fn check_not_model_file(out: &Path, flag: &str) -> Result<()> {
    // The folder the file will be in, as the system resolves it (`m/sub/../model.safetensors`).
    let dir = resolved(out).and_then(|p| p.parent().map(Path::to_path_buf)).unwrap_or_else(|| folder_of(out));
    let name = out.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    if is_model_file(&name) && (dir.join("config.json").is_file() || dir.join("ckpt.pt").is_file()) {
        crate::bail_bad!(
            "{flag} {}: {} is a model folder and {name} is (or would become) one of its files; write it elsewhere",
            out.display(),
            dir.display()
        );
    }
    Ok(())
}

/// Check an output (a folder, or a file) before any work: it is not inside one of the input
/// folders among `inputs` (where it would become part of the input). Inputs that are not local
/// paths are skipped.
pub fn check_output_dir(out: &Path, flag: &str, inputs: &[PathBuf]) -> Result<()> {
    let Some(out_full) = resolved(out) else { return Ok(()) };
    for input in inputs {
        if let Ok(inp) = std::fs::canonicalize(input) {
            if inp.is_dir() && out_full.starts_with(&inp) {
                crate::bail_bad!(
                    "{flag} {} is inside the input folder {}, where it would become part of the input; write it \
                     elsewhere",
                    out.display(),
                    input.display()
                );
            }
        }
    }
    Ok(())
}

/// `path` made absolute as the system would resolve it once its missing folders were created:
/// component by component, each prefix that exists with its links resolved, `..` taken from the
/// folder reached so far (`corpus/new/../run` is `corpus/run`; `x/../link/run` follows `link`).
/// `None` only when the working folder cannot be resolved.
pub fn resolved(path: &Path) -> Option<PathBuf> {
    use std::path::Component;
    let mut cur = if path.is_absolute() { PathBuf::from("/") } else { std::fs::canonicalize(".").ok()? };
    for c in path.components() {
        match c {
            Component::Prefix(_) | Component::RootDir => cur = PathBuf::from(c.as_os_str()),
            Component::CurDir => {}
            Component::ParentDir => {
                cur.pop();
            }
            Component::Normal(name) => {
                cur.push(name);
                if let Ok(real) = std::fs::canonicalize(&cur) {
                    cur = real;
                }
            }
        }
    }
    Some(cur)
}

/// The folder a path names a file in (`.` for a bare file name).
fn folder_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// An exclusive lock on `<out>.lock` while a command writes `out` (and its partial and group
/// files): a second command into the same output is refused at once instead of interleaving
/// its files with the first's. The lock is the operating system's (released when the process
/// ends, however it ends); the file is removed when the guard drops.
pub struct OutputLock {
    path: PathBuf,
    _file: File,
}

impl OutputLock {
    pub fn acquire(out: &Path, flag: &str) -> Result<Self> {
        let mut name = out.as_os_str().to_owned();
        name.push(".lock");
        let path = PathBuf::from(name);
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("creating the lock file {}", path.display()))?;
        match file.try_lock() {
            Ok(()) => Ok(Self { path, _file: file }),
            Err(std::fs::TryLockError::WouldBlock) => crate::bail_bad!(
                "{flag} {}: another agop is writing it now (it holds {}); wait for it to finish, or give another \
                 {flag}",
                out.display(),
                path.display()
            ),
            Err(std::fs::TryLockError::Error(e)) => Err(e).with_context(|| format!("locking {}", path.display())),
        }
    }
}

impl Drop for OutputLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}
