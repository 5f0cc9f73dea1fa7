//! `build-state simulate`: a pipeline played on virtual time before `fly
//! set-pipeline`, with the resource in memory (see [`crate::concourse`]).

use super::Error;
use super::terminal::Out;
use crate::concourse::atc::pipeline::Pipeline;
use crate::concourse::play::faults::Sweep;
use crate::concourse::play::memory::InMemory;
use crate::concourse::play::scenario::Scenario;
use crate::concourse::{Release, Report};
use crate::pipeline;
use anyhow::{Context, Result};
use std::path::PathBuf;
use std::rc::Rc;
use std::time::Duration;

/// `simulate`'s arguments (the pipeline's `-v`/`-y` are the global ones).
#[derive(clap::Args, Debug)]
pub(super) struct Args {
    /// The pipeline file, as given to fly set-pipeline
    pipeline_file: PathBuf,
    /// What the tasks do and what must hold (default: every task succeeds
    /// and the build is delivered)
    #[arg(long, value_name = "FILE")]
    scenario: Option<PathBuf>,
    /// The Concourse release to model (7.9 or later)
    #[arg(long, default_value = "8.2", value_name = "RELEASE")]
    release: String,
    /// A YAML file of ((vars)), as fly's -l (repeatable)
    #[arg(long = "vars-file", short = 'l', value_name = "FILE")]
    vars_files: Vec<PathBuf>,
    /// Sweep for faults: play again with the store down for DURATION at
    /// every moment a step touches it, and with each task hanging; list
    /// every play that stalls, runs a task twice or counts a failure no
    /// task had
    #[arg(long, value_name = "DURATION", num_args = 0..=1, default_missing_value = "2s")]
    faults: Option<String>,
}

/// Runs the simulation; the exit code (0 held, 1 did not).
/// At most this many jobs in a simulated pipeline.
const MAX_JOBS: usize = 300;
/// At most this many resources.
const MAX_RESOURCES: usize = 400;
/// At most this many jobs × hours of virtual time (the staged pipeline's
/// default play is 28 jobs × 48 h = 1,344).
const MAX_JOB_HOURS: u64 = 20_000;

pub(super) fn run(
    args: &Args,
    vars: &[String],
    yaml_vars: &[String],
    out: &Out,
) -> Result<u8, super::Error> {
    let release: Release = args.release.parse().map_err(Error::Usage)?;
    let given = given_vars(args, vars, yaml_vars)?;
    let (p, scenario, missing) = load(args, release, &given)?;
    let path = &args.pipeline_file;
    let name = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "pipeline".into());
    check_sources(&p, &missing)?;
    if let Some(d) = &args.faults {
        let outage = crate::model::time::parse(d)
            .ok()
            .filter(|d| !d.is_zero())
            .ok_or_else(|| Error::Usage(format!("--faults {d:?}: a duration such as 2s or 1m")))?;
        let (base, sweep) =
            crate::concourse::play::faults::sweep(&p, &name, release, &scenario, outage)
                .map_err(|e| Error::Usage(e.to_string()))?;
        if out.json {
            let both = serde_json::json!({"without_faults": base, "sweep": sweep});
            out.write(&format!(
                "{}\n",
                serde_json::to_string_pretty(&both).map_err(anyhow::Error::from)?
            ))?;
        } else {
            out.write(&swept(&base, &sweep))?;
        }
        return Ok(if base.passed() && sweep.findings.is_empty() {
            0
        } else {
            1
        });
    }
    let report =
        crate::concourse::simulate(&p, &name, release, &scenario, Rc::new(InMemory::new()))
            .map_err(|e| Error::Usage(e.to_string()))?;
    if out.json {
        out.write(&format!(
            "{}\n",
            serde_json::to_string_pretty(&report).map_err(anyhow::Error::from)?
        ))?;
    } else {
        out.write(&human(&report))?;
    }
    Ok(if report.passed() { 0 } else { 1 })
}

/// The vars as fly takes them: the files, then `-v`, then `-y`.
fn given_vars(args: &Args, vars: &[String], yaml_vars: &[String]) -> Result<pipeline::Vars, Error> {
    let unreadable = Error::Usage;
    let mut given = pipeline::Vars::new();
    for f in &args.vars_files {
        let text = pipeline::read_text(f)
            .map_err(|e| unreadable(format!("reading {}: {e}", f.display())))?;
        let v = pipeline::parse_yaml(&text)
            .map_err(|e| unreadable(format!("{}: {e:#}", f.display())))?;
        for (k, v) in v.as_object().into_iter().flatten() {
            given.insert(k.clone(), v.clone());
        }
    }
    for v in vars {
        pipeline::parse_var(&mut given, v, false).map_err(|e| unreadable(format!("{e:#}")))?;
    }
    for v in yaml_vars {
        pipeline::parse_var(&mut given, v, true).map_err(|e| unreadable(format!("{e:#}")))?;
    }
    Ok(given)
}

