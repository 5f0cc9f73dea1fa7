//! The README's IAM policies against the S3 calls the code makes: a call
//! added without its permission fails here, and the policies name the
//! bucket and prefix the example pipelines use.

use serde_json::Value;
use std::collections::BTreeSet;
use std::path::Path;

/// The permission each S3 operation needs; an operation missing here fails
/// the test, so that a new call cannot ship without its permission.
const PERMISSIONS: &[(&str, &str)] = &[
    ("get_object", "s3:GetObject"),
    ("head_object", "s3:GetObject"),
    ("put_object", "s3:PutObject"),
    ("delete_object", "s3:DeleteObject"),
    ("list_objects_v2", "s3:ListBucket"),
    ("get_bucket_versioning", "s3:GetBucketVersioning"),
    ("list_object_versions", "s3:ListBucketVersions"),
];

/// What the resource's programs use (the rest is the operator's).
const RESOURCE: &[&str] = &["s3:GetObject", "s3:PutObject", "s3:ListBucket"];

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Every `client.<operation>(` in the sources (calls span lines).
fn operations() -> BTreeSet<String> {
    let mut ops = BTreeSet::new();
    let mut dirs = vec![root().join("src")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).unwrap();
                let squeezed: String = text.split_whitespace().collect();
                for (i, _) in squeezed.match_indices("client.") {
                    let rest = &squeezed[i + "client.".len()..];
                    let name: String = rest
                        .chars()
                        .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
                        .collect();
                    // (A comment that ends in "client." before a
                    // `pub(crate)` item squeezes to "client.pub(".)
                    if rest[name.len()..].starts_with('(') && !name.is_empty() && name != "pub" {
                        ops.insert(name);
                    }
                }
            }
        }
    }
    ops
}

/// The README's JSON policies, in order: the resource's, the heartbeat
/// key's, the operator's, the cleanup job's (EC2).
fn policies() -> Vec<Value> {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let section = &readme[readme.find("## Required IAM permissions").unwrap()..];
    let section = &section[..section[3..].find("\n## ").map_or(section.len(), |i| i + 3)];
    section
        .split("```json\n")
        .skip(1)
        .map(|block| serde_json::from_str(&block[..block.find("```").unwrap()]).unwrap())
        .collect()
}

fn actions(policy: &Value) -> BTreeSet<String> {
    policy["Statement"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["Action"].as_array().unwrap().iter())
        .map(|a| a.as_str().unwrap().to_string())
        .collect()
}

fn resources(policy: &Value) -> BTreeSet<String> {
    policy["Statement"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["Resource"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn every_s3_call_has_its_permission_in_the_readme() {
    let ops = operations();
    assert!(
        ops.contains("put_object") && ops.contains("get_object"),
        "{ops:?}"
    );
    let policies = policies();
    assert_eq!(
        policies.len(),
        4,
        "the resource's policy, the heartbeat key's, the operator's and the cleanup job's"
    );
    let (resource, heartbeat, operator) = (
        actions(&policies[0]),
        actions(&policies[1]),
        actions(&policies[2]),
    );
    // The heartbeat key: reading the document and writing its heartbeat,
    // nothing else (not even a listing).
    let beat: BTreeSet<String> = ["s3:GetObject", "s3:PutObject"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(heartbeat, beat);
    for op in &ops {
        let Some((_, permission)) = PERMISSIONS.iter().find(|(o, _)| o == op) else {
            panic!(
                "the code calls S3's {op}: add its permission to the README's policies and to PERMISSIONS here"
            );
        };
        assert!(
            operator.contains(*permission),
            "the operator's policy lacks {permission} ({op})"
        );
    }
    // A restore reads an old version by its id.
    assert!(operator.contains("s3:GetObjectVersion"));
    let want: BTreeSet<String> = RESOURCE.iter().map(|s| s.to_string()).collect();
    assert_eq!(
        resource, want,
        "the resource's policy: exactly what check, in and out use"
    );
}

#[test]
fn the_policies_name_the_pipelines_bucket_and_prefix() {
    let pipeline =
        std::fs::read_to_string(root().join("pipelines/staged-image-build.yml")).unwrap();
    let prefix = pipeline
        .lines()
        .find_map(|l| l.trim().strip_prefix("prefix: "))
        .expect("the pipeline's prefix")
        .trim()
        .to_string();
    // The pipelines take the bucket as ((states_bucket)); the README's
    // example pipeline names it.
    let bucket = "image-states";
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    assert!(readme.contains(&format!("bucket: {bucket}, prefix: {prefix}")));
    for (i, policy) in policies().iter().enumerate().take(3) {
        let objects = format!("arn:aws:s3:::{bucket}/{prefix}*");
        let want: BTreeSet<String> = if i == 1 {
            // The heartbeat key: the state prefix only.
            [objects].into()
        } else {
            [objects, format!("arn:aws:s3:::{bucket}")].into()
        };
        assert_eq!(resources(policy), want, "policy {i}");
    }
}

/// The cleanup job's policy allows exactly the EC2 calls its task makes
/// in the staged pipelines, and nothing of S3.
#[test]
fn the_cleanup_policy_is_what_the_cleanup_task_calls() {
    let policy = &policies()[3];
    let allowed = actions(policy);
    for name in ["staged-image-build.yml", "staged-image-build-7x.yml"] {
        let pipeline = std::fs::read_to_string(root().join("pipelines").join(name)).unwrap();
        let task = &pipeline[pipeline.find("- task: delete-leaked").unwrap()..];
        let task = &task[..task.find("\n  ensure:").unwrap()];
        let mut called = BTreeSet::new();
        for (command, permission) in [
            ("aws ec2 terminate-instances", "ec2:TerminateInstances"),
            ("aws ec2 delete-volume", "ec2:DeleteVolume"),
            ("aws ec2 delete-security-group", "ec2:DeleteSecurityGroup"),
            ("aws ec2 delete-snapshot", "ec2:DeleteSnapshot"),
            ("aws ec2 deregister-image", "ec2:DeregisterImage"),
        ] {
            if task.contains(command) {
                called.insert(permission.to_string());
            }
        }
        assert_eq!(allowed, called, "{name}: the cleanup task's calls");
    }
}
