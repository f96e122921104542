//! A short, bounded fuzz of the parsers that read untrusted text: cgroup
//! paths, `/proc/PID/cgroup` files and incoming orders. Each must answer
//! with a value or an error, never a panic. Runs with the normal tests.
//!
//! Two parts: every input of the corpus kept in `fuzz/corpus/` (grown by
//! `cargo xtask fuzz`, which runs the cargo-fuzz targets on nightly) is
//! replayed through `stockade_agent::fuzz`, then proptest explores new
//! inputs for a bounded number of cases.

use proptest::prelude::*;
use stockade_agent::{cgroup, validate};
use stockade_proto::v1::{pod_selector::Target, AllowRule, IsolateRequest, PodName, PodSelector};

/// Every kept input of every target passes its target's checks.
#[test]
fn the_kept_corpus_passes_every_target() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
    for (name, target) in stockade_agent::fuzz::TARGETS {
        let dir = root.join(name);
        let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| {
            panic!("the corpus of {name} is missing at {}: {e}", dir.display())
        });
        let mut replayed = 0;
        for entry in entries {
            let path = entry.unwrap().path();
            let data = std::fs::read(&path).unwrap();
            let outcome = std::panic::catch_unwind(|| target(&data));
            assert!(
                outcome.is_ok(),
                "{name}: {} breaks a property",
                path.display()
            );
            replayed += 1;
        }
        assert!(replayed > 0, "the corpus of {name} is empty");
        println!("{name}: {replayed} kept inputs replayed");
    }
}

/// Enough cases to explore, few enough for the normal test run.
fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 512,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Cgroup-path-like text: the pieces kubelet and runtimes use, glued at
/// random, with dots, slashes and odd characters between.
fn cgroup_path() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("kubepods".to_owned()),
        Just("kubepods.slice".to_owned()),
        Just("kubepods-burstable.slice".to_owned()),
        Just("kubepods-besteffort-pod".to_owned()),
        Just("besteffort".to_owned()),
        Just("burstable".to_owned()),
        Just("pod".to_owned()),
        Just("cri-containerd-".to_owned()),
        Just("crio-conmon-".to_owned()),
        Just("docker-".to_owned()),
        Just(".scope".to_owned()),
        Just("..".to_owned()),
        Just(".".to_owned()),
        Just("_".to_owned()),
        Just(":".to_owned()),
        "[0-9a-f]{1,64}",
        "[0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12}",
        "\\PC{0,8}",
    ];
    prop::collection::vec(
        (piece, prop::sample::select(vec!["", "/", "-", "//"])),
        0..8,
    )
    .prop_map(|parts| {
        let mut path = String::new();
        for (piece, sep) in parts {
            path.push_str(sep);
            path.push_str(&piece);
        }
        path
    })
}

fn proc_cgroup_file() -> impl Strategy<Value = String> {
    let line = prop_oneof![
        cgroup_path().prop_map(|p| format!("0::{p}")),
        ("[0-9]{1,3}", "[a-z,=_]{0,12}", cgroup_path())
            .prop_map(|(id, ctl, p)| format!("{id}:{ctl}:{p}")),
        "\\PC{0,40}",
    ];
    prop::collection::vec(line, 0..6).prop_map(|lines| lines.join("\n"))
}

fn selector() -> impl Strategy<Value = Option<PodSelector>> {
    let target = prop_oneof![
        ("\\PC{0,70}", "\\PC{0,260}")
            .prop_map(|(namespace, name)| { Target::Name(PodName { namespace, name }) }),
        "[0-9a-fA-F-]{0,40}".prop_map(Target::Uid),
        "\\PC{0,40}".prop_map(Target::Uid),
    ];
    prop::option::of(prop::option::of(target).prop_map(|target| PodSelector { target }))
}

fn allow_rule() -> impl Strategy<Value = AllowRule> {
    let cidr = prop_oneof![
        "[0-9]{1,3}\\.[0-9]{1,3}\\.[0-9]{1,3}\\.[0-9]{1,3}(/[0-9]{1,4})?",
        "[0-9a-f:]{0,40}(/[0-9+]{0,4})?",
        "\\PC{0,70}",
    ];
    (cidr, -2i32..6, any::<u32>(), any::<u32>()).prop_map(|(cidr, protocol, port, port_end)| {
        AllowRule {
            cidr,
            protocol,
            port,
            port_end,
        }
    })
}

// The update keeps the fuzz compiling while fields are added to the message.
#[allow(clippy::needless_update)]
fn isolate_request() -> impl Strategy<Value = IsolateRequest> {
    (
        selector(),
        prop::collection::vec(allow_rule(), 0..20),
        -2i32..5,
        "\\PC{0,300}",
        "\\PC{0,300}",
        any::<bool>(),
    )
        .prop_map(
            |(pod, allow, mode, reason, reference, dry_run)| IsolateRequest {
                pod,
                allow,
                mode,
                reason,
                reference,
                dry_run,
                ..IsolateRequest::default()
            },
        )
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn classify_never_panics(path in cgroup_path()) {
        let _ = cgroup::classify(&path);
    }

    #[test]
    fn parse_proc_cgroup_never_panics(text in proc_cgroup_file()) {
        let _ = cgroup::parse_proc_cgroup(&text);
    }

    #[test]
    fn validate_isolate_never_panics_and_names_a_field(req in isolate_request()) {
        if let Err(refusal) = validate::isolate(&req) {
            prop_assert!(!refusal.field.is_empty());
            prop_assert!(!refusal.reason.is_empty());
        }
    }

    #[test]
    fn an_accepted_order_keeps_its_texts_within_bounds(req in isolate_request()) {
        if let Ok(order) = validate::isolate(&req) {
            prop_assert!(order.reason.chars().count() <= 256);
            prop_assert!(order.reference.chars().count() <= 256);
            prop_assert!(order.allow.len() <= 16);
        }
    }
}
