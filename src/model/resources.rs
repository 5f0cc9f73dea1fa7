//! What an attempt leaves behind in the cloud (a green instance, volumes,
//! security groups, a half-made image): every resource a build records is
//! in exactly one of four holdings, and the document says which.
//!
//! - `live`: the run may still use it (the attempt that made it is running,
//!   or its stage completed and later stages use it, or it failed and its
//!   retry may adopt it);
//! - `held`: a human asked to keep it until a time (`hold` on a failure);
//! - `leaked`: the run can no longer use it: a failed or dead attempt's
//!   that the retry did not adopt, what a `resume_from` loop, a `restart`
//!   or a `cancel` left, what was live when the build was delivered, what a
//!   hold kept until its time passed; a cleanup job deletes it;
//! - `released`: removed (a `release` of its id, or of its name by the
//!   stage that uses it).
//!
//! Every change of holding is written in an event (`created`, `adopted`,
//! `held`, `leaked`, `released`, and on a new run `carried`), so the
//! document's `resources` are the fold of its history like every other
//! summary field, and a revision's resources never depend on the clock.
//! `settle` decides those lists when an update is applied.

use super::document::{ActionKind, Event, Status, Timestamp, rfc3339};
use super::ladder::Code;
use super::rules::Refusal;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The most resources one document keeps (released ones included; a
/// restart archives those). About 400 bytes each with their events: a
/// build stays far below the 4 MiB a document may be.
pub(crate) const MAX_RESOURCES: usize = 1000;

/// The most characters of a resource's name (`green_instance`).
pub(crate) const MAX_NAME: usize = 64;

/// The most characters of a resource's id (an ARN is the longest).
pub(crate) const MAX_ID: usize = 256;

/// Where a resource stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Holding {
    /// The run may still use it.
    Live,
    /// Kept for a human until `until`.
    Held,
    /// The run can no longer use it: to be deleted.
    Leaked,
    /// Removed.
    Released,
}

impl Holding {
    /// As written in documents.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Holding::Live => "live",
            Holding::Held => "held",
            Holding::Leaked => "leaked",
            Holding::Released => "released",
        }
    }
}

/// A resource a build recorded, and where it stands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resource {
    /// What it is to the pipeline (`green_instance`).
    pub(crate) name: String,
    /// Its cloud id (`i-0abc...`).
    pub(crate) id: String,
    /// The stage whose attempt made it.
    pub(crate) stage: Code,
    /// That attempt.
    pub(crate) attempt: u32,
    /// The run that made it, when an earlier run than the document's (a
    /// restart carries what was not released).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) run: Option<u64>,
    /// When it was recorded.
    #[serde(with = "rfc3339")]
    pub(crate) created_at: Timestamp,
    /// Where it stands.
    pub(crate) holding: Holding,
    /// Since when.
    #[serde(with = "rfc3339")]
    pub(crate) since: Timestamp,
    /// When held: until when.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "rfc3339::option"
    )]
    pub(crate) until: Option<Timestamp>,
    /// Why it stands there (the event that put it there, in words).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) why: Option<String>,
}

/// What an event did to the build's resources. Empty on most events.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceEvents {
    /// Recorded by this event's attempt: name to id.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub(crate) created: BTreeMap<String, String>,
    /// Ids a retry's `start` kept using (`adopt`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) adopted: Vec<String>,
    /// Ids kept for a human until `held_until`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) held: Vec<String>,
    /// Until when `held` are kept.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "rfc3339::option"
    )]
    pub(crate) held_until: Option<Timestamp>,
    /// Ids the run can no longer use.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) leaked: Vec<String>,
    /// Ids removed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) released: Vec<String>,
    /// On the first event of a run: what the previous run left that was
    /// not released, as it stood (nothing is forgotten across runs).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) carried: Vec<Resource>,
}

impl ResourceEvents {
    /// Whether the event did nothing to resources.
    pub(crate) fn is_empty(&self) -> bool {
        *self == ResourceEvents::default()
    }

