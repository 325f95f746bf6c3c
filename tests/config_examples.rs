//! Every config the project shows people is valid: each file in `config/` and
//! `config/examples/`, and each ```toml block of `README.md` and `docs/*.md`, passes
//! `pgshift check --config` (the built binary, no database). A block without a `[proxy]` table
//! gets a minimal one prepended; a block preceded by `<!-- not-a-config -->` is skipped.
//! Failures name the file and, for blocks, the line the block starts on.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Prepended to a block that has no `[proxy]` table of its own.
const MINIMAL_PROXY: &str = "[proxy]\nlisten = \"127.0.0.1:6432\"\nupstream = \"127.0.0.1:5432\"\n";

/// The marker that exempts the next fenced block.
const NOT_A_CONFIG: &str = "<!-- not-a-config -->";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs `pgshift check --config path`; `Err` with its output when it does not exit 0.
fn check(path: &Path) -> Result<(), String> {
    let out = Command::new(env!("CARGO_BIN_EXE_pgshift"))
        .arg("check")
        .arg("--config")
        .arg(path)
        .output()
        .map_err(|e| format!("cannot run pgshift: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// The `*.toml` files directly in `dir`, sorted.
fn toml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|entry| entry.expect("a directory entry").path())
        .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    files
}

/// A fenced TOML block: the 1-based line of its opening fence, and its text.
#[derive(Debug, PartialEq, Eq)]
struct Block {
    line: usize,
    text: String,
}

/// The ```toml blocks of a Markdown text, without those marked `<!-- not-a-config -->`
/// (on the closest non-blank line before the fence).
fn toml_blocks(markdown: &str) -> Vec<Block> {
    let lines: Vec<&str> = markdown.lines().collect();
    let mut blocks = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let fence = lines[i].trim_start();
        let Some(info) = fence.strip_prefix("```") else {
            i += 1;
            continue;
        };
        let start = i;
        let end = (i + 1..lines.len())
            .find(|&j| lines[j].trim() == "```")
            .unwrap_or(lines.len());
        let is_toml = info.split_whitespace().next() == Some("toml");
        let marked = lines[..start]
            .iter()
            .rev()
            .find(|l| !l.trim().is_empty())
            .is_some_and(|l| l.trim() == NOT_A_CONFIG);
        if is_toml && !marked {
            let body: Vec<&str> = lines[start + 1..end].to_vec();
            blocks.push(Block {
                line: start + 1,
                text: body.join("\n") + "\n",
            });
        }
        i = end + 1;
    }
    blocks
}

/// The block as a whole config file: with the minimal `[proxy]` when it has none.
fn as_config(block: &str) -> String {
    let has_proxy = block.lines().any(|l| l.trim() == "[proxy]");
    if has_proxy {
        block.to_owned()
    } else {
        format!("{MINIMAL_PROXY}{block}")
    }
}

/// `README.md` and every `docs/*.md`, sorted.
fn markdown_files() -> Vec<PathBuf> {
    let mut files = vec![root().join("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root().join("docs"))
        .expect("docs/ exists")
        .map(|entry| entry.expect("a directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    files.extend(docs);
    files
}

fn relative(path: &Path) -> String {
    path.strip_prefix(root())
        .unwrap_or(path)
        .display()
        .to_string()
}

#[test]
fn config_files_pass_check() {
    let mut files = toml_files(&root().join("config"));
    let examples = toml_files(&root().join("config/examples"));
    assert!(
        examples.len() >= 5,
        "config/examples/ should hold one file per documented case, found {examples:?}"
    );
    files.extend(examples);
    let failures: Vec<String> = files
        .iter()
        .filter_map(|f| {
            check(f)
                .err()
                .map(|e| format!("{}: {}", relative(f), e.trim()))
        })
        .collect();
    assert!(
        failures.is_empty(),
        "pgshift check failed:\n{}",
        failures.join("\n\n")
    );
}

#[test]
fn toml_blocks_in_readme_and_docs_pass_check() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut checked = 0;
    let mut failures = Vec::new();
    for file in markdown_files() {
        let text = std::fs::read_to_string(&file)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", file.display()));
        for block in toml_blocks(&text) {
            let path = dir.path().join(format!("block{checked}.toml"));
            checked += 1;
            let config = as_config(&block.text);
            let prepended = if config.len() > block.text.len() {
                format!(
                    "; its line numbers below count {} prepended [proxy] lines",
                    MINIMAL_PROXY.lines().count()
                )
            } else {
                String::new()
            };
            std::fs::write(&path, config).expect("write the block");
            if let Err(e) = check(&path) {
                failures.push(format!(
                    "{}:{}: the ```toml block starting here does not pass pgshift check \
                     (mark it <!-- not-a-config --> if it is not meant to be a config{prepended}): {}",
                    relative(&file),
                    block.line,
                    e.trim()
                ));
            }
        }
    }
    assert!(
        checked >= 5,
        "expected the docs to hold TOML examples, found {checked}"
    );
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn every_example_is_referenced_from_the_docs() {
    let docs: String = markdown_files()
        .iter()
        .map(|f| std::fs::read_to_string(f).expect("readable"))
        .collect();
    let missing: Vec<String> = toml_files(&root().join("config/examples"))
        .iter()
        .map(|f| relative(f))
        .filter(|name| !docs.contains(name.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "examples no page of README.md or docs/ links to: {missing:?}"
    );
}

#[test]
fn blocks_are_found_with_their_lines_and_markers() {
    let markdown = "# t\n\n```toml\na = 1\n```\n\n<!-- not-a-config -->\n```toml\nb = 2\n```\n\
                    ```sh\nc\n```\n  ```toml title\n[proxy]\n```\n";
    let blocks = toml_blocks(markdown);
    assert_eq!(
        blocks,
        [
            Block {
                line: 3,
                text: "a = 1\n".into()
            },
            Block {
                line: 14,
                text: "[proxy]\n".into()
            },
        ]
    );
    assert!(as_config("a = 1\n").starts_with(MINIMAL_PROXY));
    assert_eq!(as_config("[proxy]\nx = 1\n"), "[proxy]\nx = 1\n");
}
