//! Hostile text in every field a pipeline, a task or a caller controls
//! (errors, reasons, notes, labels, the Concourse build's names): no raw
//! control character (C0, C1, DEL, bidi) reaches a terminal from a human
//! output; the JSON outputs stay exact.

use crate::util::{Kind, World};
use serde_json::json;

/// Sets the pane's title, moves the cursor home, erases the line, forges a
/// line break, reverses the text that follows.
const PAYLOAD: &str =
    "x\u{1b}]0;owned\u{7}\u{1b}[H\u{1b}[2K\r\nforged complete 10\u{9b}31m\u{7f}\u{202e}desrever";

fn raw_controls(text: &str) -> Vec<char> {
    text.chars()
        .filter(|c| {
            (c.is_control() && *c != '\n')
                || matches!(c, '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
        })
        .collect()
}

#[test]
fn no_raw_control_character_reaches_a_terminal() {
    let w = World::new(Kind::Local, "hostile_text").with(json!({"retry": {"backoff": "0s"}}));
    // Labels from the resource's source (JSON: the CLI's --source is YAML,
    // which takes no raw C1 character).
    let labelled = w.source_with(json!({"labels": {"team": PAYLOAD}}));
    w.put(json!({}))
        .stdin(json!({"source": labelled, "params": {"init": true}}))
        .ok();
    w.put(json!({"complete": 0, "note": PAYLOAD})).ok();
    w.put(json!({"start": 5}))
        .build(PAYLOAD, 7)
        .env("BUILD_PIPELINE_NAME", PAYLOAD)
        .ok();
    w.put(json!({"fail": 5, "error": PAYLOAD}))
        .build(PAYLOAD, 7)
        .env("BUILD_PIPELINE_NAME", PAYLOAD)
        .ok();
    w.cli(&[
        "set",
        "rhel8-web",
        "5",
        "--status",
        "blocked",
        "--reason",
        PAYLOAD,
    ])
    .text();
    for args in [
        vec!["show", "rhel8-web"],
        vec!["history", "rhel8-web"],
        vec!["list"],
        vec!["retry", "rhel8-web", "5", "--note", PAYLOAD],
        vec!["complete", "rhel8-web", "25"],
    ] {
        let out = w.cli(&args).env("USER", PAYLOAD).run();
        for (stream, text) in [("stdout", &out.stdout), ("stderr", &out.stderr)] {
            let raw = raw_controls(text);
            assert!(raw.is_empty(), "{args:?} {stream} has raw {raw:?}:\n{text}");
        }
        assert!(
            out.stdout.contains("\\x1b]0;owned")
                || out.stderr.contains("\\x1b]0;owned")
                || matches!(args[0], "retry" | "complete"),
            "{args:?}: the escape is shown, escaped:\n{}{}",
            out.stdout,
            out.stderr
        );
    }
    // JSON stays exact.
    let doc: serde_json::Value =
        serde_json::from_str(&w.cli(&["show", "rhel8-web", "--json"]).text()).unwrap();
    let history = doc["history"].as_array().unwrap();
    assert!(history.iter().any(|e| e["note"] == PAYLOAD));
    assert!(history.iter().any(|e| e["error"]["message"] == PAYLOAD));
    assert_eq!(doc["labels"]["team"], PAYLOAD);
}