    /// `created green_instance=i-1; leaked i-0`: what the event did, for a
    /// history line (empty when nothing).
    pub(crate) fn describe(&self) -> String {
        let mut parts = Vec::new();
        if !self.created.is_empty() {
            let pairs: Vec<String> = self
                .created
                .iter()
                .map(|(n, i)| format!("{n}={i}"))
                .collect();
            parts.push(format!("created {}", pairs.join(" ")));
        }
        for (word, ids) in [
            ("adopted", &self.adopted),
            ("held", &self.held),
            ("leaked", &self.leaked),
            ("released", &self.released),
        ] {
            if !ids.is_empty() {
                let until = match (word, self.held_until) {
                    ("held", Some(t)) => format!(" until {}", rfc3339::format(&t)),
                    _ => String::new(),
                };
                parts.push(format!("{word} {}{until}", ids.join(" ")));
            }
        }
        if !self.carried.is_empty() {
            parts.push(format!("carried {} from the last run", self.carried.len()));
        }
        parts.join("; ")
    }
}

/// What an update asks of the build's resources besides its action.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ResourceChange {
    /// Recorded now: name to id (`created`, `created_file`).
    pub(crate) created: BTreeMap<String, String>,
    /// Removed: ids, or names of live resources (`release`).
    pub(crate) release: Vec<String>,
    /// Names a retry's `start` keeps using (`adopt`).
    pub(crate) adopt: Vec<String>,
    /// With a failure (or `hold` alone): keep the attempt's resources for
    /// a human this long.
    pub(crate) hold: Option<std::time::Duration>,
}

impl ResourceChange {
    /// Whether the update asks nothing of resources.
    pub(crate) fn is_empty(&self) -> bool {
        *self == ResourceChange::default()
    }
}

/// Why a name cannot name a resource, if it cannot: 1 to 64 of
/// `[A-Za-z0-9._-]`.
pub(crate) fn bad_name(name: &str) -> Option<String> {
    let ok = !name.is_empty()
        && name.chars().count() <= MAX_NAME
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    (!ok).then(|| {
        format!(
            "resource name {name:?} must be 1 to {MAX_NAME} of A-Z, a-z, 0-9, '.', '_', '-' (green_instance)"
        )
    })
}

/// Why an id cannot be a resource's id, if it cannot: 1 to 256 printable
/// characters, no space.
pub(crate) fn bad_id(id: &str) -> Option<String> {
    let ok = !id.is_empty()
        && id.chars().count() <= MAX_ID
        && id.chars().all(|c| !c.is_control() && !c.is_whitespace());
    (!ok).then(|| {
        format!(
            "resource id {id:?} must be 1 to {MAX_ID} printable characters without spaces (i-0abc123)"
        )
    })
}

/// The resources after `history`, oldest first: the fold of what its
/// events recorded.
pub(crate) fn fold(history: &[Event]) -> Vec<Resource> {
    let mut out: Vec<Resource> = Vec::new();
    for e in history {
        step(&mut out, e);
    }
    out
}

/// Applies one event's resource lists to `rs`.
fn step(rs: &mut Vec<Resource>, e: &Event) {
    let r = &e.resources;
    rs.extend(r.carried.iter().cloned());
    for (name, id) in &r.created {
        if find(rs, id).is_none() {
            rs.push(Resource {
                name: name.clone(),
                id: id.clone(),
                stage: e.target.unwrap_or(e.state),
                attempt: e.attempt,
                run: None,
                created_at: e.at,
                holding: Holding::Live,
                since: e.at,
                until: None,
                why: None,
            });
        }
    }
    let mut set = |ids: &[String], holding: Holding, until: Option<Timestamp>| {
        for id in ids {
            if let Some(i) = find(rs, id) {
                let res = &mut rs[i];
                res.holding = holding;
                res.since = e.at;
                res.until = until;
                res.why = Some(why(e, holding));
            }
        }
    };
    set(&r.adopted, Holding::Live, None);
    set(&r.held, Holding::Held, r.held_until);
    set(&r.leaked, Holding::Leaked, None);
    set(&r.released, Holding::Released, None);
}

