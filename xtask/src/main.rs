//! Project tasks, run as `cargo xtask <task>`: machine setup, the eBPF
//! object build and its reproducibility check, and the one command that
//! runs every test.

mod certs;
mod ebpf;
mod fuzz;
mod process;
mod run_bin;
mod setup;
mod test;

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
};

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Stockade's build, check and test tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install the packages and mount the filesystems the tests need (root).
    Setup,
    /// Rebuild agent-ebpf/obj/stockade.bpf.o from its C source.
    Ebpf,
    /// Fail if the committed eBPF object differs from a fresh build.
    CheckEbpf,
    /// Run setup, check-ebpf, build, every test, clippy and rustfmt (root).
    Test,
    /// Run the agent on a real pod in a private containerd, end to end (root).
    Demo,
    /// Measure order-to-enforcement time over repeated orders (root).
    Bench {
        /// How many isolate/release orders to time.
        #[arg(long, default_value_t = 100)]
        runs: usize,
        /// Time kills instead: cgroup.kill against walking the PID list,
        /// on a pod of 1000 forking processes, `--runs` times each.
        #[arg(long)]
        kill: bool,
    },
    /// Run the cargo-fuzz targets (nightly and cargo-fuzz needed), adding
    /// what they find to the kept corpus in fuzz/corpus/.
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 60)]
        seconds: u32,
        /// Only this target.
        #[arg(long)]
        target: Option<String>,
    },
    /// Make a throw-away CA, agent and client certificates, and an access
    /// configuration, to try the mutual-TLS listener with.
    Certs {
        /// Where to write them.
        #[arg(long, default_value = "target/stockade-certs")]
        out: PathBuf,
        /// More names or addresses for the agent's certificate (repeatable).
        #[arg(long = "agent-name", value_name = "NAME")]
        agent_names: Vec<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.task, &workspace_root()) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("xtask: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(task: Task, root: &Path) -> anyhow::Result<ExitCode> {
    match task {
        Task::Setup => setup::run().map(|()| ExitCode::SUCCESS),
        Task::Ebpf => ebpf::rebuild(root).map(|()| ExitCode::SUCCESS),
        Task::CheckEbpf => ebpf::check(root).map(|()| ExitCode::SUCCESS),
        Task::Test => test::run(root),
        Task::Demo => run_bin::run(root, "demo", "stk-demo", false, &[]),
        Task::Bench { runs, kill: false } => {
            run_bin::run(root, "bench", "stk-bench", true, &[runs.to_string()])
        }
        Task::Bench { runs, kill: true } => {
            let args = ["kill".to_string(), runs.to_string()];
            run_bin::run(root, "bench", "stk-bench", true, &args)
        }
        Task::Fuzz { seconds, target } => {
            fuzz::run(root, seconds, target.as_deref()).map(|()| ExitCode::SUCCESS)
        }
        Task::Certs { out, agent_names } => {
            certs::run(&root.join(out), &agent_names).map(|()| ExitCode::SUCCESS)
        }
    }
}

/// The workspace is this crate's parent folder, wherever it was cloned.
fn workspace_root() -> PathBuf {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir.parent().unwrap_or(manifest_dir).to_path_buf()
}
