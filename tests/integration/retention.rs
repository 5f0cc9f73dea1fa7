//! Retention and recovery through the CLI: `prune` and `restore`.

use crate::util::{Kind, World};
use serde_json::{Value, json};

/// A world with one more build, walked by hand.
fn build(w: &World, id: &str, actions: &[Value]) {
    for a in actions {
        w.put(a.clone())
            .stdin(json!({"source": w.source_with(json!({"build_id": id})), "params": a}))
            .ok();
    }
}

/// Prune never touches the live ones: a dry run changes nothing, and
/// `--older-than` keeps the recent.
fn prune_removes_only_old_finished_builds(w: World) {
    a_fleet_to_prune(&w);
    let before = w.keys();
    assert!(
        before.iter().any(|k| k.ends_with("old-b/runs/1.json")),
        "{before:?}"
    );

    let dry = w
        .cli(&["prune", "--older-than", "0s", "--dry-run", "--json"])
        .text();
    let dry: Value = serde_json::from_str(&dry).unwrap();
    assert_eq!(w.keys(), before, "a dry run changes nothing");
    let action = |v: &Value, id: &str| {
        v.as_array()
            .unwrap()
            .iter()
            .find(|d| d["build_id"] == id)
            .unwrap_or_else(|| panic!("{id} missing: {v}"))["action"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(action(&dry, "old-a"), "would delete");
    assert_eq!(action(&dry, "blocked"), "kept");
    assert_eq!(action(&dry, "running"), "kept");

    // Recent ones are kept.
    let recent: Value =
        serde_json::from_str(&w.cli(&["prune", "--older-than", "1h", "--json"]).text()).unwrap();
    assert_eq!(action(&recent, "old-a"), "kept");
    assert_eq!(w.keys(), before);
}

/// Three finished builds (one with an archived run), one blocked, one in
/// progress.
fn a_fleet_to_prune(w: &World) {
    let done = [json!({"init": true}), json!({"cancel": "superseded"})];
    build(w, "old-a", &done);
    build(
        w,
        "old-b",
        &[
            json!({"init": true}),
            json!({"cancel": "first run"}),
            json!({"restart": true}),
            json!({"cancel": "second run"}),
        ],
    );
    build(w, "old-c", &done);
    build(
        w,
        "blocked",
        &[
            json!({"init": true}),
            json!({"complete": 0}),
            json!({"fail": 5, "error": "license", "kind": "persistent"}),
        ],
    );
    build(
        w,
        "running",
        &[
            json!({"init": true}),
            json!({"complete": 0}),
            json!({"start": 5}),
        ],
    );
}

/// And then a prune for real: `--archive-to` moves one prefix aside (the
/// archived run with it), the rest of the old finished builds are deleted,
/// the live ones carry on.
fn prune_archives_or_deletes_and_the_live_carry_on(w: World) {
    a_fleet_to_prune(&w);
    // Move one prefix aside, delete the rest.
    let moved = format!("{}moved/", w.prefix.trim_end_matches('/'));
    let table = w
        .cli(&["prune", "--older-than", "0s", "--archive-to", &moved])
        .text();
    for (id, what) in [
        ("old-a", "moved to"),
        ("old-b", "moved to"),
        ("blocked", "kept"),
        ("running", "kept"),
    ] {
        let line = table
            .lines()
            .find(|l| l.starts_with(id))
            .unwrap_or_else(|| panic!("{table}"));
        assert!(line.contains(what), "{line}");
    }
    let line = table.lines().find(|l| l.starts_with("blocked")).unwrap();
    assert!(line.contains("live: blocked is at 5"), "{line}");
    let after = w.keys();
    for k in &after {
        assert!(
            k.contains("/blocked/") || k.contains("/running/"),
            "left behind: {k}"
        );
    }
    let moved_keys = w.keys_under(&moved);
    for k in [
        "old-a/state.json",
        "old-b/state.json",
        "old-b/runs/1.json",
        "old-c/state.json",
    ] {
        assert!(
            moved_keys.iter().any(|m| m.ends_with(k)),
            "{k} not moved: {moved_keys:?}"
        );
    }
    // The live builds carry on.
    w.put(json!({"retry": 5}))
        .stdin(json!({"source": w.source_with(json!({"build_id": "blocked"})), "params": {"retry": 5}}))
        .ok();
}

/// Restore on a bucket with versioning: an S3 test (in a module named `s3`,
/// as every S3 test is, so the Ceph pass selects it).
mod versioned {
    mod s3 {
        use crate::util::{Kind, World, s3};
        use serde_json::json;

        /// A bucket with versioning, for restore.
        const VERSIONED: &str = "build-state-versioned";

        fn versioned_bucket() {
            let s = s3();
            s.block_on(async {
                let c = s.client();
                let _ = c.create_bucket().bucket(VERSIONED).send().await;
                c.put_bucket_versioning()
                    .bucket(VERSIONED)
                    .versioning_configuration(
                        aws_sdk_s3::types::VersioningConfiguration::builder()
                            .status(aws_sdk_s3::types::BucketVersioningStatus::Enabled)
                            .build(),
                    )
                    .send()
                    .await
                    .expect("turning versioning on");
            });
        }

        /// A corrupted document on a bucket with versioning: the resource says to
        /// restore, `restore` brings back the newest good version as a new revision
        /// (revisions keep rising, the history records who restored what), and the
        /// resource carries on from it.
        #[test]
        fn restore_brings_back_the_newest_good_version() {
            versioned_bucket();
            let w = World::new(Kind::S3, "s3_restore").with(json!({"bucket": VERSIONED}));
            if s3().server == "ceph" {
                // Ceph RGW 16.2 on a bucket with versioning refuses If-Match even
                // with the current ETag and ignores If-None-Match: *: no
                // compare-and-swap there, and doctor says so (see the README).
                let mut out = w.cli(&["doctor"]).run();
                out.stdout = crate::util::squeeze(&out.stdout);
                assert_eq!(out.code, Some(1), "{}", out.stdout);
                for want in [
                    "If-None-Match: * FAILED",
                    "compare-and-swap FAILED",
                    "versioning ok",
                ] {
                    assert!(out.stdout.contains(want), "{want:?} in:\n{}", out.stdout);
                }
                return;
            }
            let doctor = crate::util::squeeze(&w.cli(&["doctor"]).text());
            assert!(
                doctor.contains("versioning ok on: build-state restore"),
                "{doctor}"
            );
            assert!(doctor.contains("If-Match DELETE ok"), "{doctor}");
            w.put(json!({"init": true})).ok();
            w.put(json!({"complete": 0})).ok();
            w.put(json!({"start": 5})).ok();
            let key = w.key("state.json");
            let s = s3();
            s.block_on(async {
                s.client()
                    .put_object()
                    .bucket(VERSIONED)
                    .key(&key)
                    .body(b"{\"schema_version\": 1, \"build_id\": ".to_vec().into())
                    .send()
                    .await
                    .unwrap();
            });
            let err = w.check().fails();
            assert!(err.contains("`build-state restore BUILD_ID`"), "{err}");
            // Without --yes and without a terminal, nothing happens.
            let out = w.cli(&["restore", "rhel8-web"]).run();
            assert_eq!(out.code, Some(1));
            assert!(out.stderr.contains("give --yes"), "{}", out.stderr);
            let out = w.cli(&["restore", "rhel8-web", "--yes"]).text();
            assert!(
                out.contains("corrupt:"),
                "the table lists the corrupt version:\n{out}"
            );
            assert!(
                out.contains("rhel8-web: restore (revision 3 (5, in_progress) of version"),
                "{out}"
            );
            let doc = w.doc();
            assert_eq!(
                (
                    doc["revision"].as_u64(),
                    doc["state"].as_u64(),
                    doc["status"].as_str()
                ),
                (Some(4), Some(5), Some("in_progress"))
            );
            let last = doc["history"].as_array().unwrap().last().unwrap().clone();
            assert_eq!(last["action"], "restore");
            assert!(
                last["reason"]
                    .as_str()
                    .unwrap()
                    .starts_with("restored revision 3 (5, in_progress) of version"),
                "{last}"
            );
            assert!(last["by"]["user"].is_string());
            // The resource carries on from it.
            let out = w.put(json!({"complete": 5})).ok();
            assert_eq!(out["version"]["revision"], "5");
            let versions = w.check().ok();
            assert_eq!(versions[0]["revision"], "5");
            // Nothing corrupt now: restore without a version id says so.
            let out = w.cli(&["restore", "rhel8-web", "--yes"]).run();
            assert_eq!(out.code, Some(1));
            assert!(
                out.stderr.contains("is not corrupt: nothing to restore"),
                "{}",
                out.stderr
            );
        }
    }
}

/// On a bucket without versioning (and on a local directory), restore says
/// there is nothing to restore from and how to change that.
fn restore_needs_versioning(w: World) {
    w.put(json!({"init": true})).ok();
    let out = w.cli(&["restore", "rhel8-web", "--yes"]).run();
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    let want = match w.kind {
        Kind::S3 => "versioning is off on s3://build-state-tests/",
        // A local directory keeps the last versions written: nothing is
        // corrupt, so nothing to restore.
        Kind::Local => "is not corrupt: nothing to restore",
    };
    assert!(out.stderr.contains(want), "{}", out.stderr);
    if w.kind == Kind::S3 {
        assert!(
            out.stderr.contains("put-bucket-versioning"),
            "{}",
            out.stderr
        );
    }
}

/// A local directory keeps the last versions of each document it wrote
/// (`.versions/`, hidden from listings), so a document broken by hand is
/// restored as on a bucket with versioning: the newest good version comes
/// back as a new revision, and the resource carries on.
#[test]
fn restore_on_a_local_directory() {
    let w = World::new(Kind::Local, "local_restore");
    w.put(json!({"init": true})).ok();
    w.put(json!({"complete": 0})).ok();
    w.put(json!({"start": 5})).ok();
    w.write_raw("state.json", b"{\"schema_version\": 1, \"build_id\": ");
    let err = w.check().fails();
    assert!(err.contains("`build-state restore BUILD_ID`"), "{err}");
    let out = w.cli(&["restore", "rhel8-web", "--yes"]).text();
    assert!(out.contains("current") && out.contains("corrupt:"), "{out}");
    assert!(
        out.contains("rhel8-web: restore (revision 3 (5, in_progress) of version"),
        "{out}"
    );
    let doc = w.doc();
    assert_eq!(
        (doc["revision"].as_u64(), doc["status"].as_str()),
        (Some(4), Some("in_progress"))
    );
    let out = w.put(json!({"complete": 5})).ok();
    assert_eq!(out["version"]["revision"], "5");
    // Versions are hidden from the fleet and bounded.
    for _ in 0..15 {
        w.cli(&["set", "rhel8-web", "10", "--reason", "churn"])
            .text();
    }
    let kept = std::fs::read_dir(w.states_dir().join(".versions").join(w.key("state.json")))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".json")
        })
        .count();
    assert_eq!(kept, 10, "the newest 10 versions are kept");
    let list = w.cli(&["list"]).text();
    assert_eq!(list.lines().count(), 2, "one build listed:\n{list}");
}

