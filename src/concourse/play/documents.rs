//! Tasks that record progress on a copy of the document with the CLI
//! (`pipelines/resumable-single-job.yml`): the task gets the document,
//! asks `build-state next` whether a stage is due, records `start`, runs
//! the stage (as the scenario says), records `complete` or `fail` on its
//! copy, and a put of `file:` writes the copy back (accepted only when it
//! extends the stored history). The stand-in does what such a script does,
//! with the model's own transitions: the same ones the CLI runs.

use super::Steps;
use super::scenario::{TaskOutcome as Ran, TaskRun};
use super::stand::Play;
use crate::concourse::atc::{Artifacts, BuildStatus, TaskCall, TaskEnd};
use crate::model::{
    Action, Actor, Document, ErrorInfo, FailureKind, NextStep, Outcome, Update, apply,
};
use std::collections::BTreeMap;

/// Where a task's document copy comes from and goes: the input holding
/// `state.json`, and the output artifact and path a put of `file:` writes.
pub(super) struct CopyOf {
    input: String,
    output: String,
    path: String,
}

/// The document copy a task keeps, when a put of its job writes a task
/// output back with `file:` and the task gets a build-state document.
pub(super) fn copy_of(call: &TaskCall<'_>) -> Option<CopyOf> {
    let (output, path) = call.job.puts().iter().find_map(|p| {
        let (art, rest) = p.params["file"].as_str()?.split_once('/')?;
        call.task
            .outputs
            .contains(&art.to_string())
            .then(|| (art.to_string(), rest.to_string()))
    })?;
    let input = call
        .task
        .inputs
        .iter()
        .find(|(name, _)| {
            call.artifacts
                .get(name)
                .is_some_and(|a| a.contains_key("state.json"))
        })?
        .0
        .clone();
    Some(CopyOf {
        input,
        output,
        path,
    })
}

impl<S: Steps + 'static> Play<S> {
    /// Runs a task that keeps a document copy: what it writes back.
    pub(super) async fn run_on_copy(&self, call: &TaskCall<'_>, copy: CopyOf) -> TaskEnd {
        let body = call.artifacts[&copy.input]["state.json"].clone();
        let mut outputs: BTreeMap<String, Artifacts> = call
            .task
            .outputs
            .iter()
            .map(|o| (o.clone(), Artifacts::new()))
            .collect();
        // The script copies the document first: a task that ends early
        // writes back what it got (a no-op put).
        let out = |outputs: &mut BTreeMap<String, Artifacts>, bytes: Vec<u8>| {
            if let Some(files) = outputs.get_mut(&copy.output) {
                files.insert(copy.path.clone(), bytes);
            }
        };
        out(&mut outputs, body.clone());
        let exited = |status, outputs, said: String| TaskEnd::Exited {
            status,
            outputs,
            said,
        };
        let (Ok(doc), Some(config)) = (
            serde_json::from_slice::<Document>(&body),
            self.config.as_ref(),
        ) else {
            return exited(BuildStatus::Errored, outputs, "no document to read".into());
        };
        let atc = self.atc();
        let step = NextStep::live(&doc, atc.now());
        if !matches!(step, NextStep::Run | NextStep::Retry) {
            let said = format!("nothing to run now ({})", step.as_str());
            return exited(BuildStatus::Succeeded, outputs, said);
        }
        let n = doc.state;
        let apply_now = |doc: &Document, action| on_copy(config, call, doc, action, atc.now());
        let started = match apply_now(&doc, Action::Start(n)) {
            Ok(d) => d,
            Err(e) => return exited(BuildStatus::Failed, outputs, format!("start {n}: {e}")),
        };
        self.count_run(format!("{}: stage {n}", call.task.name));
        let run = self.next_run(call);
        match run.outcome {
            Ran::Hang => {
                atc.note(call.build, format!("task {}: hangs", call.task.name), None);
                return std::future::pending().await;
            }
            Ran::Succeed | Ran::Fail => {}
            // A worker that vanished, an abort: the copy is lost with it.
            _ => return self.end_of(call, &run),
        }
        tokio::time::sleep(run.after.unwrap_or(self.scenario.task_time)).await;
        let action = match run.outcome {
            Ran::Succeed => Action::Complete(n),
            _ => Action::Fail {
                state: n,
                error: ErrorInfo::new(message(call, &run), FailureKind::Transient),
            },
        };
        match apply_now(&started, action) {
            Ok(d) => {
                out(&mut outputs, d.to_bytes());
                let said = format!("stage {n}: {}", d.whereabouts());
                exited(BuildStatus::Succeeded, outputs, said)
            }
            Err(e) => exited(BuildStatus::Failed, outputs, e),
        }
    }
}

/// The CLI's transition on the task's copy: the document it writes.
fn on_copy(
    config: &crate::config::Config,
    call: &TaskCall<'_>,
    doc: &Document,
    action: Action,
    now: crate::model::Timestamp,
) -> Result<Document, String> {
    let actor = Actor {
        user: Some(format!("task {}", call.task.name)),
        ..Actor::default()
    };
    match apply(Some(doc), &Update::new(action, actor, now), &config.rules()) {
        Ok(Outcome::Write(d)) => Ok(d),
        Ok(Outcome::Unchanged | Outcome::Ignored(_)) => Ok(doc.clone()),
        Ok(o) => Err(format!("{o:?}")),
        Err(e) => Err(e.to_string()),
    }
}

fn message(call: &TaskCall<'_>, run: &TaskRun) -> String {
    run.error
        .clone()
        .unwrap_or_else(|| format!("{} failed", call.task.name))
}
