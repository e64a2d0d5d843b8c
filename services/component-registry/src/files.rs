//! The files a component version carries. An upload is either the component's bytes or an
//! uncompressed tar archive holding the component as `component.wasm` and, under `files/`, the
//! files every worker of the version starts with. A file without its owner's write bit
//! (`chmod a-w`) is read-only to the workers; any other is theirs to change.
//!
//! The archive is checked here, at the edge: regular files and directories only (no links,
//! devices or fifos), relative paths of plain UTF-8 names, no name twice, bounded counts and
//! lengths. What is kept is a canonical archive (the files alone, sorted, no owners or times),
//! so the same component and files make the same version however they were packed.

use std::collections::BTreeMap;
use std::io::Read;

use serde::{Deserialize, Serialize};

/// The most files one version may carry.
pub const FILES_MAX: usize = 1_000;
/// The longest path of a file, in bytes.
pub const PATH_BYTES_MAX: usize = 1_024;
/// The deepest a file may be, in directories.
pub const DEPTH_MAX: usize = 32;
/// The archive member holding the component.
pub const COMPONENT_MEMBER: &str = "component.wasm";

/// One file a version carries.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct InitialFile {
    /// Its path under the worker's `/`, e.g. `config/app.toml`.
    pub path: String,
    pub size: u64,
    /// Workers may read it but not change, replace or remove it.
    #[serde(default)]
    pub read_only: bool,
}

/// An upload taken apart.
#[derive(Debug)]
pub struct Unpacked {
    /// The component's bytes.
    pub wasm: Vec<u8>,
    /// The files, sorted by path.
    pub files: Vec<InitialFile>,
    /// The canonical archive of the files (none if there are none).
    pub archive: Option<Vec<u8>>,
}

/// Whether `bytes` are a tar archive (POSIX or GNU), not a component.
pub fn is_archive(bytes: &[u8]) -> bool {
    bytes.get(257..262) == Some(b"ustar".as_slice())
}

/// Takes an uploaded archive apart; the error says what is wrong with it, in words.
pub fn unpack(bytes: &[u8]) -> Result<Unpacked, String> {
    let mut archive = tar::Archive::new(bytes);
    let mut wasm = None;
    let mut files: BTreeMap<String, (Vec<u8>, bool)> = BTreeMap::new();
    let entries = archive
        .entries()
        .map_err(|e| format!("not a readable tar archive: {e}"))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| format!("a damaged archive member: {e}"))?;
        let raw = entry
            .path()
            .map_err(|e| format!("an archive member's path: {e}"))?
            .to_string_lossy()
            .into_owned();
        let kind = entry.header().entry_type();
        let name = raw.strip_prefix("./").unwrap_or(&raw);
        if name.is_empty() || name == "." || name == "files" || name == "files/" {
            continue;
        }
        if kind.is_dir() {
            if name.starts_with("files/") {
                check_path(name.trim_start_matches("files/").trim_end_matches('/'))?;
                continue;
            }
            return Err(format!(
                "`{raw}`: an archive holds `{COMPONENT_MEMBER}` and a `files/` directory, nothing else"
            ));
        }
        if !kind.is_file() {
            return Err(format!(
                "`{raw}` is not a regular file (links, devices and fifos are not carried)"
            ));
        }
        let mode = entry.header().mode().unwrap_or(0o644);
        let mut content = Vec::new();
        entry
            .read_to_end(&mut content)
            .map_err(|e| format!("read `{raw}`: {e}"))?;
        if name == COMPONENT_MEMBER {
            if wasm.replace(content).is_some() {
                return Err(format!("`{COMPONENT_MEMBER}` is in the archive twice"));
            }
            continue;
        }
        let Some(path) = name.strip_prefix("files/") else {
            return Err(format!(
                "`{raw}`: an archive holds `{COMPONENT_MEMBER}` and a `files/` directory, nothing else"
            ));
        };
        check_path(path)?;
        if files.len() >= FILES_MAX {
            return Err(format!("more than {FILES_MAX} files"));
        }
        let read_only = mode & 0o200 == 0;
        if files
            .insert(path.to_string(), (content, read_only))
            .is_some()
        {
            return Err(format!("`{path}` is in the archive twice"));
        }
    }
    let wasm = wasm.ok_or_else(|| format!("the archive has no `{COMPONENT_MEMBER}`"))?;
    // A file cannot also be a directory of others.
    for path in files.keys() {
        let mut prefix = path.as_str();
        while let Some((parent, _)) = prefix.rsplit_once('/') {
            if files.contains_key(parent) {
                return Err(format!(
                    "`{parent}` is a file, and `{path}` would be in it as in a directory"
                ));
            }
            prefix = parent;
        }
    }
    let listed = files
        .iter()
        .map(|(path, (content, read_only))| InitialFile {
            path: path.clone(),
            size: content.len() as u64,
            read_only: *read_only,
        })
        .collect::<Vec<_>>();
    let archive = if files.is_empty() {
        None
    } else {
        Some(canonical(&files).map_err(|e| format!("repack the files: {e}"))?)
    };
    Ok(Unpacked {
        wasm,
        files: listed,
        archive,
    })
}

