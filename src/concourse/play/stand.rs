//! The play: what stands in for the world around Concourse while the ATC
//! runs a pipeline. It is the ATC's `Worker` (the resource's steps
//! through [`Steps`], the tasks as the scenario says, their heartbeats)
//! and its `Observer` (the commit each run builds, refusals), runs the
//! scenario's events and humans, and decides when nothing is left to
//! happen.

use super::scenario::{Happening, Scenario, TaskRun};
use super::{Steps, Unplayable};
use crate::concourse::atc::pipeline::{Pipeline, Resource};
use crate::concourse::atc::{Atc, BuildRecord, Observer, Record, Settings, StepError, TICK};
use crate::model::Document;
use crate::protocol::BuildEnv;
use serde::Serialize;
use serde_json::{Value, json};
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::rc::{Rc, Weak};
use std::time::Duration;

/// What happened in a play.
#[derive(Clone, Debug, Serialize)]
pub struct Played {
    /// What the ATC did: the timeline, the builds, checks and the cache.
    #[serde(flatten)]
    pub atc: Record,
    /// Runs per task.
    pub(crate) task_runs: BTreeMap<String, u64>,
    /// Heartbeats the tasks sent per stage: (accepted, refused).
    pub(crate) heartbeats: BTreeMap<u32, (u64, u64)>,
    /// For each dead attempt recorded, the seconds from its deadline (its
    /// timeout, or its last sign of life plus its heartbeat timeout) to
    /// the write that recorded it.
    pub(crate) dead_found: Vec<f64>,
    /// Puts and heartbeats the resource refused, each said once.
    pub(crate) refused: Vec<String>,
    /// The build's document at the end.
    #[serde(skip)]
    pub document: Option<Document>,
    /// Seconds simulated.
    pub(crate) elapsed: u64,
    /// The cloud resources the build left behind at the end (leaked or
    /// held; not released, not in use).
    pub(crate) left_behind: Vec<crate::model::resources::LeftBehind>,
    /// When the build was delivered (seconds since the start).
    pub(crate) delivered_at: Option<u64>,
    /// Invariants the play broke (one run built two commits, ...).
    pub(crate) violations: Vec<String>,
    /// Why the play stopped.
    pub(crate) stopped: String,
    /// Whether it stopped with nothing left to happen (not its time out).
    pub(crate) settled: bool,
}

/// build-state's books of the play.
#[derive(Default)]
pub(super) struct Books {
    pub(super) scripts: BTreeMap<String, VecDeque<TaskRun>>,
    pub(super) task_runs: BTreeMap<String, u64>,
    pub(super) heartbeats: BTreeMap<u32, (u64, u64)>,
    pub(super) refused: Vec<String>,
    /// run → the commits the builds that wrote to it had.
    commits_of_run: BTreeMap<u64, BTreeSet<String>>,
    last_change: Duration,
    last_doc: Option<(u64, String)>,
    delivered_at: Option<Duration>,
    future_events: usize,
    /// The revision whose approval a human was asked for.
    approval_asked: Option<u64>,
    /// The attempt in progress: its revision and when it is dead.
    deadline: Option<(u64, crate::model::Timestamp)>,
    dead_found: Vec<f64>,
}

/// The world around the ATC.
pub(crate) struct Play<S: Steps + 'static> {
    pub(super) steps: Rc<S>,
    pub(super) scenario: Scenario,
    /// The ungated build-state resource whose document is the build's.
    pub(super) state: Resource,
    pub(super) config: Option<crate::config::Config>,
    pub(super) books: RefCell<Books>,
    atc: RefCell<Weak<Atc<Play<S>>>>,
}

/// Plays `scenario` on `pipeline`: what happened.
pub(crate) fn play<S: Steps + 'static>(
    pipeline: &Pipeline,
    steps: Rc<S>,
    settings: Settings,
    scenario: &Scenario,
) -> Result<Played, Unplayable> {
    let state = pipeline
        .state_resource()
        .ok_or(Unplayable::NoStateResource)?
        .clone();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .map_err(|e| Unplayable::Runtime(e.to_string()))?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, async {
        let play = Rc::new(Play {
            config: serde_json::from_value(state.source.clone())
                .ok()
                .and_then(|s| crate::resource::configure(&s).ok()),
            state,
            steps,
            scenario: scenario.clone(),
            books: RefCell::new(Books {
                scripts: scenario
                    .tasks
                    .iter()
                    .map(|(k, v)| (k.clone(), v.iter().cloned().collect()))
                    .collect(),
                future_events: scenario.events.len(),
                ..Books::default()
            }),
            atc: RefCell::default(),
        });
        let atc = Atc::new(pipeline.clone(), play.clone(), settings);
        *play.atc.borrow_mut() = Rc::downgrade(&atc);
        play.main(&atc).await
    })
}

