//! The play's side of what runs on workers: the resource's steps through
//! [`Steps`], and the tasks as the scenario says (their outcome, how long
//! they take, the files the job's puts read, and the heartbeats a task
//! whose script runs `build-state heartbeat` sends while it runs).

use super::Steps;
use super::scenario::{TaskOutcome, TaskRun};
use super::stand::Play;
use crate::concourse::atc::pipeline::{Resource, TaskStep};
use crate::concourse::atc::{
    Artifacts, BuildStatus, PutDone, PutFailed, StepError, TaskCall, TaskEnd, Worker,
};
use crate::model::Timestamp;
use crate::protocol::BuildEnv;
use serde_json::{Value, json};
use std::collections::{BTreeMap, VecDeque};

impl<S: Steps + 'static> Worker for Play<S> {
    async fn check(
        &self,
        resource: &Resource,
        from: Option<&Value>,
        now: Timestamp,
    ) -> Result<Vec<Value>, StepError> {
        self.steps.check(resource, from, now).await
    }

    async fn get(
        &self,
        resource: &Resource,
        version: &Value,
        params: &Value,
        now: Timestamp,
    ) -> Result<Artifacts, StepError> {
        self.steps.get(resource, version, params, now).await
    }

    async fn put(
        &self,
        resource: &Resource,
        params: &Value,
        env: &BuildEnv,
        artifacts: &BTreeMap<String, Artifacts>,
        now: Timestamp,
    ) -> Result<PutDone, PutFailed> {
        match self.steps.put(resource, params, env, artifacts, now).await {
            Ok((version, said)) => Ok(PutDone {
                version,
                said,
                handoffs: self.steps.take_handoffs(),
            }),
            Err(e) => {
                if let StepError::Refused(why) = &e {
                    let job = env.job.as_deref().unwrap_or("?");
                    let name = env.build_name.as_deref().unwrap_or("?");
                    self.books.borrow_mut().refused.push(format!(
                        "{job} #{name}: put {} refused: {why}",
                        crate::concourse::atc::compact(params)
                    ));
                }
                Err(PutFailed {
                    error: e,
                    handoffs: self.steps.take_handoffs(),
                })
            }
        }
    }

    async fn task(&self, call: TaskCall<'_>) -> TaskEnd {
        if let Some((status, outputs, said)) = self.steps.task(call.task, call.artifacts).await {
            self.count_run(call.task.name.clone());
            return TaskEnd::Exited {
                status,
                outputs,
                said,
            };
        }
        if let Some(copy) = super::documents::copy_of(&call) {
            // Counted per stage it runs (a run with nothing due is none).
            return self.run_on_copy(&call, copy).await;
        }
        self.count_run(call.task.name.clone());
        let run = self.next_run(&call);
        if run.outcome == TaskOutcome::Error {
            let why = run
                .error
                .clone()
                .unwrap_or_else(|| "its image could not be fetched".into());
            return TaskEnd::Errored(why);
        }
        let took = run.after.unwrap_or(self.scenario.task_time);
        self.record_created(&call, &run).await;
        let beats = self.heartbeats(&call);
        if run.outcome == TaskOutcome::Hang {
            self.atc()
                .note(call.build, format!("task {}: hangs", call.task.name), None);
            // Its process lives on, and its heartbeat loop too.
            beats.await;
            return std::future::pending().await;
        }
        tokio::select! {
            _ = tokio::time::sleep(took) => {}
            _ = beats => {}
        }
        self.end_of(&call, &run)
    }
}