/// The unreleased resource with this id.
fn find(rs: &[Resource], id: &str) -> Option<usize> {
    rs.iter()
        .rposition(|r| r.id == id && r.holding != Holding::Released)
}

/// Why event `e` put a resource in `holding`, in words.
fn why(e: &Event, holding: Holding) -> String {
    let who = e.by.describe();
    let at = e.revision;
    let code = e.target.unwrap_or(e.state);
    match (holding, e.action) {
        (Holding::Live, _) => format!(
            "adopted by start {code} (attempt {}) at revision {at}",
            e.attempt
        ),
        (Holding::Held, _) => format!(
            "held for a human by {} {code} ({who}) at revision {at}",
            e.action
        ),
        (Holding::Released, _) => format!("released by {who} at revision {at}"),
        (Holding::Leaked, ActionKind::Start) => format!(
            "start {code} (attempt {}) did not adopt it at revision {at}",
            e.attempt
        ),
        (Holding::Leaked, ActionKind::Fail) if e.state != code => format!(
            "fail {code} sent the build back to {} at revision {at}",
            e.state
        ),
        (Holding::Leaked, ActionKind::Complete | ActionKind::Set)
            if e.status == Status::Completed =>
        {
            format!("still live when the build was delivered (revision {at})")
        }
        (Holding::Leaked, ActionKind::Leak) => format!("its hold ended (revision {at})"),
        (Holding::Leaked, ActionKind::Created) => {
            format!("recorded by {who}, whose attempt at stage {code} was over (revision {at})")
        }
        (Holding::Leaked, kind) => format!("{kind} at revision {at} ({who})"),
    }
}

/// Decides the resource lists of the events `history[new..]` that an
/// update adds: what the transitions leave behind (a retry's start that
/// does not adopt, a start-over, a delivery, a cancel, a hold that ended),
/// and on the last event what the update asks (`created`, `adopt`,
/// `release`, `hold`). Refused when a name or id is malformed, or the
/// build would keep more than [`MAX_RESOURCES`].
pub(crate) fn settle(
    history: &mut [Event],
    new: usize,
    change: &ResourceChange,
) -> Result<(), Refusal> {
    for (name, id) in &change.created {
        if let Some(m) = bad_name(name).or_else(|| bad_id(id)) {
            return Err(Refusal::Invalid(m));
        }
    }
    let mut rs = fold(&history[..new]);
    let last = history.len() - 1;
    for (i, e) in history.iter_mut().enumerate().skip(new) {
        let asked = (i == last).then_some(change);
        decide(&rs, e, asked);
        step(&mut rs, e);
    }
    let kept = rs.len();
    if kept > MAX_RESOURCES {
        let open = rs.iter().filter(|r| r.holding != Holding::Released).count();
        return Err(Refusal::Invalid(format!(
            "{} would keep {kept} resources, more than the {MAX_RESOURCES} a build's document holds ({open} not released); nothing was written: release what was removed (build-state release), or restart the build once it is over to archive the released ones",
            history[last].by.describe(),
        )));
    }
    Ok(())
}

