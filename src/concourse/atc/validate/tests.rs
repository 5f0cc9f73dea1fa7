//! Concourse's validation rules, each on a small pipeline.

use super::*;
#[test]
fn the_rules_catch_what_concourse_refuses() {
    let bad = serde_json::json!({
        "resources": [
            {"name": "state", "type": "build-state", "source": {}},
            {"name": "repo", "type": "git", "source": {}, "chek_every": "1m"},
        ],
        "resource_types": [{"name": "build-state", "type": "registry-image", "source": {}}],
        "jobs": [
            {"name": "a", "plan": [
                {"get": "repo", "trigers": true},
                {"get": "nope"},
                {"put": "state", "no_get": true, "params": {}},
                {"task": "t", "config": {"run": {"path": "sh"}, "inputs": [{"name": "state"}]}},
            ]},
            {"name": "b", "plan": [{"get": "repo", "passed": ["a", "c"]}, {"get": "state", "passed": ["b2"]}]},
            {"name": "b2", "plan": [{"task": "t", "config": {"platform": "linux", "run": {}}}]},
        ],
        "groups": [{"name": "g", "jobs": ["a", "b"]}],
    });
    let errors = pipeline_errors(&bad, Release::LATEST);
    for want in [
        "resources.repo: unknown field \"chek_every\"",
        "jobs.a.plan[0]: unknown field \"trigers\"",
        "jobs.a.plan[1]: unknown resource \"nope\"",
        "jobs.a.plan[3].config: missing 'platform'",
        "jobs.a: task t: input \"state\" is produced by no earlier step",
        "jobs.b.plan[0]: passed: no matching job(s) for \"c\"",
        "jobs.b.plan[1]: passed: job \"b2\" does not interact with resource \"state\"",
        "jobs.b2.plan[0].config: missing path to executable to run",
        "job \"b2\" belongs to no group",
    ] {
        assert!(
            errors.iter().any(|e| e == want),
            "{want:?} not in {errors:#?}"
        );
    }
    assert_eq!(errors.len(), 9, "{errors:#?}");
}

#[test]
fn no_get_is_unknown_before_7_9() {
    let p = serde_json::json!({
        "resources": [{"name": "state", "type": "mock", "source": {}}],
        "jobs": [{"name": "a", "plan": [{"put": "state", "no_get": true}]}],
    });
    let on = |r: &str| pipeline_errors(&p, r.parse().unwrap());
    assert_eq!(on("7.8"), ["jobs.a.plan[0]: unknown field \"no_get\""]);
    assert!(on("7.9").is_empty());
    assert!(on("8.2").is_empty());
}
