//! Embed libtorch's library directory as an rpath so `target/*/comp` and the test binaries run without
//! LD_LIBRARY_PATH, and keep libtorch_cuda linked (it has no directly referenced symbols, so the default
//! `--as-needed` would drop it and CUDA would look unavailable).
fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    if let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
        if std::path::Path::new(&lib).join("libtorch_cuda.so").exists() {
            println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch_cuda,--as-needed");
        }
    }
}