impl<S: Steps + 'static> Play<S> {
    pub(super) fn atc(&self) -> Rc<Atc<Play<S>>> {
        self.atc
            .borrow()
            .upgrade()
            .expect("the ATC outlives the play")
    }

    async fn main(self: &Rc<Self>, atc: &Rc<Atc<Play<S>>>) -> Result<Played, Unplayable> {
        let events = self.start_events(atc)?;
        let until = self.scenario.until;
        let (stopped, settled) = loop {
            atc.tick().await;
            self.observe().await;
            if let Some(why) = self.finished(atc).await {
                break (why, true);
            }
            if atc.elapsed() >= until {
                let why = format!(
                    "the scenario's time ran out ({})",
                    crate::model::time::format(until)
                );
                break (why, false);
            }
            tokio::time::sleep(TICK).await;
        };
        for t in events {
            t.abort();
        }
        let document = self.steps.document(&self.state).await;
        let books = std::mem::take(&mut *self.books.borrow_mut());
        let mut violations = Vec::new();
        for (run, commits) in &books.commits_of_run {
            if commits.len() > 1 {
                violations.push(format!(
                    "run {run} built more than one commit: {} (every stage of a run must build the commit it started with)",
                    commits.iter().cloned().collect::<Vec<_>>().join(", ")
                ));
            }
        }
        Ok(Played {
            atc: atc.record(),
            task_runs: books.task_runs,
            heartbeats: books.heartbeats,
            dead_found: books.dead_found,
            refused: books.refused,
            left_behind: document
                .as_ref()
                .map(|d| crate::model::resources::left_behind(d, atc.now()))
                .unwrap_or_default()
                .into_iter()
                .filter(|l| l.holding != crate::model::Holding::Live)
                .collect(),
            document,
            elapsed: atc.elapsed().as_secs(),
            delivered_at: books.delivered_at.map(|d| d.as_secs()),
            violations,
            stopped,
            settled,
        })
    }

    /// Spawns each scenario event at its time.
    fn start_events(
        self: &Rc<Self>,
        atc: &Rc<Atc<Play<S>>>,
    ) -> Result<Vec<tokio::task::JoinHandle<()>>, Unplayable> {
        let t0 = atc.now();
        let mut tasks = Vec::new();
        for e in &self.scenario.events {
            if let Happening::StoreDown(d) = &e.what {
                let from = t0 + chrono::Duration::from_std(e.at).unwrap_or_default();
                let to = from + chrono::Duration::from_std(*d).unwrap_or_default();
                if !self.steps.outage(from, to) {
                    return Err(Unplayable::Steps(
                        "store_down needs the in-memory store".into(),
                    ));
                }
            }
            let me = self.clone();
            let e = e.clone();
            tasks.push(tokio::task::spawn_local(async move {
                tokio::time::sleep(e.at.saturating_sub(me.atc().elapsed())).await;
                me.happen(&e.what).await;
                me.books.borrow_mut().future_events -= 1;
            }));
        }
        Ok(tasks)
    }

    /// Notes a change of the document (for the stop rule and delivery),
    /// and asks the scenario's approver when a stage waits for approval.
    async fn observe(self: &Rc<Self>) {
        let doc = self.steps.document(&self.state).await;
        let now = self.atc().elapsed();
        if let Some(d) = &doc {
            self.watch_deadline(d).await;
        }
        if let (Some(d), Some(after)) = (&doc, self.scenario.approve_after)
            && d.status == crate::model::Status::AwaitingApproval
            && self.books.borrow().approval_asked != Some(d.revision)
        {
            let (n, revision) = (d.state, d.revision);
            {
                let mut b = self.books.borrow_mut();
                b.approval_asked = Some(revision);
                b.future_events += 1;
            }
            let me = self.clone();
            tokio::task::spawn_local(async move {
                tokio::time::sleep(after).await;
                me.approve(n).await;
                me.books.borrow_mut().future_events -= 1;
            });
        }
        let key = doc.as_ref().map(|d| (d.revision, d.status.to_string()));
        let mut b = self.books.borrow_mut();
        if key != b.last_doc {
            b.last_doc = key;
            b.last_change = now;
        }
        if doc
            .as_ref()
            .is_some_and(|d| d.status == crate::model::Status::Completed)
            && b.delivered_at.is_none()
        {
            b.delivered_at = Some(now);
        }
    }

    /// Keeps the deadline of the attempt in progress, and when a write
    /// recorded it dead, how long after its deadline that was.
    async fn watch_deadline(&self, d: &Document) {
        let Some(config) = self.config.as_ref() else {
            return;
        };
        let tracked = self.books.borrow().deadline;
        if let Some((revision, deadline)) = tracked
            && d.revision > revision
        {
            let next = d.history.iter().find(|e| e.revision == revision + 1);
            if let Some(e) =
                next.filter(|e| e.action == crate::model::ActionKind::Fail && e.at >= deadline)
            {
                let late = (e.at - deadline).num_milliseconds() as f64 / 1000.0;
                self.books.borrow_mut().dead_found.push(late);
            }
            self.books.borrow_mut().deadline = None;
        }
        if d.status == crate::model::Status::InProgress {
            let beat = self.steps.heartbeat(&self.state).await;
            let dead = d.dead_since(&config.retry, beat.as_ref());
            self.books.borrow_mut().deadline = dead.map(|t| (d.revision, t));
        }
    }

    /// Why the play is over, when it is: no build runs (or only builds the
    /// ATC will never see end), no event is to come, the document has not
    /// changed for a while and no time opens a gate later.
    async fn finished(&self, atc: &Atc<Play<S>>) -> Option<String> {
        let quiet = quiet_time(atc.pipeline());
        {
            let b = self.books.borrow();
            if atc.busy() || b.future_events > 0 || atc.elapsed() < b.last_change + quiet {
                return None;
            }
        }
        let doc = self.steps.document(&self.state).await?;
        let heartbeat = self.steps.heartbeat(&self.state).await;
        let now = atc.now();
        let config = self.config.as_ref()?;
        // A time that opens a gate, and then a check and a schedule after it.
        let margin = chrono::Duration::from_std(quiet).unwrap_or_default();
        // A stage due for long with no start opens the alert gate.
        let overdue = crate::model::attention::overdue_at(&doc, &config.retry);
        let later = doc.retry_at.is_some_and(|t| t + margin > now)
            || overdue.is_some_and(|t| t + margin > now)
            || doc
                .dead_since(&config.retry, heartbeat.as_ref())
                .is_some_and(|t| t + margin > now);
        if later {
            return None;
        }
        let stuck = atc.stuck_builds();
        let running = if stuck.is_empty() {
            "no build running or pending".to_string()
        } else {
            format!(
                "{} stuck running (its worker vanished unnoticed)",
                stuck.join(", ")
            )
        };
        Some(format!(
            "nothing left to happen: {} (revision {}), {running}, no gate to open later",
            doc.whereabouts(),
            doc.revision
        ))
    }

    async fn happen(self: &Rc<Self>, what: &Happening) {
        let atc = self.atc();
        match what {
            Happening::Commit => {
                let n = atc.commit();
                atc.log(None, format!("git: commit-{n} pushed"), None);
            }
            Happening::StoreDown(d) => {
                let said = format!("the store goes down for {}", crate::model::time::format(*d));
                atc.log(None, said, None);
                // The event lasts until the store is back: what was waiting
                // for it happens after that.
                tokio::time::sleep(*d).await;
                atc.log(None, "the store is back".into(), None);
                self.books.borrow_mut().last_change = atc.elapsed();
            }
            Happening::Check(name) => atc.check_resource(name),
            Happening::Trigger(job) => {
                atc.trigger_job(job);
            }
            Happening::Rerun(job) => {
                if atc.rerun_build(job).is_none() {
                    atc.log(None, format!("fly rerun-build: {job} has no build"), None);
                }
            }
            Happening::Put { params, resource } => {
                self.human_put(params, resource.as_deref()).await
            }
        }
    }

    /// A human's put (`fly execute`, the CLI): outside any build.
    async fn human_put(&self, params: &Value, resource: Option<&str>) {
        let atc = self.atc();
        let r = match resource {
            Some(n) => match atc.pipeline().resource(n) {
                Some(r) => r.clone(),
                None => return,
            },
            None => self.state.clone(),
        };
        // A human whose command could not reach the store runs it again a
        // minute later (three times in all).
        let mut tries = 0;
        let result = loop {
            tries += 1;
            let result = self
                .steps
                .put(
                    &r,
                    params,
                    &BuildEnv::default(),
                    &BTreeMap::new(),
                    atc.now(),
                )
                .await;
            match result {
                Err(StepError::Unavailable(e)) if tries < 3 => {
                    let line = format!(
                        "a human puts {params} to {}: failed: {e}; again in a minute",
                        r.name
                    );
                    atc.log(None, line, None);
                    tokio::time::sleep(Duration::from_secs(60)).await;
                }
                result => break result,
            }
        };
        let after = self.state().await;
        match result {
            Ok(_) => {
                // Outside a build `out` knows no ATC to post its webhooks
                // to (no BUILD_TEAM_NAME, BUILD_PIPELINE_NAME): nothing was
                // handed off; drop what a put might have queued.
                self.steps.take_handoffs();
                atc.log(None, format!("a human puts {params} to {}", r.name), after)
            }
            Err(e) => {
                let line = format!("a human puts {params} to {}: refused: {e}", r.name);
                if matches!(e, StepError::Refused(_)) {
                    self.books.borrow_mut().refused.push(line.clone());
                }
                atc.log(None, line, after)
            }
        }
    }

    /// A human approves stage `n`: by running the job whose put approves
    /// it (the pipeline's approval job), else with the CLI.
    async fn approve(self: &Rc<Self>, n: u32) {
        let atc = self.atc();
        let job = atc.pipeline().jobs.iter().find(|j| {
            j.puts()
                .iter()
                .any(|p| p.params.get("approve").and_then(Value::as_u64) == Some(u64::from(n)))
        });
        match job {
            Some(j) => {
                atc.log(
                    None,
                    format!("a human approves {n}: fly trigger-job {}", j.name),
                    None,
                );
                atc.trigger_job(&j.name);
            }
            None => {
                let params = json!({"approve": n, "reason": "approved by the scenario's human"});
                self.human_put(&params, None).await;
            }
        }
    }
}