/// `prune` racing a `restart` of every build it judges: no interleaving
/// strands a build. Each ends pruned whole (no key left under it) or intact
/// (its document reads, and it finishes and restarts again: no orphan
/// archive of its run in the way). It used to leave a fresh run 1 beside
/// the pruned run's `runs/1.json`, which refused the next restart.
fn prune_racing_restarts_strands_no_build(w: World) {
    let ids: Vec<String> = (0..24).map(|i| format!("race-{i:02}")).collect();
    for id in &ids {
        build(
            &w,
            id,
            &[json!({"init": true}), json!({"cancel": "superseded"})],
        );
    }
    let put = |id: &str, params: Value, job: u32| {
        w.put(params.clone())
            .stdin(json!({"source": w.source_with(json!({"build_id": id})), "params": params}))
            .build("race", job)
            .run()
    };
    std::thread::scope(|s| {
        let prune = s.spawn(|| w.cli(&["prune", "--older-than", "0s"]).run());
        let restarts: Vec<_> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| s.spawn(move || put(id, json!({"restart": true}), i as u32)))
            .collect();
        for r in restarts {
            let out = r.join().unwrap();
            assert_eq!(out.code, Some(0), "a restart failed: {}", out.stderr);
        }
        let out = prune.join().unwrap();
        assert!(matches!(out.code, Some(0 | 1)), "{}", out.stderr);
    });
    let (mut pruned, mut kept) = (0, 0);
    for (i, id) in ids.iter().enumerate() {
        let keys: Vec<String> = w
            .keys()
            .into_iter()
            .filter(|k| k.contains(&format!("/{id}/")))
            .collect();
        if keys.is_empty() {
            pruned += 1;
            continue;
        }
        kept += 1;
        // Intact: it finishes and restarts like any build.
        let out = put(id, json!({"cancel": "after the race"}), 100 + i as u32);
        assert_eq!(out.code, Some(0), "{id} ({keys:?}): {}", out.stderr);
        let out = put(id, json!({"restart": true}), 200 + i as u32);
        assert_eq!(
            out.code,
            Some(0),
            "{id} stranded ({keys:?}): {}",
            out.stderr
        );
    }
    assert_eq!(pruned + kept, ids.len());
}

crate::both_stores!(
    prune_removes_only_old_finished_builds,
    prune_archives_or_deletes_and_the_live_carry_on,
    prune_racing_restarts_strands_no_build,
    restore_needs_versioning
);