/// A path as a worker sees it under `/`: relative, plain names, bounded.
fn check_path(path: &str) -> Result<(), String> {
    if path.is_empty() {
        return Err("a file with an empty path".into());
    }
    if path.len() > PATH_BYTES_MAX {
        return Err(format!(
            "a path of {} bytes; the limit is {PATH_BYTES_MAX}",
            path.len()
        ));
    }
    let parts = path.split('/').collect::<Vec<_>>();
    if parts.len() > DEPTH_MAX {
        return Err(format!(
            "`{path}` is {} directories deep; the limit is {DEPTH_MAX}",
            parts.len()
        ));
    }
    for part in parts {
        if part.is_empty() || part == "." || part == ".." || part.contains(['\0', '\\']) {
            return Err(format!(
                "`{path}`: a path is made of plain names (no `.`, `..`, empty names, NUL or backslash)"
            ));
        }
    }
    Ok(())
}

/// The files as one archive: sorted, modes 0644 or 0444, no owners, no times.
fn canonical(files: &BTreeMap<String, (Vec<u8>, bool)>) -> std::io::Result<Vec<u8>> {
    let mut builder = tar::Builder::new(Vec::new());
    builder.mode(tar::HeaderMode::Deterministic);
    for (path, (content, read_only)) in files {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Regular);
        header.set_size(content.len() as u64);
        header.set_mode(if *read_only { 0o444 } else { 0o644 });
        header.set_mtime(0);
        builder.append_data(&mut header, path, content.as_slice())?;
    }
    builder.into_inner()
}

