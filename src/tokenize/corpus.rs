//! Corpus sources (docs/reference.md §6): a .txt file (one document), a folder (its .txt/.jsonl/.parquet
//! files in sorted path order), a .jsonl file (one document per line, a text field), a .parquet
//! file (one document per row, a text column), `hf://datasets/...` resolved through the hub, or
//! `builtin:shakespeare`, the corpus compiled into the binary.
//!
//! Empty records (a JSONL `""`, an empty or null Parquet cell, common in WikiText's blank
//! lines) are not documents: they get no EOS.
//!
//! Every real local file is read once: files are identified by their canonical path, so a file
//! reached twice (listed twice, or through a symbolic link) is skipped the second time with a
//! warning, and a folder reached again through a link (a link to itself or to a parent: a loop)
//! is not entered again, also with a warning. (Files of `hf://datasets` sources are distinct
//! repository files and are all read.)

use std::path::{Path, PathBuf};

use anyhow::Result;

use crate::error::BadInputExt;
use crate::{bad, bail_bad};

/// One document of a corpus.
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    /// Where it came from, for messages: `file` or `file:line` or `file:row`.
    pub origin: String,
    pub text: String,
}

/// How to read the text of structured sources, and what to do with bad bytes.
#[derive(Debug, Clone)]
pub struct CorpusOptions {
    /// JSONL field / Parquet column holding the text.
    pub text_column: String,
    /// Skip documents that are not valid UTF-8 (counted) instead of failing.
    pub skip_invalid_utf8: bool,
}

impl Default for CorpusOptions {
    fn default() -> Self {
        Self { text_column: "text".into(), skip_invalid_utf8: false }
    }
}

/// A corpus source as it is recorded and compared: a local path made absolute with its links
/// and `..` resolved ([`crate::util::fs::resolved`]) (so that `c.txt`, `./c.txt` and `/home/me/c.txt` are one source, whichever folder a
/// command runs in), `hf://` and `builtin:` sources as given.
pub fn canonical_source(src: &str) -> String {
    if src.starts_with("hf://") || src.starts_with("builtin:") {
        return src.to_string();
    }
    // A source that does not exist (any more) is resolved as far as its folders exist, so that
    // a finished run whose corpus moved away still names it as it did.
    crate::util::fs::resolved(Path::new(src)).map_or_else(|| src.to_string(), |p| p.display().to_string())
}

/// Documents read from all sources, in the order given, with the number of skipped documents.
pub fn read_sources(sources: &[String], opts: &CorpusOptions) -> Result<(Vec<Document>, usize)> {
    let mut docs = Vec::new();
    let mut skipped = 0;
    let mut seen = std::collections::HashSet::new();
    for src in sources {
        if let Some(name) = src.strip_prefix("builtin:") {
            if name != "shakespeare" {
                bail_bad!("corpus source {src}: unknown built-in corpus (available: builtin:shakespeare)");
            }
            for (file, text) in super::builtin::SHAKESPEARE {
                docs.push(Document { origin: format!("builtin:shakespeare/{file}"), text: text.to_string() });
            }
            continue;
        }
        if src.starts_with("hf://") {
            // Distinct files of a dataset repository (the cache links identical contents to one
            // blob, so canonical paths would merge them: they are not deduplicated).
            for f in crate::fetch::hub::resolve_dataset_files(src)? {
                skipped += read_file(&f, opts, &mut docs)?;
            }
            continue;
        }
        let files: Vec<PathBuf> = {
            let p = Path::new(src);
            if p.is_dir() {
                folder_files(p)?
            } else if p.is_file() {
                vec![p.to_path_buf()]
            } else {
                bail_bad!("corpus source {src}: no such file or folder");
            }
        };
        for f in files {
            let real = std::fs::canonicalize(&f).unwrap_or_else(|_| f.clone());
            if !seen.insert(real.clone()) {
                eprintln!(
                    "warning: corpus file {} is {} again (listed twice or reached through a link); read once",
                    f.display(),
                    real.display()
                );
                continue;
            }
            skipped += read_file(&f, opts, &mut docs)?;
        }
    }
    Ok((docs, skipped))
}

