//! The README's quick start, run as written: every `invicta` line of its blocks, in order,
//! against a real server, with a SIGKILL and restart between the two blocks. A line ending in
//! `# => X` must print X.

use std::path::{Path, PathBuf};
use std::process::Command;

use invicta_tests::{OPERATOR_KEY, Server};

use crate::INVICTA;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The `invicta` lines of the code block after `marker`, each with the output it promises.
fn block(readme: &str, marker: &str) -> anyhow::Result<Vec<(String, Option<String>)>> {
    let at = readme
        .find(marker)
        .ok_or_else(|| anyhow::anyhow!("no {marker} in the README"))?;
    let rest = &readme[at..];
    let open = rest
        .find("```sh\n")
        .ok_or_else(|| anyhow::anyhow!("no block after {marker}"))?;
    let body = &rest[open + "```sh\n".len()..];
    let body = &body[..body.find("```").unwrap_or(body.len())];
    let mut lines = Vec::new();
    for line in body.lines() {
        let (command, comment) = match line.find(" #") {
            Some(i) => (line[..i].trim(), Some(line[i + 2..].trim())),
            None => (line.trim(), None),
        };
        if !command.starts_with("invicta ") {
            continue;
        }
        let expected = comment
            .and_then(|c| c.strip_prefix("=> "))
            .map(|c| c.split([':', ' ']).next().unwrap_or_default().to_string());
        lines.push((command.to_string(), expected));
    }
    anyhow::ensure!(!lines.is_empty(), "no invicta lines after {marker}");
    Ok(lines)
}

/// Splits a command line as a shell would, for the quoting the README uses.
fn words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut quote = None;
    let mut started = false;
    for c in line.chars() {
        match (quote, c) {
            // A placeholder such as `<the key it printed>` is one word.
            (None, '<') if !started => {
                quote = Some('>');
                started = true;
                word.push(c);
            }
            (Some('>'), '>') => {
                word.push(c);
                quote = None;
            }
            (None, '"' | '\'') => {
                quote = Some(c);
                started = true;
            }
            (Some(q), c) if c == q => quote = None,
            (None, ' ') => {
                if started {
                    words.push(std::mem::take(&mut word));
                    started = false;
                }
            }
            (_, c) => {
                word.push(c);
                started = true;
            }
        }
    }
    if started {
        words.push(word);
    }
    words
}

fn run(
    url: &str,
    config: &Path,
    lines: &[(String, Option<String>)],
    key: &mut Option<String>,
) -> anyhow::Result<()> {
    for (line, expected) in lines {
        let mut args = words(line);
        args.remove(0);
        for arg in &mut args {
            if arg == "$(cat .invicta/operator.key)" {
                *arg = OPERATOR_KEY.to_string();
            }
            if arg == "<the key it printed>" {
                *arg = key
                    .clone()
                    .ok_or_else(|| anyhow::anyhow!("no key was printed before `{line}`"))?;
            }
        }
        let out = Command::new(INVICTA)
            .args(&args)
            .current_dir(repo())
            .env("INVICTA_URL", url)
            .env("INVICTA_CONFIG_DIR", config)
            .env_remove("INVICTA_API_KEY")
            .env_remove("INVICTA_PROFILE")
            .output()?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        anyhow::ensure!(
            out.status.success(),
            "`{line}` failed: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        if let Some(found) = stdout
            .split_whitespace()
            .find(|w| w.starts_with("inv_") && w.len() > 70)
        {
            *key = Some(found.to_string());
        }
        if let Some(expected) = expected {
            assert_eq!(stdout.trim(), expected, "`{line}`");
        }
    }
    Ok(())
}

#[tokio::test]
async fn the_readme_quick_start_works_as_written() -> anyhow::Result<()> {
    let readme = std::fs::read_to_string(repo().join("README.md"))?;
    let first = block(&readme, "<!-- quickstart:")?;
    let after = block(&readme, "<!-- quickstart-after-restart -->")?;
    let data = tempfile::tempdir()?;
    let config = data.path().join("config");
    let server = Server::start(INVICTA.as_ref(), &data.path().join("data"))?;
    let mut key = None;
    run(&server.url, &config, &first, &mut key)?;
    assert!(key.is_some(), "the quick start prints a key");
    let server = server.restart_in_place()?;
    run(&server.url, &config, &after, &mut key)?;
    Ok(())
}
