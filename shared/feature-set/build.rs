//! Nothing to build: the script exists so that the build-dependencies of the manifest take
//! part in feature resolution for build scripts.

fn main() {}
