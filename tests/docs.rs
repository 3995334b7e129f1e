//! The agent-facing documents stay true to the binary: docs/SKILL.md has
//! the front matter agent frameworks read, and every `pilotctl <command>`
//! it (and the README) shows is a command `pilotctl context` knows.

mod common;

use std::collections::BTreeSet;

fn known_commands() -> BTreeSet<String> {
    let out = std::process::Command::new(common::PILOTCTL)
        .arg("context")
        .output()
        .unwrap();
    assert!(out.status.success());
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    doc["commands"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            c["command"]
                .as_str()
                .unwrap()
                .trim_start_matches("pilotctl ")
                .to_string()
        })
        .chain(["help".to_string()])
        .collect()
}

/// Words that follow "pilotctl" in prose, not commands.
const PROSE: [&str; 4] = ["command", "and", "is", "with"];

fn used_commands(text: &str) -> BTreeSet<String> {
    let mut used = BTreeSet::new();
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        for (i, w) in words.iter().enumerate() {
            if *w != "pilotctl" && !w.ends_with("`pilotctl") {
                continue;
            }
            // Skip global options to reach the command word.
            let mut j = i + 1;
            while j < words.len() && (words[j] == "--json" || words[j].starts_with("--socket")) {
                j += 1;
            }
            if let Some(c) = words.get(j) {
                let c = c.trim_matches(|ch: char| !ch.is_ascii_lowercase() && ch != '-');
                if !PROSE.contains(&c)
                    && !c.is_empty()
                    && !c.starts_with('-')
                    && c.chars().all(|ch| ch.is_ascii_lowercase() || ch == '-')
                {
                    used.insert(c.to_string());
                }
            }
        }
    }
    used
}

#[test]
fn skill_file_has_front_matter_and_only_real_commands() {
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/SKILL.md")).unwrap();
    let mut parts = text.splitn(3, "---\n");
    assert_eq!(parts.next(), Some(""), "SKILL.md must start with ---");
    let front = parts.next().unwrap();
    assert!(front.lines().any(|l| l.starts_with("name: ")), "{front}");
    assert!(
        front
            .lines()
            .any(|l| l.starts_with("description: ") && l.len() > 40),
        "{front}"
    );
    let known = known_commands();
    let used = used_commands(&text);
    assert!(used.len() > 15, "{used:?}");
    let unknown: Vec<_> = used.difference(&known).collect();
    assert!(
        unknown.is_empty(),
        "SKILL.md uses unknown commands {unknown:?}"
    );
}

#[test]
fn readme_shows_only_real_commands() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let known = known_commands();
    let used = used_commands(&text);
    let unknown: Vec<_> = used.difference(&known).collect();
    assert!(
        unknown.is_empty(),
        "README.md uses unknown commands {unknown:?}"
    );
}
