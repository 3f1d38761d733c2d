//! Compiles `ebpf/mcpwatch.bpf.c` into a BPF object in `OUT_DIR`, which the crate
//! embeds with `aya::include_bytes_aligned!`. Uses only std: the toolchain is
//! clang-19 plus the libbpf-dev headers, installed by `cargo xtask setup`.

use std::env;
use std::path::PathBuf;
use std::process::Command;

const CLANG: &str = "clang-19";

fn main() {
    let manifest =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let ebpf = manifest.join("../../ebpf");
    let header = ebpf.join("mcpwatch.h");
    println!("cargo:rerun-if-changed={}", header.display());
    println!("cargo:rerun-if-changed=build.rs");

    if !std::path::Path::new("/usr/include/bpf/bpf_helpers.h").exists() {
        panic!(
            "libbpf headers not found (/usr/include/bpf/bpf_helpers.h): the eBPF programs need \
             clang-19 and libbpf-dev. Install them with `cargo xtask setup` \
             (or `apt-get install clang-19 libbpf-dev`)."
        );
    }

    // mcpwatch.bpf.c: the cgroup interception; stdio.bpf.c: stdio capture (daemon/intercept/src/stdio.rs).
    for name in ["mcpwatch", "stdio"] {
        compile(&ebpf, name);
    }
}

fn compile(ebpf: &std::path::Path, name: &str) {
    let src = ebpf.join(format!("{name}.bpf.c"));
    println!("cargo:rerun-if-changed={}", src.display());
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"))
        .join(format!("{name}.bpf.o"));
    let status = Command::new(CLANG)
        .args([
            "-O2",
            "-g",
            "-Wall",
            "-Werror",
            "-target",
            "bpf",
            "-I/usr/include/x86_64-linux-gnu",
            "-I",
        ])
        .arg(ebpf)
        .arg("-c")
        .arg(&src)
        .arg("-o")
        .arg(&out)
        .status();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => panic!(
            "{CLANG} failed to compile {} ({s}); see the compiler output above",
            src.display()
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "{CLANG} not found: the eBPF programs need clang-19 and the libbpf headers. \
             Install them with `cargo xtask setup` (or `apt-get install clang-19 libbpf-dev`)."
        ),
        Err(e) => panic!("could not run {CLANG}: {e}"),
    }
}
