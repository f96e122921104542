//! Crash points for the restart tests: `STOCKADE_FAULT=isolate:after_begin`
//! kills the agent there with SIGKILL, as a crash or an OOM kill would stop it.
//!
//! Read only in debug builds; a release build never aborts here, whatever
//! its environment says.
//!
//! Points: `isolate:after_begin` (the order is recorded, nothing done),
//! `isolate:after_attach:<n>` (after the n-th hook was attached, n from 1),
//! `isolate:before_finish` (enforced and verified, outcome not recorded).

/// The environment variable naming the crash point.
pub const ENV: &str = "STOCKADE_FAULT";

/// Kills the process with SIGKILL if `STOCKADE_FAULT` names `point`: no
/// destructor, no flush, no handler runs, as in a real kill.
pub fn point(point: &str) {
    if cfg!(debug_assertions) && armed(point) {
        eprintln!("{ENV}={point}: killing myself with SIGKILL here on purpose");
        let _ = nix::sys::signal::kill(nix::unistd::Pid::this(), nix::sys::signal::Signal::SIGKILL);
        // SIGKILL cannot be caught; should the call itself fail, stop anyway.
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
