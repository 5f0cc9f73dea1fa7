//! build-state: a Concourse resource type that records each build's
//! milestone (a state code) and status in one JSON document per build.
#![warn(missing_docs)]
#![deny(unreachable_pub)]

pub mod model;

/// The current time, rounded to what a document stores (milliseconds), so
/// that a value survives a round trip through JSON unchanged.
pub(crate) fn now() -> model::Timestamp {
    use chrono::SubsecRound;
    chrono::Utc::now().trunc_subsecs(3)
}

pub(crate) mod app;
pub mod cli;
pub mod concourse;
pub mod config;
pub(crate) mod engine;
pub(crate) mod handoff;
pub(crate) mod inputs;
pub(crate) mod net;
pub mod protocol;
pub(crate) mod request;
pub mod resource;
pub(crate) mod store;

/// What a program has to say besides its answer: warnings, progress,
/// notes. The library never prints; it hands lines to the `Notes` the
/// caller gives it (the way it is given a clock), and the binary decides
/// what reaches stderr (`build-state: ` before each line). Tests read them.
#[derive(Default)]
pub struct Notes {
    lines: std::sync::Mutex<Vec<String>>,
    sink: Option<Sink>,
}

type Sink = Box<dyn Fn(&str, bool) + Send + Sync>;

impl std::fmt::Debug for Notes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notes").field("lines", &self.lines).finish()
    }
}

impl Notes {
    /// Notes kept until `Notes::take`.
    pub fn new() -> Notes {
        Notes::default()
    }

    /// Notes handed at once to `sink`, with whether the line is progress
    /// (a terminal may overwrite it with the next).
    pub fn to(sink: impl Fn(&str, bool) + Send + Sync + 'static) -> Notes {
        Notes {
            lines: Default::default(),
            sink: Some(Box::new(sink)),
        }
    }

    fn add(&self, line: String, progress: bool) {
        // Notes quote stored text (errors, names): never a raw control
        // character on a terminal (a line break is kept: notes have
        // several lines).
        let line = visible_keeping_newlines(&line);
        match &self.sink {
            Some(sink) => sink(&line, progress),
            None => self.lines.lock().unwrap().push(line),
        }
    }

    /// Adds a line.
    pub fn note(&self, line: impl Into<String>) {
        self.add(line.into(), false);
    }

    /// Adds a warning (`warning: ` before it).
    pub(crate) fn warn(&self, line: impl std::fmt::Display) {
        self.note(format!("warning: {line}"));
    }

    /// Adds a progress line (`read 3000/10000 builds ...`).
    pub(crate) fn progress(&self, line: impl Into<String>) {
        self.add(line.into(), true);
    }

    /// The lines kept so far, in order; none are left.
    pub(crate) fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.lines.lock().unwrap())
    }
}

/// Whether `c` must not reach a terminal raw: a C0 or C1 control, DEL,
/// or a bidi control (which reorders the text around it).
fn hostile(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// `text` with every control character (C0, C1, DEL) and bidi control
/// shown escaped (`\x1b`, `\u{202e}`): what a terminal may show of text
/// from the store, a pipeline or a task. JSON outputs are exact instead.
pub(crate) fn visible(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(hostile) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if !hostile(c) {
            out.push(c);
        } else if (c as u32) < 0x80 {
            out.push_str(&format!("\\x{:02x}", c as u32));
        } else {
            out.push_str(&format!("\\u{{{:x}}}", c as u32));
        }
    }
    std::borrow::Cow::Owned(out)
}

/// [`visible`], keeping line breaks.
fn visible_keeping_newlines(text: &str) -> String {
    text.split('\n')
        .map(|l| visible(l).into_owned())
        .collect::<Vec<_>>()
        .join("\n")
}

/// The runtime every program runs on: one thread (a step is one request at
/// a time; the CLI's scans use concurrency within it).
pub(crate) fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

/// Runs `work` to its end on `runtime`, and leaves at once: file work
/// that overran its deadline (a stuck mount, a lock held elsewhere) is
/// not waited for, as dropping the runtime would.
pub fn run_to_end<F: std::future::Future>(work: F) -> std::io::Result<F::Output> {
    let runtime = runtime()?;
    let out = runtime.block_on(work);
    runtime.shutdown_background();
    Ok(out)
}
pub mod pipeline;
