//! `tabadol`: parses the command line and runs it.
#![forbid(unsafe_code)]

use clap::Parser;

fn main() -> std::process::ExitCode {
    tabadol_hub::ops::cli::main(tabadol_hub::ops::cli::Cli::parse())
}