/// The .txt/.jsonl/.parquet files under a folder, recursively, in sorted path order. A folder
/// already visited (a link loop) is not entered again.
fn folder_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    let mut visited = std::collections::HashSet::new();
    while let Some(d) = stack.pop() {
        let real = std::fs::canonicalize(&d).bad_input(|| format!("cannot resolve folder {}", d.display()))?;
        if !visited.insert(real.clone()) {
            eprintln!(
                "warning: corpus folder {} is {} again (a link loop); not read twice",
                d.display(),
                real.display()
            );
            continue;
        }
        for entry in std::fs::read_dir(&d).bad_input(|| format!("cannot read folder {}", d.display()))? {
            let p = entry?.path();
            if p.is_dir() {
                stack.push(p);
            } else if matches!(ext(&p).as_str(), "txt" | "jsonl" | "parquet") {
                out.push(p);
            }
        }
    }
    out.sort();
    Ok(out)
}

fn ext(p: &Path) -> String {
    p.extension().map(|e| e.to_string_lossy().to_lowercase()).unwrap_or_default()
}

/// Decode UTF-8 or report the file and byte offset of the first bad byte.
fn utf8(bytes: Vec<u8>, origin: &str, base: usize) -> Result<String> {
    String::from_utf8(bytes).map_err(|e| {
        let off = base + e.utf8_error().valid_up_to();
        bad!(
            "{origin}: invalid UTF-8 at byte offset {off} (--skip-invalid-utf8, or skip_invalid_utf8 = true under a \
             pipeline's [corpus], skips such documents)"
        )
    })
}

/// Append the documents of one file; returns how many were skipped for bad UTF-8.
fn read_file(path: &Path, opts: &CorpusOptions, docs: &mut Vec<Document>) -> Result<usize> {
    let name = path.display().to_string();
    match ext(path).as_str() {
        "jsonl" => {
            let bytes = std::fs::read(path).bad_input(|| format!("cannot read {name}"))?;
            let mut skipped = 0;
            let mut offset = 0;
            for (i, line) in bytes.split(|&b| b == b'\n').enumerate() {
                let base = offset;
                offset += line.len() + 1;
                // A byte-order mark before the first record (Windows tools write one) is not text.
                let line = if i == 0 { line.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(line) } else { line };
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                let origin = format!("{name}:{}", i + 1);
                let line = match utf8(line.to_vec(), &name, base) {
                    Ok(l) => l,
                    Err(_) if opts.skip_invalid_utf8 => {
                        skipped += 1;
                        continue;
                    }
                    Err(e) => return Err(e),
                };
                let v: serde_json::Value =
                    serde_json::from_str(&line).map_err(|e| bad!("{origin}: not valid JSON: {e}"))?;
                match v.get(&opts.text_column) {
                    Some(serde_json::Value::String(s)) if s.is_empty() => {}
                    Some(serde_json::Value::String(s)) => docs.push(Document { origin, text: s.clone() }),
                    Some(serde_json::Value::Null) => {}
                    Some(_) => bail_bad!("{origin}: field `{}` is not a string", opts.text_column),
                    None => bail_bad!("{origin}: no field `{}` (choose one with --text-column)", opts.text_column),
                }
            }
            Ok(skipped)
        }
        "parquet" => {
            let df = crate::util::parquet::read_parquet(path)?;
            let col = df.column(&opts.text_column).map_err(|_| {
                let names: Vec<String> = df.get_column_names().iter().map(|s| s.to_string()).collect();
                bad!(
                    "{name}: no column `{}` (columns: {}; choose one with --text-column)",
                    opts.text_column,
                    names.join(", ")
                )
            })?;
            let s = col
                .str()
                .map_err(|_| bad!("{name}: column `{}` is not text (it is {})", opts.text_column, col.dtype()))?;
            for (i, t) in s.iter().enumerate() {
                if let Some(t) = t.filter(|t| !t.is_empty()) {
                    docs.push(Document { origin: format!("{name}:row {i}"), text: t.to_string() });
                }
            }
            Ok(0)
        }
        _ => {
            let bytes = std::fs::read(path).bad_input(|| format!("cannot read {name}"))?;
            match utf8(bytes, &name, 0) {
                Ok(text) => docs.push(Document { origin: name, text }),
                Err(_) if opts.skip_invalid_utf8 => return Ok(1),
                Err(e) => return Err(e),
            }
            Ok(0)
        }
    }
}
