//! Concurrent writers on one document: no update is ever lost.

use crate::util::World;
use serde_json::json;

/// The README's Performance figures: 64 concurrent puts on one document, all land.
const WRITERS: u32 = 64;

/// Stage jobs racing on one stage (each build starting an attempt, as a
/// build queued behind a dead attempt does): every start lands, once.
fn sixty_four_concurrent_puts(w: World) {
    let w = w.with(json!({"retry": {"max_attempts": 100}}));
    w.put(json!({"init": true})).ok();
    w.put(json!({"complete": 0})).ok();
    for i in 0..WRITERS {
        w.write_file(
            &format!("vars-{i}.json"),
            &format!("{{\"writer_{i}\": {i}}}"),
        );
    }
    let outs: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..WRITERS)
            .map(|i| {
                let w = &w;
                s.spawn(move || {
                    w.put(json!({"start": 5, "note": format!("writer {i}"), "vars_file": format!("vars-{i}.json")}))
                        .build("stage", 1000 + i)
                        .run()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for out in &outs {
        assert_eq!(out.code, Some(0), "a concurrent put failed: {}", out.stderr);
    }
    let doc = w.doc();
    assert_eq!(doc["revision"], 2 + WRITERS, "one revision per put");
    let history = doc["history"].as_array().unwrap();
    assert_eq!(history.len() as u32, 2 + WRITERS);
    let mut notes: Vec<&str> = history.iter().filter_map(|e| e["note"].as_str()).collect();
    notes.sort();
    let mut want: Vec<String> = (0..WRITERS).map(|i| format!("writer {i}")).collect();
    want.sort();
    assert_eq!(notes, want, "every start recorded, once");
    let vars = doc["vars"].as_object().unwrap();
    assert_eq!(
        vars.len() as u32,
        WRITERS,
        "every writer's vars merged: {vars:?}"
    );
    // Every writer got its own revision back.
    let mut revisions: Vec<u64> = outs
        .iter()
        .map(|o| {
            let v: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
            v["version"]["revision"].as_str().unwrap().parse().unwrap()
        })
        .collect();
    revisions.sort();
    assert_eq!(revisions, (3..3 + WRITERS as u64).collect::<Vec<_>>());
}

crate::both_stores!(sixty_four_concurrent_puts);
