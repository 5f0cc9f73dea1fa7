//! Day one as written: every `fly set-pipeline` and `build-state simulate`
//! command in the pipelines' headers, the README and `docs/` gives every
//! `((var))` its pipeline uses (with `-v`/`-y`, or a vars file `-l` it
//! loads from this repository), and the simulate ones run as written; every
//! link of the README and `docs/` resolves, anchors included.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The README, `docs/*.md` and `pipelines/*.yml`.
fn documents() -> Vec<PathBuf> {
    let mut out = vec![root().join("README.md")];
    for dir in ["docs", "pipelines"] {
        let mut files: Vec<PathBuf> = std::fs::read_dir(root().join(dir))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "md" || e == "yml"))
            .collect();
        files.sort();
        out.extend(files);
    }
    out
}

/// The commands a document shows: lines of a code block or a YAML comment
/// (joined where they end with `\`), and inline code spans (which may wrap).
fn commands(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap();
    let yaml = path.extension().is_some_and(|e| e == "yml");
    let mut lines: Vec<String> = Vec::new();
    let mut spans = String::new();
    let mut fenced = false;
    for raw in text.lines() {
        let line = if yaml {
            match raw.trim_start().strip_prefix('#') {
                Some(c) => c.trim().to_string(),
                None => continue,
            }
        } else {
            raw.to_string()
        };
        if !yaml && line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if yaml || fenced {
            match lines.last_mut() {
                Some(prev) if prev.ends_with('\\') => {
                    prev.pop();
                    prev.push(' ');
                    prev.push_str(line.trim());
                }
                _ => lines.push(line.trim().to_string()),
            }
        } else {
            spans.push_str(&line);
            spans.push(' ');
        }
    }
    // Inline code spans of the prose.
    let mut parts = spans.split('`');
    parts.next();
    while let Some(code) = parts.next() {
        lines.push(code.to_string());
        parts.next();
    }
    lines
        .into_iter()
        .filter_map(|l| {
            let l = l.trim().trim_start_matches("$ ").to_string();
            let start = l
                .find("build-state simulate ")
                .or_else(|| l.find("fly ").filter(|_| l.contains(" set-pipeline ")))?;
            Some(l[start..].to_string())
        })
        .collect()
}

/// Shell words, quotes removed (enough for the documented commands).
fn words(command: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut word = String::new();
    let mut quote: Option<char> = None;
    let mut depth = 0;
    let mut any = false;
    for c in command.chars() {
        match (quote, c) {
            (None, '"' | '\'') => {
                quote = Some(c);
                any = true;
            }
            (Some(q), c) if c == q && depth == 0 => quote = None,
            (_, '(') => {
                depth += 1;
                word.push(c);
            }
            (_, ')') => {
                depth -= 1;
                word.push(c);
            }
            (None, c) if c.is_whitespace() && depth == 0 => {
                if any || !word.is_empty() {
                    out.push(std::mem::take(&mut word));
                    any = false;
                }
            }
            (_, c) => word.push(c),
        }
    }
    if any || !word.is_empty() {
        out.push(word);
    }
    out
}

/// The `((vars))` a pipeline file uses.
fn vars_of(pipeline: &Path) -> BTreeSet<String> {
    let text = std::fs::read_to_string(pipeline).unwrap();
    let mut out = BTreeSet::new();
    for piece in text.split("((").skip(1) {
        if let Some(name) = piece.split("))").next()
            && !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
        {
            out.insert(name.to_string());
        }
    }
    out
}

/// What a command gives: (the pipeline file, the vars it names).
fn given(words: &[String]) -> Option<(PathBuf, BTreeSet<String>)> {
    let simulate = words.get(1).is_some_and(|w| w == "simulate");
    let config = words
        .iter()
        .position(|w| w == "-c" || w == "--config")
        .and_then(|i| words.get(i + 1));
    let file = root().join(if simulate { words.get(2)? } else { config? });
    // A synopsis (`build-state simulate PIPELINE ...`) names no file.
    if !file.is_file() {
        return None;
    }
    let mut vars = BTreeSet::new();
    let mut i = 0;
    while i < words.len() {
        let (flag, value) = (words[i].as_str(), words.get(i + 1));
        match flag {
            "-v" | "--var" | "-y" | "--yaml-var" => {
                let kv = value.expect("a var after -v");
                vars.insert(kv.split_once('=').expect("KEY=VALUE").0.to_string());
            }
            "-l" | "--load-vars-from" | "--vars-file" => {
                let f = root().join(value.expect("a file after -l"));
                let text = std::fs::read_to_string(&f).unwrap_or_else(|e| {
                    panic!("-l {}: {e} (a vars file the docs show)", f.display())
                });
                let v: serde_json::Value = serde_yaml_ng::from_str(&text).unwrap();
                vars.extend(v.as_object().unwrap().keys().cloned());
            }
            _ => {}
        }
        i += 1;
    }
    Some((file, vars))
}

