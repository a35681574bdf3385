//! The fused GPU kernels (`src/model/ops/kernels.cu`) compile with NVRTC, as `--device cuda`
//! compiles them at run time, on a machine without a GPU: the NVRTC library of a CUDA toolkit
//! (AGOP_NVRTC = its path, else lib64/ under CUDA_ROOT or CUDA_HOME — what
//! `scripts/cuda-toolkit.sh` exports — or /usr/local/cuda) is loaded, the source compiled for
//! compute capability 9.0, and every kernel `src/model/ops/cuda.rs` launches must be in the PTX.
//! Without a toolkit the test says so and passes (`.ci/run` runs it with the toolkit it lays out).

use std::ffi::{c_char, c_int, c_void, CString};
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// libnvrtc.so from the first toolkit found.
fn nvrtc_library() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("AGOP_NVRTC") {
        return Some(PathBuf::from(p));
    }
    let dirs = ["CUDA_ROOT", "CUDA_HOME"]
        .iter()
        .filter_map(|v| std::env::var(v).ok())
        .chain(["/usr/local/cuda".to_string()])
        .map(|d| Path::new(&d).join("lib64"));
    dirs.map(|d| d.join("libnvrtc.so")).find(|p| p.exists())
}

type Create = unsafe extern "C" fn(
    *mut *mut c_void,
    *const c_char,
    *const c_char,
    c_int,
    *const *const c_char,
    *const *const c_char,
) -> c_int;
type Compile = unsafe extern "C" fn(*mut c_void, c_int, *const *const c_char) -> c_int;
type Size = unsafe extern "C" fn(*mut c_void, *mut usize) -> c_int;
type Get = unsafe extern "C" fn(*mut c_void, *mut c_char) -> c_int;

/// Compile `source` with NVRTC: (status, log, PTX).
fn compile(lib: &Path, source: &str) -> (c_int, String, String) {
    // NVRTC loads its builtins library by soname; load it from the same folder first, so the
    // test needs no LD_LIBRARY_PATH.
    let builtins = std::fs::read_dir(lib.parent().unwrap())
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("libnvrtc-builtins.so."))
        .filter_map(|p| unsafe { libloading::Library::new(&p) }.ok())
        .collect::<Vec<_>>();
    let nvrtc = unsafe { libloading::Library::new(lib) }.unwrap();
    // SAFETY: NVRTC's C API, called as documented; the strings outlive the calls.
    unsafe {
        let create: libloading::Symbol<Create> = nvrtc.get(b"nvrtcCreateProgram").unwrap();
        let compile: libloading::Symbol<Compile> = nvrtc.get(b"nvrtcCompileProgram").unwrap();
        let log_size: libloading::Symbol<Size> = nvrtc.get(b"nvrtcGetProgramLogSize").unwrap();
        let log: libloading::Symbol<Get> = nvrtc.get(b"nvrtcGetProgramLog").unwrap();
        let ptx_size: libloading::Symbol<Size> = nvrtc.get(b"nvrtcGetPTXSize").unwrap();
        let ptx: libloading::Symbol<Get> = nvrtc.get(b"nvrtcGetPTX").unwrap();
        let (src, name) = (CString::new(source).unwrap(), CString::new("kernels.cu").unwrap());
        let mut prog = std::ptr::null_mut();
        assert_eq!(create(&mut prog, src.as_ptr(), name.as_ptr(), 0, std::ptr::null(), std::ptr::null()), 0);
        let arch = CString::new("--gpu-architecture=compute_90").unwrap();
        let status = compile(prog, 1, [arch.as_ptr()].as_ptr());
        let read = |size: &libloading::Symbol<Size>, get: &libloading::Symbol<Get>| {
            let mut n = 0usize;
            size(prog, &mut n);
            let mut buf = vec![0u8; n.max(1)];
            get(prog, buf.as_mut_ptr().cast());
            String::from_utf8_lossy(&buf).trim_end_matches('\0').to_string()
        };
        let text = read(&log_size, &log);
        let code = if status == 0 { read(&ptx_size, &ptx) } else { String::new() };
        drop(builtins);
        (status, text, code)
    }
}

#[test]
fn fused_kernels_compile_with_nvrtc() {
    let Some(lib) = nvrtc_library() else {
        eprintln!("skipped: no CUDA toolkit's NVRTC found (AGOP_NVRTC, CUDA_ROOT, CUDA_HOME, /usr/local/cuda)");
        return;
    };
    let source = std::fs::read_to_string(root().join("src/model/ops/kernels.cu")).unwrap();
    let (status, log, ptx) = compile(&lib, &source);
    assert_eq!(status, 0, "NVRTC ({}) could not compile kernels.cu:\n{log}", lib.display());
    // Every kernel the Rust side launches, in both element types.
    let launcher = std::fs::read_to_string(root().join("src/model/ops/cuda.rs")).unwrap();
    let names: Vec<&str> =
        launcher.split("launch!(dev, T, \"").skip(1).map(|rest| rest.split('"').next().unwrap()).collect();
    assert!(names.len() >= 6, "found only {names:?} in cuda.rs");
    for name in &names {
        for t in ["f32", "f64"] {
            assert!(ptx.contains(&format!(".entry {name}_{t}(")), "kernel {name}_{t} is not in the PTX");
        }
    }
    // A broken source is refused: the check can fail.
    let (status, log, _) = compile(&lib, &source.replace("block_sum(s, sh)", "block_sum(s, sh, oops)"));
    assert_ne!(status, 0, "NVRTC accepted a broken kernel source");
    assert!(log.contains("error"), "{log}");
    eprintln!("NVRTC ({}) compiled {} kernels for compute_90", lib.display(), names.len() * 2);
}