impl<S: Steps + 'static> Play<S> {
    /// Counts a run of a task (by name, or `task: stage N`).
    pub(super) fn count_run(&self, key: String) {
        *self.books.borrow_mut().task_runs.entry(key).or_insert(0) += 1;
    }

    /// The scenario's next run of this task (by `job/task`, else by task).
    pub(super) fn next_run(&self, call: &TaskCall<'_>) -> TaskRun {
        let mut b = self.books.borrow_mut();
        let key = format!("{}/{}", call.job.name, call.task.name);
        let queue = if b.scripts.contains_key(&key) {
            b.scripts.get_mut(&key)
        } else {
            b.scripts.get_mut(&call.task.name)
        };
        queue.and_then(VecDeque::pop_front).unwrap_or(TaskRun {
            outcome: TaskOutcome::Succeed,
            error: None,
            after: None,
            creates: Vec::new(),
        })
    }

    /// How a task run that took its time ends, with the files the job's
    /// puts read from its outputs.
    pub(super) fn end_of(&self, call: &TaskCall<'_>, run: &TaskRun) -> TaskEnd {
        let t = call.task;
        let mut outputs: BTreeMap<String, Artifacts> = t
            .outputs
            .iter()
            .map(|o| (o.clone(), Artifacts::new()))
            .collect();
        let message = run
            .error
            .clone()
            .unwrap_or_else(|| format!("{} failed", t.name));
        for p in call.job.puts() {
            for (field, on) in [
                ("vars_file", TaskOutcome::Succeed),
                ("error_file", TaskOutcome::Fail),
            ] {
                let Some((art, rest)) = p.params[field].as_str().and_then(|p| p.split_once('/'))
                else {
                    continue;
                };
                if run.outcome != on {
                    continue;
                }
                if let Some(files) = outputs.get_mut(art) {
                    let body = if field == "vars_file" {
                        json!({t.name.replace('-', "_"): format!("{} #{}", call.job.name, call.build.name)})
                            .to_string()
                    } else {
                        message.clone()
                    };
                    files.insert(rest.to_string(), body.into_bytes());
                }
            }
        }
        // A cleanup task: it deletes what the `leaked.json` among its
        // inputs lists and writes the ids to the file its put releases.
        if run.outcome == TaskOutcome::Succeed {
            let leaked: Vec<Value> = t
                .inputs
                .iter()
                .filter_map(|(name, _)| call.artifacts.get(name)?.get("leaked.json"))
                .filter_map(|body| serde_json::from_slice::<Vec<Value>>(body).ok())
                .flatten()
                .filter_map(|l| l.get("id").cloned())
                .collect();
            for p in call.job.puts() {
                let Some((art, rest)) = p.params["release_file"]
                    .as_str()
                    .and_then(|p| p.split_once('/'))
                else {
                    continue;
                };
                if let Some(files) = outputs.get_mut(art) {
                    files.insert(
                        rest.to_string(),
                        Value::Array(leaked.clone()).to_string().into_bytes(),
                    );
                }
            }
        }
        match run.outcome {
            TaskOutcome::Succeed => TaskEnd::Exited {
                status: BuildStatus::Succeeded,
                outputs,
                said: "done".into(),
            },
            TaskOutcome::Fail => TaskEnd::Exited {
                status: BuildStatus::Failed,
                outputs,
                said: message,
            },
            TaskOutcome::Abort => TaskEnd::Aborted,
            TaskOutcome::WorkerLost => TaskEnd::WorkerLost { rerun: false },
            TaskOutcome::WorkerLostRerun => TaskEnd::WorkerLost { rerun: true },
            TaskOutcome::Stuck => TaskEnd::Stuck,
            TaskOutcome::Error | TaskOutcome::Hang => unreachable!("handled before the task ran"),
        }
    }

    /// What a task records as it creates it, when its script runs
    /// `build-state created BUILD_ID N NAME=ID...` (or its scenario run
    /// says `creates: [NAME]`): one id per name, made up from the job and
    /// build (`green_instance-green-image-3`), recorded for the run and
    /// attempt of the `state.env` among its inputs.
    async fn record_created(&self, call: &TaskCall<'_>, run: &TaskRun) {
        let t = call.task;
        let Some((n, mut names)) = t.config.as_ref().and_then(created_stage) else {
            return;
        };
        names.extend(run.creates.iter().cloned());
        let (run_no, attempt) = state_env(t, call.artifacts);
        let atc = self.atc();
        let claim = crate::model::Claim {
            state: n,
            run: run_no,
            attempt: attempt.map(|a| a as u32),
            by: crate::model::Actor {
                user: Some(format!("task {}", t.name)),
                ..Default::default()
            },
            at: atc.now(),
        };
        let ids = names
            .into_iter()
            .map(|name| {
                let id = format!("{name}-{}-{}", call.job.name, call.build.name);
                (name, id)
            })
            .collect();
        let line = match self.steps.created(&self.state, claim, ids).await {
            Ok(said) => format!("task {}: {said}", t.name),
            Err(StepError::Refused(e)) | Err(StepError::Unavailable(e)) => {
                let line = format!("task {}: created {n} refused: {e}", t.name);
                self.books
                    .borrow_mut()
                    .refused
                    .push(format!("{} #{}: {line}", call.build.job, call.build.name));
                line
            }
        };
        atc.note(call.build, line, None);
    }

    /// The heartbeats a task sends while it runs, when its script runs
    /// `build-state heartbeat BUILD_ID N`: one every `heartbeat_every`, for
    /// the run and attempt of the `state.env` among its inputs. Never ends
    /// by itself; the first accepted and every refused one are shown.
    async fn heartbeats(&self, call: &TaskCall<'_>) {
        let t = call.task;
        let Some(n) = t.config.as_ref().and_then(heartbeat_stage) else {
            return std::future::pending().await;
        };
        let (run, attempt) = state_env(t, call.artifacts);
        let mut shown = false;
        loop {
            tokio::time::sleep(self.scenario.heartbeat_every).await;
            let atc = self.atc();
            let claim = crate::model::Claim {
                state: n,
                run,
                attempt: attempt.map(|a| a as u32),
                by: crate::model::Actor {
                    user: Some(format!("task {}", t.name)),
                    ..Default::default()
                },
                at: atc.now(),
            };
            let result = self.steps.beat(&self.state, claim).await;
            let mut b = self.books.borrow_mut();
            let counts = b.heartbeats.entry(n).or_default();
            match result {
                Ok(said) => {
                    counts.0 += 1;
                    if !shown {
                        shown = true;
                        atc.note(call.build, format!("task {}: {said}", t.name), None);
                    }
                }
                Err(StepError::Refused(e)) => {
                    counts.1 += 1;
                    let line = format!("task {}: heartbeat {n} refused: {e}", t.name);
                    b.refused
                        .push(format!("{} #{}: {line}", call.build.job, call.build.name));
                    atc.note(call.build, line, None);
                }
                // The store unreachable: a missed sign of life, not a refusal.
                Err(StepError::Unavailable(_)) => {}
            }
        }
    }
}

