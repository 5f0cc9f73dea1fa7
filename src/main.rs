//! One binary, three programs and a CLI: installed as `/opt/resource/check`,
//! `in` and `out` it speaks the Concourse resource protocol (chosen by the
//! name it is called by); as `build-state` it is the CLI. It only reads the
//! input, calls the library and prints: the reply on stdout, the library's
//! notes on stderr.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result};
use build_state::{Notes, resource};

/// Notes go to stderr as `build-state: LINE`; on a terminal a progress line
/// is overwritten by the next.
fn stderr_notes() -> Arc<Notes> {
    let tty = std::io::stderr().is_terminal();
    let pending = std::sync::atomic::AtomicBool::new(false);
    Arc::new(Notes::to(move |line, progress| {
        use std::sync::atomic::Ordering::Relaxed;
        let mut err = std::io::stderr().lock();
        let back = if pending.swap(false, Relaxed) {
            "\r\x1b[K"
        } else {
            ""
        };
        if progress && tty {
            let _ = write!(err, "{back}build-state: {line}");
            pending.store(true, Relaxed);
        } else {
            let _ = writeln!(err, "{back}build-state: {line}");
        }
        let _ = err.flush();
    }))
}

fn main() -> ExitCode {
    let mut args = std::env::args_os();
    let argv0 = args.next().unwrap_or_default();
    let name = Path::new(&argv0)
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default()
        .to_string();
    let rest: Vec<_> = args.collect();
    let notes = stderr_notes();
    let result = match resource::Program::named(&name, rest.first().map(PathBuf::from)) {
        Some(program) => program.and_then(|p| resource_main(p, &notes)),
        None => build_state::cli::main(std::iter::once(argv0).chain(rest), notes.clone()),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            notes.note(format!("error: {e:#}"));
            ExitCode::FAILURE
        }
    }
}

/// Reads the request from stdin, runs the program, prints the JSON reply.
fn resource_main(program: resource::Program, notes: &Notes) -> Result<ExitCode> {
    let reply = build_state::run_to_end(program.answer(std::io::stdin().lock(), notes))??;
    std::io::stdout()
        .lock()
        .write_all(&reply)
        .context("writing the reply to stdout")?;
    Ok(ExitCode::SUCCESS)
}