#[test]
fn every_documented_command_gives_every_var_and_the_simulate_ones_run() {
    let mut checked = 0;
    let mut ran = 0;
    let mut wrong = Vec::new();
    for doc in documents() {
        for command in commands(&doc) {
            let w = words(&command);
            let Some((pipeline, vars)) = given(&w) else {
                continue;
            };
            checked += 1;
            let missing: Vec<String> = vars_of(&pipeline).difference(&vars).cloned().collect();
            if !missing.is_empty() {
                wrong.push(format!(
                    "{}: `{command}` does not give {}",
                    doc.display(),
                    missing.join(", ")
                ));
            }
            if w[1] == "simulate" {
                ran += 1;
                let out = std::process::Command::new(crate::util::cli_path())
                    .args(&w[1..])
                    .current_dir(root())
                    .output()
                    .unwrap();
                if !out.status.success() {
                    wrong.push(format!(
                        "{}: `{command}` exits {:?}: {}{}",
                        doc.display(),
                        out.status.code(),
                        String::from_utf8_lossy(&out.stderr),
                        String::from_utf8_lossy(&out.stdout)
                            .lines()
                            .last()
                            .unwrap_or("")
                    ));
                }
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    assert!(
        checked >= 8 && ran >= 4,
        "{checked} commands checked, {ran} run"
    );
}

/// GitHub's anchor of a heading: lowercase, punctuation dropped, spaces to
/// hyphens; a repeated one gets `-1`, `-2`.
fn anchors(markdown: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut fenced = false;
    for line in markdown.lines() {
        if line.starts_with("```") {
            fenced = !fenced;
        }
        if fenced || !line.starts_with('#') {
            continue;
        }
        let title = line.trim_start_matches('#').trim();
        let slug: String = title
            .to_lowercase()
            .chars()
            .filter(|c| c.is_alphanumeric() || *c == '-' || *c == '_' || *c == ' ')
            .map(|c| if c == ' ' { '-' } else { c })
            .collect();
        let mut candidate = slug.clone();
        let mut n = 0;
        while out.contains(&candidate) {
            n += 1;
            candidate = format!("{slug}-{n}");
        }
        out.insert(candidate);
    }
    out
}

#[test]
fn every_link_of_the_readme_and_docs_resolves() {
    let mut wrong = Vec::new();
    let mut links = 0;
    for doc in documents()
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
    {
        let text = std::fs::read_to_string(&doc).unwrap();
        for piece in text.split("](").skip(1) {
            let Some(target) = piece.split(')').next() else {
                continue;
            };
            if target.contains("://") || target.starts_with("mailto:") || target.contains(' ') {
                continue;
            }
            links += 1;
            let (file, anchor) = target.split_once('#').unwrap_or((target, ""));
            let path = if file.is_empty() {
                doc.clone()
            } else {
                doc.parent().unwrap().join(file)
            };
            if !path.exists() {
                wrong.push(format!("{}: {target}: no such file", doc.display()));
                continue;
            }
            if !anchor.is_empty() {
                let md = std::fs::read_to_string(&path).unwrap_or_default();
                if !anchors(&md).contains(anchor) {
                    wrong.push(format!("{}: {target}: no such heading", doc.display()));
                }
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    assert!(links > 30, "{links} links");
}

/// The custom ladder the state model shows is a valid source, and `states`
/// shows what its comments say: "retry 5 times" is six attempts whose waits
/// double from 2m, the final code runs no job.
#[test]
fn the_custom_ladder_example_is_what_its_comments_say() {
    let text = std::fs::read_to_string(root().join("docs/state-model.md")).unwrap();
    let start = text
        .find("```yaml\nsource:\n  bucket: image-states\n  prefix: windows/")
        .expect("the example")
        + "```yaml\n".len();
    let end = start + text[start..].find("```").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ladder.yml");
    std::fs::write(&file, &text[start..end]).unwrap();
    let out = std::process::Command::new(crate::util::cli_path())
        .args(["states", "--source"])
        .arg(&file)
        .output()
        .unwrap();
    let table = crate::util::squeeze(&String::from_utf8_lossy(&out.stdout));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for want in [
        "0 queued default 3 5m, 10m retry",
        "10 base image built 10 3 5m, 10m retry 2h 10m -",
        "20 patched 20 6 2m, 4m, 8m, 16m, 32m retry",
        "30 hardened 30 3 5m, 10m retry - - yes",
        "40 published final - (delivered: no job runs here)",
    ] {
        assert!(table.contains(want), "{want:?} in:\n{table}");
    }
}