/// The run and attempt in the `state.env` among a task's inputs.
fn state_env(t: &TaskStep, artifacts: &BTreeMap<String, Artifacts>) -> (Option<u64>, Option<u64>) {
    let env_of = |key: &str| -> Option<u64> {
        t.inputs.iter().find_map(|(name, _)| {
            let env = String::from_utf8_lossy(artifacts.get(name)?.get("state.env")?).into_owned();
            env.lines()
                .find_map(|l| l.strip_prefix(&format!("{key}=")))
                .and_then(|v| v.trim_matches('\'').parse().ok())
        })
    };
    (env_of("BUILD_STATE_RUN"), env_of("BUILD_STATE_ATTEMPT"))
}

/// The stage and names a task's script records with `build-state created
/// BUILD_ID N ... NAME=ID` (each such line; names before their `=`).
pub(crate) fn created_stage(config: &Value) -> Option<(u32, Vec<String>)> {
    let mut found: Option<(u32, Vec<String>)> = None;
    crate::concourse::atc::strings(&config["run"], &mut |s| {
        for line in s.lines() {
            let Some(rest) = line.split("build-state created ").nth(1) else {
                continue;
            };
            let mut words = rest.split_whitespace();
            let Some(n) = words.nth(1).and_then(|n| n.parse().ok()) else {
                continue;
            };
            let names = words
                .filter_map(|w| w.split_once('=').map(|(name, _)| name.to_string()))
                .filter(|name| {
                    !name.is_empty() && crate::model::resources::bad_name(name).is_none()
                });
            let entry = found.get_or_insert((n, Vec::new()));
            entry.1.extend(names);
        }
    });
    found
}

/// The stage a task's script sends heartbeats for (`build-state
/// heartbeat BUILD_ID N`), if it does.
pub(crate) fn heartbeat_stage(config: &Value) -> Option<u32> {
    let mut found = None;
    crate::concourse::atc::strings(&config["run"], &mut |s| {
        if found.is_none()
            && let Some(rest) = s.split("build-state heartbeat ").nth(1)
        {
            found = rest.split_whitespace().nth(1).and_then(|n| n.parse().ok());
        }
    });
    found
}
