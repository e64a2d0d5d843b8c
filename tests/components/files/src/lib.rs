//! Reads and writes the worker's files with `std::fs`, as any Rust program would.

use std::io::Write;

wit_bindgen::generate!({ world: "files" });

struct Component;

fn text<T>(r: std::io::Result<T>) -> Result<T, String> {
    r.map_err(|e| format!("{:?}: {e}", e.kind()))
}

impl Guest for Component {
    fn read_text(path: String) -> Result<String, String> {
        text(std::fs::read_to_string(path))
    }

    fn write_text(path: String, content: String) -> Result<(), String> {
        text(std::fs::write(path, content))
    }

    fn append_text(path: String, content: String) -> Result<(), String> {
        let mut file = text(
            std::fs::OpenOptions::new()
                .append(true)
                .create(true)
                .open(path),
        )?;
        text(file.write_all(content.as_bytes()))
    }

    fn list_dir(path: String) -> Result<Vec<String>, String> {
        let mut names = Vec::new();
        for entry in text(std::fs::read_dir(path))? {
            names.push(text(entry)?.file_name().to_string_lossy().into_owned());
        }
        Ok(names)
    }

    fn remove_file(path: String) -> Result<(), String> {
        text(std::fs::remove_file(path))
    }

    fn rename_file(from: String, to: String) -> Result<(), String> {
        text(std::fs::rename(from, to))
    }

    fn make_dir(path: String) -> Result<(), String> {
        text(std::fs::create_dir_all(path))
    }

    fn fill_file(path: String, bytes: u64) -> Result<(), String> {
        let mut file = text(std::fs::File::create(path))?;
        let chunk = vec![0_u8; 64 * 1024];
        let mut left = bytes;
        while left > 0 {
            let n = left.min(chunk.len() as u64) as usize;
            text(file.write_all(&chunk[..n]))?;
            left -= n as u64;
        }
        Ok(())
    }

    fn grow_file(path: String, bytes: u64) -> Result<(), String> {
        let file = text(std::fs::OpenOptions::new().write(true).create(true).open(path))?;
        text(file.set_len(bytes))
    }

    fn make_many(dir: String, count: u32) -> Result<(), String> {
        text(std::fs::create_dir_all(&dir))?;
        for n in 0..count {
            text(std::fs::write(format!("{dir}/{n}"), b""))?;
        }
        Ok(())
    }

    fn stat_file(path: String) -> Result<(u64, u64), String> {
        let meta = text(std::fs::metadata(path))?;
        let modified = text(meta.modified())?
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Ok((meta.len(), modified))
    }
}

export!(Component);
