//! The server alone (`cargo build -p invicta`, as `make run` builds it) and the workspace's test
//! build resolve every shared dependency with the same features: otherwise the first build
//! after the other compiles wasmtime and the AWS SDK again.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

/// Each package (name and version) with the feature sets `cargo tree` resolves for it.
fn features(args: &[&str]) -> BTreeMap<String, BTreeSet<String>> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let output = Command::new(env!("CARGO"))
        .current_dir(&root)
        .args(["tree", "--offline", "--prefix", "none", "-f", "{p}|{f}"])
        .args(args)
        .output()
        .expect("run cargo tree");
    assert!(
        output.status.success(),
        "cargo tree {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let Some((package, features)) = line.trim_end_matches(" (*)").split_once('|') else {
            continue;
        };
        // A path package's name carries its directory: only its name and version count.
        let package: String = package.split(" (").next().unwrap_or(package).to_string();
        out.entry(package).or_default().insert(features.to_string());
    }
    out
}

#[test]
fn the_server_alone_builds_with_the_test_builds_features() {
    // Build scripts' dependencies too: a build script whose inputs change rebuilds its crate.
    let run = features(&["-p", "invicta", "-e", "normal,build"]);
    let test = features(&["--workspace", "-e", "normal,build,dev"]);
    let differing: Vec<String> = run
        .iter()
        .filter_map(|(package, features)| {
            let other = test.get(package)?;
            (other != features).then(|| format!("{package}: run {features:?}, test {other:?}"))
        })
        .collect();
    assert!(run.len() > 100, "cargo tree listed too little: {run:?}");
    assert!(
        differing.is_empty(),
        "turn these features on in shared/feature-set:\n{}",
        differing.join("\n")
    );
}