/// The pipeline as `release` reads it (its store replaced by memory), the
/// scenario, and the vars not given; refused beyond the simulation's
/// budget.
fn load(
    args: &Args,
    release: Release,
    given: &pipeline::Vars,
) -> Result<(Pipeline, Scenario, Vec<String>), Error> {
    let unreadable = Error::Usage;
    let path = &args.pipeline_file;
    let (mut value, missing) =
        pipeline::load_partly(path, given).map_err(|e| unreadable(format!("{e:#}")))?;
    if !value.is_object() {
        return Err(unreadable(format!(
            "{}: a pipeline is a mapping (resource_types, resources, jobs, groups)",
            path.display()
        )));
    }
    let storage = serde_json::json!({"local_dir": "/simulated"});
    crate::concourse::replace_storage(&mut value, storage.as_object().expect("an object"));
    let p = Pipeline::parse(&value, release).map_err(|errors| {
        unreadable(format!(
            "{}: Concourse {release} would refuse it:\n  {}",
            path.display(),
            errors.join("\n  ")
        ))
    })?;
    let scenario = match &args.scenario {
        None => Scenario::default(),
        Some(f) => {
            let text = pipeline::read_text(f)
                .map_err(|e| unreadable(format!("reading {}: {e}", f.display())))?;
            Scenario::parse(&text).map_err(|e| unreadable(format!("{}: {e}", f.display())))?
        }
    };
    // The simulation's budget: what a real pipeline needs, many times over.
    let job_hours = p.jobs.len() as u64 * scenario.until.as_secs().div_ceil(3600);
    if p.jobs.len() > MAX_JOBS || p.resources.len() > MAX_RESOURCES || job_hours > MAX_JOB_HOURS {
        return Err(unreadable(format!(
            "{}: {} jobs and {} resources over {}: more than a simulation plays (at most {MAX_JOBS} jobs, {MAX_RESOURCES} resources, and {MAX_JOB_HOURS} job-hours of virtual time)",
            path.display(),
            p.jobs.len(),
            p.resources.len(),
            crate::model::time::format(scenario.until)
        )));
    }
    Ok((p, scenario, missing.into_iter().collect()))
}

