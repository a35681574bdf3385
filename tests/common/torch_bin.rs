//! A writer of PyTorch `.bin` checkpoints (`torch.save` of a state dict, zip layout), for tests
//! that need `.bin` files of given weights without Python.
//!
//! The layout torch ≥ 1.6 writes: a zip archive (entries stored, uncompressed) whose folder
//! `archive/` holds `data.pkl`, a pickle (protocol 2) of an `OrderedDict` name → tensor, each
//! tensor `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad,
//! OrderedDict())` with the storage a persistent id `('storage', torch.FloatStorage, key, 'cpu',
//! numel)`; `data/<key>` holds the storage's raw little-endian bytes; `version` holds `3`.
//! (`tests/fixtures/tiny-gpt2-bin/make.py` writes the same layout with torch itself; those files
//! are read by the same reader.)

use std::io::Write;
use std::path::Path;

/// Pickle opcodes used here.
pub mod op {
    pub const PROTO: u8 = 0x80;
    pub const GLOBAL: u8 = b'c';
    pub const EMPTY_TUPLE: u8 = b')';
    pub const REDUCE: u8 = b'R';
    pub const MARK: u8 = b'(';
    pub const BINUNICODE: u8 = b'X';
    pub const BININT: u8 = b'J';
    pub const TUPLE: u8 = b't';
    pub const BINPERSID: u8 = b'Q';
    pub const NEWFALSE: u8 = 0x89;
    pub const SETITEMS: u8 = b'u';
    pub const STOP: u8 = b'.';
}

pub fn text(out: &mut Vec<u8>, s: &str) {
    out.push(op::BINUNICODE);
    out.extend((s.len() as u32).to_le_bytes());
    out.extend(s.as_bytes());
}

pub fn int(out: &mut Vec<u8>, v: usize) {
    out.push(op::BININT);
    out.extend((v as i32).to_le_bytes());
}

pub fn global(out: &mut Vec<u8>, module: &str, name: &str) {
    out.push(op::GLOBAL);
    out.extend(format!("{module}\n{name}\n").as_bytes());
}

fn ints(out: &mut Vec<u8>, v: &[usize]) {
    out.push(op::MARK);
    v.iter().for_each(|&x| int(out, x));
    out.push(op::TUPLE);
}

/// Write F32 tensors (name, shape, values) as a PyTorch `.bin` checkpoint.
pub fn write_pytorch_bin(path: &Path, tensors: &[(String, Vec<usize>, Vec<f32>)]) {
    let entries: Vec<(String, Vec<usize>, Vec<usize>, usize)> = tensors
        .iter()
        .map(|(name, shape, values)| {
            assert_eq!(shape.iter().product::<usize>(), values.len(), "{name}");
            let strides: Vec<usize> = (0..shape.len()).map(|i| shape[i + 1..].iter().product()).collect();
            (name.clone(), shape.clone(), strides, values.len())
        })
        .collect();
    let storages: Vec<&[f32]> = tensors.iter().map(|(_, _, v)| v.as_slice()).collect();
    write_archive(path, &state_dict_pickle(&entries), &storages, &[]);
}

/// The pickle of a state dict: (name, shape, strides, numel of its storage); storage i is key i.
pub fn state_dict_pickle(entries: &[(String, Vec<usize>, Vec<usize>, usize)]) -> Vec<u8> {
    let mut pkl = vec![op::PROTO, 2];
    pkl.extend(state_dict_body(entries));
    pkl.push(op::STOP);
    pkl
}

/// A value of nanoGPT's `model_args`.
pub enum Arg {
    Int(usize),
    Bool(bool),
    Float(f64),
}