/// The longest a pipeline can wait for its next version (a check, or a
/// time resource's interval), and a margin.
fn quiet_time(p: &Pipeline) -> Duration {
    p.resources
        .iter()
        .filter_map(|r| {
            let interval = (r.kind == "time")
                .then(|| r.source["interval"].as_str())
                .flatten()
                .and_then(|i| crate::concourse::atc::duration::parse(i).ok());
            match (r.check_every, interval) {
                (Some(c), Some(i)) => Some(c + i),
                (c, i) => c.or(i),
            }
        })
        .max()
        .unwrap_or(crate::concourse::atc::pipeline::DEFAULT_CHECK_EVERY)
        + Duration::from_secs(120)
}

impl<S: Steps + 'static> Observer for Play<S> {
    async fn state(&self) -> Option<String> {
        self.steps
            .document(&self.state)
            .await
            .map(|d| format!("{} {} r{}", d.state, d.status, d.revision))
    }

    /// Records which commit the build that wrote to the current run had.
    async fn put_landed(&self, build: &BuildRecord, resource: &Resource) {
        if resource.name != self.state.name {
            return;
        }
        let Some(doc) = self.steps.document(&self.state).await else {
            return;
        };
        let atc = self.atc();
        let commits: Vec<String> = build
            .inputs
            .values()
            .filter(|(r, _)| atc.pipeline().resource(r).is_some_and(|r| r.kind == "git"))
            .filter_map(|(_, v)| v["ref"].as_str().map(str::to_string))
            .collect();
        // What a build records for its own stage: not a human's put, not
        // the run's first event (start-build's init may be refused).
        if doc.last_event().by.build_id.as_deref() != Some(build.id.to_string().as_str()) {
            return;
        }
        let mut b = self.books.borrow_mut();
        for c in commits {
            b.commits_of_run.entry(doc.run).or_default().insert(c);
        }
    }
}
