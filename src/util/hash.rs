//! sha256 of files (weights, tokens, GOP files) and fingerprints of settings, as hex strings.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};

/// sha256 of a file, hex.
pub fn sha256_file(path: &Path) -> Result<String> {
    sha256_files(std::slice::from_ref(&path.to_path_buf()))
}

/// sha256 of the concatenation of files, hex.
pub fn sha256_files(paths: &[PathBuf]) -> Result<String> {
    let mut h = Sha256::new();
    for path in paths {
        let mut f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
        std::io::copy(&mut f, &mut h).with_context(|| format!("reading {}", path.display()))?;
    }
    Ok(hex::encode(h.finalize()))
}

/// sha256 of strings, each followed by a NUL byte (so `["ab", "c"]` ≠ `["a", "bc"]`), hex.
pub fn fingerprint(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0u8]);
    }
    hex::encode(h.finalize())
}
