//! PyTorch zip archives (`pytorch_model.bin`, nanoGPT's `ckpt.pt`): what candle's pickle reader
//! does not check, and the stack its recursive reader needs.

use std::path::Path;

use anyhow::Result;

use crate::{bad, bail_bad};

/// Stack of the thread that parses a pickle: 1 GiB of address space (a 400 KB pickle nested at
/// every byte needs about 200 MB in candle's recursive reader).
pub const PICKLE_STACK: usize = 1 << 30;

/// What candle's reader does not check in a PyTorch zip archive: exactly one `data.pkl` (with
/// two, the later one silently wins) and little-endian storage (`byteorder`, when present).
pub fn check_torch_zip(path: &Path) -> Result<()> {
    let file = std::fs::File::open(path).map_err(|e| bad!("{}: cannot open: {e}", path.display()))?;
    let mut zip = zip::ZipArchive::new(std::io::BufReader::new(file)).map_err(|e| {
        bad!(
            "{}: not a readable PyTorch checkpoint: not a zip archive (as torch.save writes since PyTorch 1.6): {e}",
            path.display()
        )
    })?;
    let names: Vec<String> = (0..zip.len())
        .filter_map(|i| zip.by_index_raw(i).ok().and_then(|f| f.name().ok().map(|n| n.to_string())))
        .collect();
    let pickles: Vec<&String> = names.iter().filter(|n| n.ends_with("data.pkl")).collect();
    if pickles.len() != 1 {
        bail_bad!(
            "{}: {} data.pkl entries ({}); a PyTorch checkpoint has exactly one",
            path.display(),
            pickles.len(),
            pickles.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
        );
    }
    if let Some(name) = names.iter().find(|n| n.as_str() == "byteorder" || n.ends_with("/byteorder")).cloned() {
        let mut text = String::new();
        use std::io::Read;
        zip.by_name(&name)?.take(64).read_to_string(&mut text).map_err(|e| bad!("{}: {name}: {e}", path.display()))?;
        if text.trim() != "little" {
            bail_bad!(
                "{}: {name} says {:?}; agop reads little-endian checkpoints only (re-save it on a little-endian \
                 machine)",
                path.display(),
                text.trim()
            );
        }
    }
    Ok(())
}