/// The lists of event `e` over resources `rs`, with what the update asks
/// when `e` is its last event.
fn decide(rs: &[Resource], e: &mut Event, asked: Option<&ResourceChange>) {
    let code = e.target.unwrap_or(e.state);
    let open = |r: &&Resource| matches!(r.holding, Holding::Live | Holding::Held);
    let live = |r: &&Resource| r.holding == Holding::Live;
    let mut out = ResourceEvents::default();
    // A hold whose time passed: leaked at the next write.
    let ended: Vec<String> = rs
        .iter()
        .filter(|r| r.holding == Holding::Held && r.until.is_some_and(|t| t <= e.at))
        .map(|r| r.id.clone())
        .collect();
    let mut leaking: Vec<String> = Vec::new();
    let adopt = asked.map(|a| a.adopt.as_slice()).unwrap_or_default();
    match e.action {
        ActionKind::Start => {
            // This run's resources of the stage: what an earlier run left
            // is no retry's to adopt.
            for r in rs
                .iter()
                .filter(open)
                .filter(|r| r.stage == code && r.run.is_none())
            {
                if adopt.contains(&r.name) {
                    out.adopted.push(r.id.clone());
                } else if r.holding == Holding::Live {
                    leaking.push(r.id.clone());
                }
            }
        }
        ActionKind::Fail if e.state != code => {
            // A start-over: the stages from `resume_from` on are done again.
            leaking.extend(
                rs.iter()
                    .filter(live)
                    .filter(|r| (e.state..=code).contains(&r.stage))
                    .map(|r| r.id.clone()),
            );
        }
        ActionKind::Restart => {}
        _ if matches!(e.status, Status::Completed | Status::Cancelled) => {
            leaking.extend(rs.iter().filter(live).map(|r| r.id.clone()));
        }
        _ => {}
    }
    if let Some(a) = asked {
        record_asked(rs, e, a, &mut out, &mut leaking);
        // What the same event records: as its stage's other resources.
        let over = matches!(e.status, Status::Completed | Status::Cancelled)
            && e.action != ActionKind::Restart;
        let start_over = e.action == ActionKind::Fail && e.state != code;
        let held = e.action == ActionKind::Fail && a.hold.is_some();
        for id in e.resources.created.values() {
            if held {
                out.held.push(id.clone());
            } else if over || start_over {
                leaking.push(id.clone());
            }
        }
        if held && out.held_until.is_none() {
            out.held_until = a
                .hold
                .and_then(|d| e.at.checked_add_signed(chrono::Duration::from_std(d).ok()?));
        }
    }
    out.leaked = ended;
    for id in leaking {
        if !out.leaked.contains(&id) && !out.held.contains(&id) {
            out.leaked.push(id);
        }
    }
    out.created = std::mem::take(&mut e.resources.created);
    out.carried = std::mem::take(&mut e.resources.carried);
    e.resources = out;
}

/// What the update asked, on its last event: created, released, held.
fn record_asked(
    rs: &[Resource],
    e: &mut Event,
    a: &ResourceChange,
    out: &mut ResourceEvents,
    leaking: &mut Vec<String>,
) {
    let code = e.target.unwrap_or(e.state);
    for (name, id) in &a.created {
        if !rs
            .iter()
            .any(|r| &r.id == id && r.holding != Holding::Released)
        {
            e.resources.created.insert(name.clone(), id.clone());
        }
    }
    for token in &a.release {
        for id in resolve(rs, token) {
            if !out.released.contains(&id) {
                out.released.push(id);
            }
        }
    }
    leaking.retain(|id| !out.released.contains(id));
    if let Some(d) = a
        .hold
        .filter(|_| matches!(e.action, ActionKind::Fail | ActionKind::Hold))
    {
        let until =
            e.at.checked_add_signed(chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX));
        // A failure holds its attempt's resources (and what a start-over
        // leaves); `hold` alone, every resource no attempt in progress uses.
        let holds = |r: &Resource| match e.action {
            ActionKind::Fail => {
                r.stage == code && r.holding == Holding::Live || leaking.contains(&r.id)
            }
            _ => {
                matches!(r.holding, Holding::Live | Holding::Held | Holding::Leaked)
                    && !(e.status == Status::InProgress
                        && r.stage == e.state
                        && r.holding == Holding::Live)
            }
        };
        out.held = rs
            .iter()
            .filter(|r| holds(r) && !out.released.contains(&r.id))
            .map(|r| r.id.clone())
            .collect();
        out.held_until = until.filter(|_| !out.held.is_empty());
        leaking.retain(|id| !out.held.contains(id));
    }
}