/// nanoGPT's `ckpt.pt`: `torch.save({"model": state_dict, "model_args": {...}, "iter_num": 5})`,
/// the state dict's tensors (name, shape, values) in the layout given (the caller transposes).
pub fn write_nanogpt_ckpt(path: &Path, tensors: &[(String, Vec<usize>, Vec<f32>)], args: &[(&str, Arg)]) {
    let entries: Vec<(String, Vec<usize>, Vec<usize>, usize)> = tensors
        .iter()
        .map(|(name, shape, values)| {
            let strides: Vec<usize> = (0..shape.len()).map(|i| shape[i + 1..].iter().product()).collect();
            (name.clone(), shape.clone(), strides, values.len())
        })
        .collect();
    let mut pkl = vec![op::PROTO, 2, b'}', op::MARK];
    text(&mut pkl, "model");
    pkl.extend(state_dict_body(&entries));
    text(&mut pkl, "model_args");
    pkl.extend([b'}', op::MARK]);
    for (k, v) in args {
        text(&mut pkl, k);
        match v {
            Arg::Int(i) => int(&mut pkl, *i),
            Arg::Bool(b) => pkl.push(if *b { 0x88 } else { op::NEWFALSE }),
            Arg::Float(f) => {
                pkl.push(b'G');
                pkl.extend(f.to_be_bytes());
            }
        }
    }
    pkl.push(op::SETITEMS);
    text(&mut pkl, "iter_num");
    int(&mut pkl, 5);
    pkl.extend([op::SETITEMS, op::STOP]);
    let storages: Vec<&[f32]> = tensors.iter().map(|(_, _, v)| v.as_slice()).collect();
    write_archive(path, &pkl, &storages, &[]);
}

/// The OrderedDict of a state dict, without the pickle's header and STOP.
fn state_dict_body(entries: &[(String, Vec<usize>, Vec<usize>, usize)]) -> Vec<u8> {
    let mut pkl = Vec::new();
    global(&mut pkl, "collections", "OrderedDict");
    pkl.extend([op::EMPTY_TUPLE, op::REDUCE, op::MARK]);
    for (key, (name, shape, strides, numel)) in entries.iter().enumerate() {
        text(&mut pkl, name);
        global(&mut pkl, "torch._utils", "_rebuild_tensor_v2");
        pkl.push(op::MARK);
        // The storage, as a persistent id.
        pkl.push(op::MARK);
        text(&mut pkl, "storage");
        global(&mut pkl, "torch", "FloatStorage");
        text(&mut pkl, &key.to_string());
        text(&mut pkl, "cpu");
        int(&mut pkl, *numel);
        pkl.extend([op::TUPLE, op::BINPERSID]);
        int(&mut pkl, 0); // storage offset
        ints(&mut pkl, shape);
        ints(&mut pkl, strides);
        pkl.push(op::NEWFALSE); // requires_grad
        global(&mut pkl, "collections", "OrderedDict");
        pkl.extend([op::EMPTY_TUPLE, op::REDUCE]); // backward hooks
        pkl.extend([op::TUPLE, op::REDUCE]);
    }
    pkl.push(op::SETITEMS);
    pkl
}

/// A zip archive in torch's layout: `archive/data.pkl`, `archive/version`, storage i as
/// `archive/data/<i>`, then `extra` entries (name, bytes) as given.
pub fn write_archive(path: &Path, pkl: &[u8], storages: &[&[f32]], extra: &[(&str, &[u8])]) {
    let file = std::fs::File::create(path).unwrap();
    let mut zip = zip::ZipWriter::new(file);
    let stored = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    zip.start_file("archive/data.pkl", stored).unwrap();
    zip.write_all(pkl).unwrap();
    zip.start_file("archive/version", stored).unwrap();
    zip.write_all(b"3\n").unwrap();
    for (key, values) in storages.iter().enumerate() {
        zip.start_file(format!("archive/data/{key}"), stored).unwrap();
        for v in values.iter() {
            zip.write_all(&v.to_le_bytes()).unwrap();
        }
    }
    for (name, bytes) in extra {
        zip.start_file(name.to_string(), stored).unwrap();
        zip.write_all(bytes).unwrap();
    }
    zip.finish().unwrap();
}

/// Every tensor of a safetensors file (F32) as (name, shape, values).
pub fn read_safetensors_f32(path: &Path) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let data = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&data).unwrap();
    let mut out: Vec<(String, Vec<usize>, Vec<f32>)> = st
        .tensors()
        .into_iter()
        .map(|(n, v)| {
            assert_eq!(v.dtype(), safetensors::Dtype::F32, "{n}");
            let vals = v.data().chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
            (n, v.shape().to_vec(), vals)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}