/// Every build-state resource's source is one the resource accepts (the
/// vars not given named, when that is why).
fn check_sources(p: &Pipeline, missing: &[String]) -> Result<(), Error> {
    for r in p.resources.iter().filter(|r| r.build_state) {
        crate::resource::configure(
            &serde_json::from_value(r.source.clone())
                .with_context(|| format!("resources.{}.source", r.name))?,
        )
        .map_err(|e| {
            let hint = if missing.is_empty() {
                String::new()
            } else {
                format!(
                    " (not given: {}; give them with -v)",
                    missing
                        .iter()
                        .map(|m| format!("(({m}))"))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            };
            Error::Usage(format!("resources.{}: {e:#}{hint}", r.name))
        })?;
    }
    Ok(())
}

/// A sweep's findings, for people.
fn swept(base: &Report, s: &Sweep) -> String {
    let mut out = format!(
        "sweeping {} on Concourse {}: {} plays ({} moments a step touched the store, each with the store down for {}; each task hanging)\n",
        s.pipeline,
        s.release,
        s.plays,
        s.moments,
        crate::model::time::format(Duration::from_secs_f64(s.outage))
    );
    if !base.passed() {
        out.push_str("\nwithout faults the play does not hold:\n");
        for f in base.wiring.iter().chain(&base.failures) {
            out.push_str(&format!("  {f}\n"));
        }
    }
    for f in &s.findings {
        out.push_str(&format!("\n{:>9}  {}\n", clock(f.at), f.fault));
        for v in &f.verdicts {
            out.push_str(&format!("           {v}\n"));
        }
        for l in &f.tail {
            out.push_str(&format!("           | {}", line(l)));
        }
    }
    out.push_str(&if s.findings.is_empty() && base.passed() {
        "\nok: no play stalls, runs a task twice or counts a failure no task had\n".to_string()
    } else {
        format!(
            "\nFAILED: {} of {} plays went wrong\n",
            s.findings.len(),
            s.plays
        )
    });
    out
}

/// One line of a timeline: time, build, what happened, the state after.
fn line(l: &crate::concourse::atc::Line) -> String {
    let who = match (&l.job, &l.build) {
        (Some(j), Some(n)) => format!("{j} #{n}"),
        _ => String::new(),
    };
    let state = l
        .state
        .as_ref()
        .map(|st| format!("  → {st}"))
        .unwrap_or_default();
    format!("{:>9}  {who:<30} {}{state}\n", clock(l.at), l.what)
}

use crate::model::time::clock;

fn span(secs: u64) -> String {
    crate::model::time::format(Duration::from_secs(secs))
}

/// The summary's counts: attempts and failures per stage, heartbeats,
/// refusals, alerts, handoffs, dead attempts found.
fn counts(r: &Report) -> String {
    let (m, mut s) = (&r.summary, String::new());
    let per = |map: &std::collections::BTreeMap<u32, u32>| {
        map.iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    if m.attempts.values().any(|n| *n > 1) || !m.failures.is_empty() {
        s.push_str(&format!("  attempts per stage: {}\n", per(&m.attempts)));
        s.push_str(&format!("  failures per stage: {}\n", per(&m.failures)));
    }
    if !m.heartbeats.is_empty() {
        let beats: Vec<String> = m
            .heartbeats
            .iter()
            .map(|(n, b)| format!("{n}: {} accepted, {} refused", b.accepted, b.refused))
            .collect();
        s.push_str(&format!("  heartbeats per stage: {}\n", beats.join("; ")));
    }
    if !r.played.refused.is_empty() {
        s.push_str(&format!(
            "  refused by the resource: {}\n",
            r.played.refused.len()
        ));
    }
    s.push_str(&format!("  alerts: {}\n", m.alerts));
    s.push_str(&format!("  left behind: {}\n", m.left_behind));
    for l in &r.played.left_behind {
        s.push_str(&format!(
            "    {} {} (stage {}, attempt {}): {}: {}\n",
            crate::visible(&l.name),
            crate::visible(&l.id),
            l.stage,
            l.attempt,
            l.holding.as_str(),
            crate::visible(&l.why)
        ));
    }
    if let Some(worst) = m.handoffs.iter().copied().reduce(f64::max) {
        let total: f64 = m.handoffs.iter().sum();
        s.push_str(&format!(
            "  handoffs: {}, mean {:.1}s, worst {:.1}s; waiting for checks and scheduling: {} in all\n",
            m.handoffs.len(),
            total / m.handoffs.len() as f64,
            worst,
            span(total.round() as u64)
        ));
    }
    if let Some(worst) = r.played.dead_found.iter().copied().reduce(f64::max) {
        s.push_str(&format!(
            "  dead attempts found: {}, the worst {:.1}s after its deadline\n",
            r.played.dead_found.len(),
            worst
        ));
    }
    s
}

/// The timeline and the summary, for people.
pub(crate) fn human(r: &Report) -> String {
    let mut s = format!(
        "simulating {} on Concourse {}: {}\n\n",
        r.pipeline, r.release, r.scenario
    );
    for l in &r.played.atc.timeline {
        s.push_str(&line(l));
    }
    let m = &r.summary;
    s.push_str("\nsummary\n");
    s.push_str(&format!(
        "  delivered: {}\n",
        match m.delivered_at {
            Some(t) => format!("yes, after {}", span(t)),
            None => "no".into(),
        }
    ));
    s.push_str(&format!("  simulated: {}\n", span(m.elapsed)));
    if let Some(end) = &m.end {
        s.push_str(&format!("  at the end: {end}\n"));
    }
    s.push_str(&counts(r));
    s.push_str(&format!(
        "  checks of build-state resources: {} ({} by webhook)\n",
        m.checks, m.webhooks
    ));
    s.push_str(&format!("  stopped: {}\n", m.stopped));
    s.push_str(&format!(
        "  builds: {}, gets from the cache: {}, gets run: {}\n",
        r.played
            .atc
            .builds
            .iter()
            .filter(|b| b.started.is_some())
            .count(),
        r.played.atc.cache_hits,
        r.played.atc.gets_run
    ));
    if !r.wiring.is_empty() {
        s.push_str("\nwiring\n");
        for w in &r.wiring {
            s.push_str(&format!("  {w}\n"));
        }
    }
    if !r.failures.is_empty() {
        s.push_str("\nnot as expected\n");
        for f in &r.failures {
            s.push_str(&format!("  {f}\n"));
        }
    }
    s.push_str(if r.passed() {
        "\nok: the scenario's expectations hold\n"
    } else {
        "\nFAILED\n"
    });
    s
}