/// The ids a `release` token names: an unreleased resource's id, else the
/// live resources of that name (a stage removing its own).
pub(crate) fn resolve(rs: &[Resource], token: &str) -> Vec<String> {
    if rs
        .iter()
        .any(|r| r.id == token && r.holding != Holding::Released)
    {
        return vec![token.to_string()];
    }
    rs.iter()
        .filter(|r| r.name == token && r.holding == Holding::Live)
        .map(|r| r.id.clone())
        .collect()
}

/// What a restart carries into the new run at `at`: every resource the
/// finished run did not release, the live ones now leaked.
pub(crate) fn carry(rs: &[Resource], run: u64, at: Timestamp, revision: u64) -> Vec<Resource> {
    rs.iter()
        .filter(|r| r.holding != Holding::Released)
        .map(|r| {
            let mut r = r.clone();
            r.run = r.run.or(Some(run));
            if r.holding == Holding::Live {
                r.holding = Holding::Leaked;
                r.since = at;
                r.why = Some(format!(
                    "left by run {run} (restart at revision {revision})"
                ));
            }
            r
        })
        .collect()
}

/// Whether a hold of `rs` has ended at `now` with nothing written yet.
pub(crate) fn hold_ended(rs: &[Resource], now: Timestamp) -> bool {
    rs.iter()
        .any(|r| r.holding == Holding::Held && r.until.is_some_and(|t| t <= now))
}

/// A resource that is not released, as `show`, `list`, the dashboard and
/// `metrics` say it: where it stands at `now` (a hold past its time is
/// leaked), since when, why, and the command that releases it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LeftBehind {
    /// The build.
    pub(crate) build_id: String,
    /// What it is to the pipeline.
    pub(crate) name: String,
    /// Its cloud id.
    pub(crate) id: String,
    /// The stage whose attempt made it.
    pub(crate) stage: Code,
    /// That attempt.
    pub(crate) attempt: u32,
    /// Where it stands at `now`.
    pub(crate) holding: Holding,
    /// Since when.
    #[serde(with = "rfc3339")]
    pub(crate) since: Timestamp,
    /// When held: until when.
    #[serde(skip_serializing_if = "Option::is_none", with = "rfc3339::option")]
    pub(crate) until: Option<Timestamp>,
    /// Why, in words.
    pub(crate) why: String,
    /// The command that records it removed (quoted for a shell).
    pub(crate) release: String,
}

/// What `doc`'s build left behind at `now` and has not released: the
/// leaked first (a hold past its time is leaked), then the held, then the
/// live, oldest first within each.
pub(crate) fn left_behind(doc: &super::Document, now: Timestamp) -> Vec<LeftBehind> {
    let mut out: Vec<LeftBehind> = doc
        .resources
        .iter()
        .filter(|r| r.holding != Holding::Released)
        .map(|r| {
            let ended = r.holding == Holding::Held && r.until.is_some_and(|t| t <= now);
            let (holding, since, why) = if ended {
                let until = r.until.expect("held with a time");
                (
                    Holding::Leaked,
                    until,
                    format!("its hold ended at {}", rfc3339::format(&until)),
                )
            } else {
                let why = r.why.clone().unwrap_or_else(|| match r.holding {
                    Holding::Live => format!("in use by the run (stage {} made it)", r.stage),
                    _ => String::new(),
                });
                (r.holding, r.since, why)
            };
            let release = ["build-state", "release", &doc.build_id, &r.id]
                .iter()
                .map(|w| super::attention::shell_word(w).unwrap_or_else(|| "'?'".into()))
                .collect::<Vec<_>>()
                .join(" ");
            LeftBehind {
                build_id: doc.build_id.clone(),
                name: r.name.clone(),
                id: r.id.clone(),
                stage: r.stage,
                attempt: r.attempt,
                holding,
                since,
                until: r.until.filter(|_| holding == Holding::Held),
                why,
                release,
            }
        })
        .collect();
    let rank = |h: Holding| match h {
        Holding::Leaked => 0,
        Holding::Held => 1,
        _ => 2,
    };
    out.sort_by(|a, b| {
        rank(a.holding)
            .cmp(&rank(b.holding))
            .then(a.since.cmp(&b.since))
    });
    out
}
