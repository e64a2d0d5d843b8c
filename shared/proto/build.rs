//! Generates the gRPC types and stubs from `proto/` with a vendored `protoc`, so that building
//! needs no system package.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // Read when the script runs, not when it was compiled: a shared target directory may hold a
    // script built for a checkout somewhere else.
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR")?;
    let root = std::path::Path::new(&manifest_dir).join("../../proto");
    let files = [
        "common.proto",
        "registry.proto",
        "scheduler.proto",
        "executor.proto",
        "billing.proto",
    ]
    .map(|f| root.join(f));
    for file in &files {
        println!("cargo:rerun-if-changed={}", file.display());
    }
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc);
    tonic_prost_build::configure().compile_with_config(config, &files, &[root])?;
    Ok(())
}
