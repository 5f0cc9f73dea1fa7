//! One binary, three programs and a CLI: installed as `/opt/resource/check`,
//! `in` and `out` it speaks the Concourse resource protocol (chosen by the
//! name it is called by); as `build-state` it is the CLI.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use build_state::resource;

mod cli;

fn main() -> ExitCode {
    let mut args = std::env::args_os();
    let argv0 = args.next().unwrap_or_default();
    let name = Path::new(&argv0)
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default()
        .to_string();
    let rest: Vec<_> = args.collect();
    let result = match resource::Program::named(&name, rest.first().map(PathBuf::from)) {
        Some(program) => program.and_then(resource_main),
        None => cli::main(std::iter::once(argv0).chain(rest)),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("build-state: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Reads the request from stdin, runs the program, prints the JSON reply.
fn resource_main(program: resource::Program) -> Result<ExitCode> {
    let mut input = Vec::new();
    std::io::stdin()
        .read_to_end(&mut input)
        .context("reading the request from stdin")?;
    let reply = build_state::runtime()?.block_on(program.run(&input))?;
    let mut out = std::io::stdout().lock();
    out.write_all(&reply)
        .context("writing the reply to stdout")?;
    out.write_all(b"\n")
        .context("writing the reply to stdout")?;
    Ok(ExitCode::SUCCESS)
}
