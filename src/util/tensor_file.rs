//! Reading a safetensors file one tensor at a time: the header is parsed and checked, and each
//! tensor's bytes are read on demand with a positioned read, so a multi-gigabyte file is never
//! held in memory whole (as `std::fs::read` of the file, or a mapping touched end to end, would).

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use anyhow::Result;

use crate::{bad, bail_bad};

/// Where one tensor's bytes are, and what they hold.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// safetensors dtype name: `F32`, `F64`, `F16`, `BF16`, ...
    pub dtype: String,
    pub shape: Vec<usize>,
    /// Byte range in the file (absolute offsets).
    pub start: u64,
    pub end: u64,
}

/// An open safetensors file with its parsed header.
pub struct TensorFile {
    pub path: PathBuf,
    file: File,
    /// Tensors by name.
    pub entries: BTreeMap<String, Entry>,
    /// The `__metadata__` string map.
    pub metadata: HashMap<String, String>,
}

/// Bytes per element of a safetensors dtype name, for the types agop reads.
fn dtype_size(dtype: &str) -> Option<u64> {
    Some(match dtype {
        "F64" | "I64" | "U64" => 8,
        "F32" | "I32" | "U32" => 4,
        "F16" | "BF16" | "I16" | "U16" => 2,
        "I8" | "U8" | "BOOL" | "F8_E4M3" | "F8_E5M2" => 1,
        _ => return None,
    })
}

impl TensorFile {
    /// Open and check the header: every tensor's byte range lies inside the file and matches its
    /// shape and dtype; the file is not shorter than the header says (a truncated download).
    pub fn open(path: &Path) -> Result<Self> {
        let name = path.display();
        let file = File::open(path).map_err(|e| bad!("cannot open {name}: {e}"))?;
        let len = file.metadata().map_err(|e| bad!("cannot read {name}: {e}"))?.len();
        let mut n = [0u8; 8];
        file.read_exact_at(&mut n, 0).map_err(|_| bad!("{name}: not a safetensors file (shorter than its header)"))?;
        let n = u64::from_le_bytes(n);
        if n > 100_000_000 || 8 + n > len {
            bail_bad!("{name}: not a readable safetensors file (header of {n} bytes in a file of {len}; truncated?)");
        }
        let mut header = vec![0u8; n as usize];
        file.read_exact_at(&mut header, 8).map_err(|e| bad!("{name}: cannot read the header: {e}"))?;
        let header: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&header)
            .map_err(|e| bad!("{name}: not a readable safetensors file (bad header: {e})"))?;
        let data_start = 8 + n;
        let mut entries = BTreeMap::new();
        let mut metadata = HashMap::new();
        for (key, v) in header {
            if key == "__metadata__" {
                if let Some(m) = v.as_object() {
                    for (k, s) in m {
                        metadata.insert(k.clone(), s.as_str().map(String::from).unwrap_or_else(|| s.to_string()));
                    }
                }
                continue;
            }
            let bad_entry = || bad!("{name}: tensor {key} has a malformed header entry");
            let dtype = v.get("dtype").and_then(|d| d.as_str()).ok_or_else(bad_entry)?.to_string();
            let shape: Vec<usize> = v
                .get("shape")
                .and_then(|s| s.as_array())
                .ok_or_else(bad_entry)?
                .iter()
                .map(|x| x.as_u64().map(|x| x as usize).ok_or_else(bad_entry))
                .collect::<Result<_>>()?;
            let offsets = v.get("data_offsets").and_then(|o| o.as_array()).ok_or_else(bad_entry)?;
            let (s, e) = match offsets.as_slice() {
                [s, e] => (s.as_u64().ok_or_else(bad_entry)?, e.as_u64().ok_or_else(bad_entry)?),
                _ => return Err(bad_entry()),
            };
            let size = dtype_size(&dtype).ok_or_else(|| bad!("{name}: tensor {key} has unsupported dtype {dtype}"))?;
            let want = shape.iter().try_fold(size, |a, &d| a.checked_mul(d as u64));
            if s > e || want != Some(e - s) {
                bail_bad!("{name}: tensor {key}: byte range {s}..{e} does not hold {dtype} {shape:?}");
            }
            if data_start + e > len {
                bail_bad!(
                    "{name}: not a readable safetensors file (truncated or corrupted?): tensor {key} ends at byte {} \
                     of a file of {len}",
                    data_start + e
                );
            }
            entries.insert(key, Entry { dtype, shape, start: data_start + s, end: data_start + e });
        }
        Ok(Self { path: path.to_path_buf(), file, entries, metadata })
    }

    /// The bytes of one tensor.
    pub fn read(&self, name: &str) -> Result<Vec<u8>> {
        let e = self.entries.get(name).ok_or_else(|| bad!("{}: no tensor {name}", self.path.display()))?;
        let mut buf = vec![0u8; (e.end - e.start) as usize];
        self.file
            .read_exact_at(&mut buf, e.start)
            .map_err(|err| bad!("{}: cannot read tensor {name}: {err}", self.path.display()))?;
        Ok(buf)
    }

    /// One F64 tensor's values.
    pub fn read_f64(&self, name: &str) -> Result<Vec<f64>> {
        let e = self.entries.get(name).ok_or_else(|| bad!("{}: no tensor {name}", self.path.display()))?;
        if e.dtype != "F64" {
            bail_bad!("{}: tensor {name} is {}, expected F64", self.path.display(), e.dtype);
        }
        Ok(self.read(name)?.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap())).collect())
    }
}
