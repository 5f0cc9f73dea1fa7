//! The `build-state` command line.

use anyhow::Result;
use std::ffi::OsString;
use std::process::ExitCode;

pub fn main(args: impl Iterator<Item = OsString>) -> Result<ExitCode> {
    let _ = args;
    eprintln!("build-state: the CLI is not built yet; call this binary as check, in or out");
    Ok(ExitCode::from(2))
}