/// The files of a canonical archive, in order: path, whether read-only, bytes.
pub fn entries(archive: &[u8]) -> std::io::Result<Vec<(String, bool, Vec<u8>)>> {
    let mut out = Vec::new();
    for entry in tar::Archive::new(archive).entries()? {
        let mut entry = entry?;
        let path = entry.path()?.to_string_lossy().into_owned();
        check_path(&path).map_err(std::io::Error::other)?;
        let read_only = entry.header().mode().unwrap_or(0o644) & 0o200 == 0;
        let mut content = Vec::new();
        entry.read_to_end(&mut content)?;
        out.push((path, read_only, content));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An archive member: its path, bytes and mode.
    type Member<'a> = (&'a str, &'a [u8], u32);

    fn archive(members: &[Member<'_>]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for (path, content, mode) in members {
            // The name is set as bytes: the builder itself refuses `..`, which `unpack` must.
            let mut header = tar::Header::new_ustar();
            header.as_old_mut().name[..path.len()].copy_from_slice(path.as_bytes());
            header.set_size(content.len() as u64);
            header.set_mode(*mode);
            header.set_entry_type(tar::EntryType::Regular);
            header.set_cksum();
            builder.append(&header, *content).unwrap();
        }
        builder.into_inner().unwrap()
    }

    #[test]
    fn takes_apart_a_component_and_its_files() {
        let bytes = archive(&[
            ("component.wasm", b"\0asm", 0o644),
            ("files/b.txt", b"bee", 0o644),
            ("./files/etc/a.toml", b"x = 1", 0o444),
        ]);
        assert!(is_archive(&bytes));
        let unpacked = unpack(&bytes).unwrap();
        assert_eq!(unpacked.wasm, b"\0asm");
        assert_eq!(
            unpacked.files,
            vec![
                InitialFile {
                    path: "b.txt".into(),
                    size: 3,
                    read_only: false
                },
                InitialFile {
                    path: "etc/a.toml".into(),
                    size: 5,
                    read_only: true
                },
            ]
        );
        let kept = entries(unpacked.archive.as_deref().unwrap()).unwrap();
        assert_eq!(kept[1], ("etc/a.toml".into(), true, b"x = 1".to_vec()));
    }

    #[test]
    fn the_same_files_packed_differently_are_the_same_archive() {
        let one = archive(&[
            ("component.wasm", b"\0asm", 0o644),
            ("files/a", b"1", 0o600),
            ("files/b", b"2", 0o644),
        ]);
        let two = archive(&[
            ("files/b", b"2", 0o664),
            ("files/a", b"1", 0o644),
            ("component.wasm", b"\0asm", 0o644),
        ]);
        assert_eq!(unpack(&one).unwrap().archive, unpack(&two).unwrap().archive);
    }

    #[test]
    fn refuses_what_a_worker_could_not_be_given() {
        let cases: &[(&[Member<'_>], &str)] = &[
            (&[("files/a", b"1", 0o644)], "no `component.wasm`"),
            (
                &[("component.wasm", b"", 0o644), ("other", b"", 0o644)],
                "nothing else",
            ),
            (
                &[("component.wasm", b"", 0o644), ("files/a/../b", b"", 0o644)],
                "plain names",
            ),
            (
                &[
                    ("component.wasm", b"", 0o644),
                    ("files/a", b"", 0o644),
                    ("files/a/b", b"", 0o644),
                ],
                "is a file",
            ),
            (
                &[
                    ("component.wasm", b"", 0o644),
                    ("component.wasm", b"", 0o644),
                ],
                "twice",
            ),
        ];
        for (members, expected) in cases {
            let err = unpack(&archive(members)).unwrap_err();
            assert!(err.contains(expected), "{err} (expected {expected})");
        }
    }

    #[test]
    fn refuses_links() {
        let mut builder = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_ustar();
        header.set_size(0);
        header.set_entry_type(tar::EntryType::Symlink);
        builder
            .append_link(&mut header, "files/passwd", "/etc/passwd")
            .unwrap();
        let bytes = builder.into_inner().unwrap();
        assert!(unpack(&bytes).unwrap_err().contains("not a regular file"));
    }

    #[test]
    fn a_component_is_not_an_archive() {
        assert!(!is_archive(b"\0asm\x0d\0\x01\0"));
    }

    proptest::proptest! {
        /// Whatever bytes come as an archive, `unpack` answers, and never panics.
        #[test]
        fn any_bytes_are_answered(mut bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..4096)) {
            if bytes.len() >= 262 {
                bytes[257..262].copy_from_slice(b"ustar");
            }
            let _ = unpack(&bytes);
        }

        /// Files go into the canonical archive and come out the same.
        #[test]
        fn files_round_trip(files in proptest::collection::btree_map(
            "[a-z]{1,8}(/[a-z]{1,8}){0,2}",
            (proptest::collection::vec(proptest::num::u8::ANY, 0..64), proptest::bool::ANY),
            1..8,
        )) {
            let mut members = vec![("component.wasm".to_string(), b"\0asm".to_vec(), 0o644)];
            for (path, (content, read_only)) in &files {
                members.push((format!("files/{path}"), content.clone(), if *read_only { 0o444 } else { 0o644 }));
            }
            let borrowed: Vec<Member<'_>> = members
                .iter()
                .map(|(p, c, m)| (p.as_str(), c.as_slice(), *m))
                .collect();
            match unpack(&archive(&borrowed)) {
                Ok(unpacked) => {
                    let back = entries(unpacked.archive.as_deref().unwrap_or_default()).unwrap();
                    let expected: Vec<_> = files
                        .iter()
                        .map(|(p, (c, r))| (p.clone(), *r, c.clone()))
                        .collect();
                    proptest::prop_assert_eq!(back, expected);
                }
                // A file that is also another's directory is refused, and only that.
                Err(e) => proptest::prop_assert!(e.contains("is a file"), "{}", e),
            }
        }
    }
}
