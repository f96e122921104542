//! Crash points for the restart tests: `STOCKADE_FAULT=isolate:after_begin`
//! aborts the agent there, as a SIGKILL or an OOM kill would stop it.
//!
//! Read only in debug builds; a release build never aborts here, whatever
//! its environment says.
//!
//! Points: `isolate:after_begin` (the order is recorded, nothing done),
//! `isolate:after_attach:<n>` (after the n-th hook was attached, n from 1),
//! `isolate:before_finish` (enforced and verified, outcome not recorded).

/// The environment variable naming the crash point.
pub const ENV: &str = "STOCKADE_FAULT";

/// Aborts the process if `STOCKADE_FAULT` names `point`.
pub fn point(point: &str) {
    if cfg!(debug_assertions) && armed(point) {
        eprintln!("{ENV}={point}: aborting here on purpose");
        std::process::abort();
    }
}

/// Like [`point`], for the `n`-th pass of a numbered point.
pub fn numbered(point: &str, n: usize) {
    self::point(&format!("{point}:{n}"));
}

fn armed(point: &str) -> bool {
    std::env::var(ENV).is_ok_and(|v| v == point)
}
