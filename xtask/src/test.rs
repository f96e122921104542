//! The one command that runs every test: setup, the eBPF object check, the
//! build, the tests (streamed, then summed up), then clippy and rustfmt.
//! Lints run after the tests so that a lint never hides a test result.

use std::{
    io::{BufRead, BufReader, Write},
    ops::AddAssign,
    path::Path,
    process::ExitCode,
};

use anyhow::Context;

use crate::{ebpf, process, setup};

/// Test counts, summed over every `test result:` line cargo prints.
#[derive(Debug, Default, PartialEq, Eq, Clone, Copy)]
struct Tally {
    passed: u64,
    failed: u64,
    ignored: u64,
}

impl AddAssign for Tally {
    fn add_assign(&mut self, other: Self) {
        self.passed += other.passed;
        self.failed += other.failed;
        self.ignored += other.ignored;
    }
}

pub fn run(root: &Path) -> anyhow::Result<ExitCode> {
    setup::require_root("test")?;
    setup::run()?;
    let mut failures = Vec::new();
    if let Err(err) = ebpf::check(root) {
        eprintln!("xtask: {err:#}");
        failures.push("check-ebpf");
    }
    process::run(process::cargo().current_dir(root).args(BUILD))?;

    let (tally, tests_ok) = run_tests(root)?;
    if !tests_ok {
        failures.push("cargo test");
    }
    for (name, args) in [("clippy", CLIPPY), ("rustfmt", FMT)] {
        if !process::succeeds(process::cargo().current_dir(root).args(args))? {
            failures.push(name);
        }
    }
    Ok(conclude(tally, &failures))
}

const BUILD: &[&str] = &["build", "--workspace", "--all-targets"];
const TEST: &[&str] = &[
    "test",
    "--workspace",
    "--no-fail-fast",
    "--",
    "--test-threads=2",
];
const CLIPPY: &[&str] = &[
    "clippy",
    "--workspace",
    "--all-targets",
    "--",
    "-D",
    "warnings",
];
const FMT: &[&str] = &["fmt", "--all", "--", "--check"];

/// Runs the tests, echoing their output as it comes, and sums the results.
/// Cargo's messages and the tests' output share one pipe, so that they are
/// echoed in the order they were written.
fn run_tests(root: &Path) -> anyhow::Result<(Tally, bool)> {
    let (reader, writer) = std::io::pipe().context("cannot create a pipe")?;
    let mut cmd = process::cargo();
    cmd.current_dir(root)
        .args(TEST)
        .stdout(writer.try_clone()?)
        .stderr(writer);
    eprintln!("$ {}", process::describe(&cmd));
    let mut child = cmd.spawn().context("cannot start cargo test")?;
    // The command holds the pipe's writing end: it must close before the
    // reader can see the end of the output.
    drop(cmd);

    let tally = echo_and_tally(BufReader::new(reader), std::io::stdout().lock())?;
    let status = child.wait().context("cargo test did not finish")?;
    Ok((tally, status.success()))
}

fn echo_and_tally(mut input: impl BufRead, mut out: impl Write) -> anyhow::Result<Tally> {
    let mut tally = Tally::default();
    let mut line = Vec::new();
    // Bytes, not strings: a test may print anything, valid UTF-8 or not.
    while input.read_until(b'\n', &mut line)? > 0 {
        out.write_all(&line)?;
        out.flush()?;
        if let Some(result) = parse_result_line(&String::from_utf8_lossy(&line)) {
            tally += result;
        }
        line.clear();
    }
    Ok(tally)
}

/// Reads `test result: ok. 3 passed; 0 failed; 1 ignored; ...`.
fn parse_result_line(line: &str) -> Option<Tally> {
    let rest = line.trim_end().strip_prefix("test result:")?;
    let words: Vec<&str> = rest.split_whitespace().collect();
    let mut tally = Tally::default();
    for pair in words.windows(2) {
        let Ok(count) = pair[0].parse::<u64>() else {
            continue;
        };
        match pair[1].trim_end_matches([';', ',']) {
            "passed" => tally.passed = count,
            "failed" => tally.failed = count,
            "ignored" => tally.ignored = count,
            _ => {}
        }
    }
    Some(tally)
}

/// Prints which steps failed, then the aggregate line, last.
fn conclude(tally: Tally, failures: &[&str]) -> ExitCode {
    let mut failures = failures.to_vec();
    if tally.passed + tally.failed == 0 {
        failures.push("no test ran");
    }
    if !failures.is_empty() {
        eprintln!("xtask test failed: {}", failures.join(", "));
    }
    let Tally {
        passed,
        failed,
        ignored,
    } = tally;
    println!("tests: {passed} passed, {failed} failed, {ignored} ignored");
    if failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn result_lines_give_their_three_counts() {
        let line = "test result: FAILED. 3 passed; 1 failed; 2 ignored; 0 measured; \
                    5 filtered out; finished in 0.01s\n";

        let tally = parse_result_line(line);

        assert_eq!(
            tally,
            Some(Tally {
                passed: 3,
                failed: 1,
                ignored: 2
            })
        );
    }

    #[test]
    fn other_lines_are_not_results() {
        assert_eq!(parse_result_line("test a::b ... ok"), None);
        assert_eq!(parse_result_line("  test result: quoted by a test"), None);
    }

    #[test]
    fn echoed_output_sums_every_result_line() {
        let output = "running 2 tests\n\
                      test result: ok. 2 passed; 0 failed; 0 ignored; 0 measured\n\
                      test result: FAILED. 4 passed; 1 failed; 3 ignored; 0 measured\n";

        let mut echoed = Vec::new();

        let tally = echo_and_tally(output.as_bytes(), &mut echoed).unwrap();

        assert_eq!(
            tally,
            Tally {
                passed: 6,
                failed: 1,
                ignored: 3
            }
        );
        assert_eq!(echoed, output.as_bytes());
    }
}
