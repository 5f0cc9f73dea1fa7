//! The CLI's terminal: writing (tables, colour only on a terminal,
//! `--json`), asking, and the text helpers every room's rendering shares.
//! No command's rendering lives here: each room renders its own.

use crate::model::Status;
use anyhow::Result;
use serde_json::Value;
use std::io::{IsTerminal, Write};

/// Answers a question (unit tests).
#[cfg(test)]
type Answer = Box<dyn Fn(&str) -> bool + Send + Sync>;

/// The CLI's terminal: results on stdout (or, in unit tests, a buffer),
/// and everything else (progress, warnings, notes) handed to the
/// [`Notes`](crate::Notes) the binary gave it.
pub(crate) struct Out {
    pub(crate) json: bool,
    colour: bool,
    /// Where output goes: stdout, or (in unit tests) a buffer.
    sink: Option<std::sync::Arc<std::sync::Mutex<Vec<u8>>>>,
    /// Where notes go.
    pub(crate) notes: std::sync::Arc<crate::Notes>,
    /// Who answers questions instead of the terminal (unit tests).
    #[cfg(test)]
    answer: Option<Answer>,
}

/// A plain text table with aligned columns.
pub(crate) struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

fn width(s: &str) -> usize {
    // ANSI colour sequences take no room.
    let mut w = 0;
    let mut in_escape = false;
    for c in s.chars() {
        match (in_escape, c) {
            (false, '\x1b') => in_escape = true,
            (true, 'm') => in_escape = false,
            (true, _) => {}
            _ => w += 1,
        }
    }
    w
}

impl Table {
    pub(crate) fn new(header: &[&str]) -> Table {
        Table {
            header: header.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    pub(crate) fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub(crate) fn render(&self) -> String {
        let n = self.header.len();
        let mut widths: Vec<usize> = self.header.iter().map(|h| width(h)).collect();
        for r in &self.rows {
            for (i, c) in r.iter().enumerate().take(n) {
                widths[i] = widths[i].max(width(c));
            }
        }
        let mut out = String::new();
        for r in std::iter::once(&self.header).chain(&self.rows) {
            let mut line = String::new();
            for (i, c) in r.iter().enumerate().take(n) {
                line.push_str(c);
                if i + 1 < n {
                    line.push_str(&" ".repeat(widths[i] - width(c) + 2));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// `3m`, `2h`, `5d`: how long ago.
pub(crate) fn age(t: &chrono::DateTime<chrono::Utc>, now: crate::model::Timestamp) -> String {
    crate::model::time::ago((now - *t).num_seconds())
}

/// Stored text on one line, at most `max` characters, every control
/// character shown escaped ([`crate::visible`]).
pub(crate) fn one_line(s: &str, max: usize) -> String {
    let s = crate::visible(&s.split_whitespace().collect::<Vec<_>>().join(" ")).into_owned();
    if s.chars().count() > max {
        format!("{}…", s.chars().take(max - 1).collect::<String>())
    } else {
        s
    }
}

impl Out {
    pub(crate) fn new(json: bool, notes: std::sync::Arc<crate::Notes>) -> Out {
        let colour = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
        Out {
            json,
            colour,
            sink: None,
            notes,
            #[cfg(test)]
            answer: None,
        }
    }

    /// A line for stderr (the binary prefixes `build-state: `).
    pub(crate) fn note(&self, line: impl Into<String>) {
        self.notes.note(line);
    }

    /// Asks a yes/no question on the terminal; refuses without one.
    pub(crate) fn ask(&self, question: &str, without: &str) -> Result<bool> {
        use std::io::BufRead;
        #[cfg(test)]
        if let Some(answer) = &self.answer {
            return Ok(answer(question));
        }
        if !std::io::stdin().is_terminal() {
            anyhow::bail!("{without}");
        }
        eprint!("{question}");
        std::io::stderr().flush()?;
        let mut answer = String::new();
        std::io::stdin().lock().read_line(&mut answer)?;
        Ok(matches!(answer.trim(), "y" | "Y" | "yes"))
    }

    /// The same output, its questions answered by `answer` (which may
    /// change the world while "the person" thinks).
    #[cfg(test)]
    pub(crate) fn answering(
        mut self,
        answer: impl Fn(&str) -> bool + Send + Sync + 'static,
    ) -> Out {
        self.answer = Some(Box::new(answer));
        self
    }

    /// Output into a buffer (for tests), never coloured.
    #[cfg(test)]
    pub(crate) fn buffered(json: bool) -> (Out, std::sync::Arc<std::sync::Mutex<Vec<u8>>>) {
        let sink = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        (
            Out {
                json,
                colour: false,
                sink: Some(sink.clone()),
                notes: std::sync::Arc::new(crate::Notes::new()),
                answer: None,
            },
            sink,
        )
    }

    /// Writes text to the output, flushed.
    pub(crate) fn write(&self, s: &str) -> Result<()> {
        match &self.sink {
            Some(buf) => buf.lock().unwrap().extend_from_slice(s.as_bytes()),
            None => {
                let mut stdout = std::io::stdout().lock();
                let written = stdout.write_all(s.as_bytes()).and_then(|()| stdout.flush());
                // A reader that stopped reading (`| head`) is not an error.
                match written {
                    Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
                    other => other?,
                }
            }
        }
        Ok(())
    }

    /// Prints a table.
    pub(crate) fn table(&self, t: &Table) -> Result<()> {
        self.write(&t.render())
    }

    pub(crate) fn print_json(&self, v: &Value) -> Result<()> {
        let mut s = serde_json::to_string_pretty(v)?;
        s.push('\n');
        self.write(&s)
    }

    pub(crate) fn status(&self, s: Status) -> String {
        if !self.colour {
            return s.to_string();
        }
        let code = match s {
            Status::Pending => "36",
            Status::InProgress => "34",
            Status::Failed => "33",
            Status::Blocked => "1;31",
            Status::AwaitingApproval => "1;35",
            Status::Completed => "32",
            Status::Cancelled => "2",
        };
        format!("\x1b[{code}m{s}\x1b[0m")
    }
}

/// A failure's kind and, when a source pattern decided it, the pattern:
/// `persistent, by persistent_errors: AccessDenied`.
pub(crate) fn kind_of(e: &crate::model::ErrorInfo) -> String {
    match &e.rule {
        Some(rule) => format!("{}, by {rule}", e.kind.as_str()),
        None => e.kind.as_str().to_string(),
    }
}

/// `n` things in words: "1 build", "2 builds".
pub(crate) fn count(n: impl Into<u64>, one: &str) -> String {
    match n.into() {
        1 => format!("1 {one}"),
        n => format!("{n} {one}s"),
    }
}

#[cfg(test)]
mod count_tests {
    #[test]
    fn counts_are_in_words() {
        assert_eq!(super::count(1u64, "build"), "1 build");
        assert_eq!(super::count(0u64, "build"), "0 builds");
        assert_eq!(super::count(2u32, "failure"), "2 failures");
    }
}
