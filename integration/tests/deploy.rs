//! The deployment in `deploy/`, judged without a cluster (none can run
//! here, see KERNEL-NOTES.md).
//!
//! Every overlay, and all components together, are rendered by
//! `kubectl kustomize`; every document is parsed into its `k8s-openapi`
//! type (a field the type does not know fails the test, so a misspelt
//! field cannot pass silently) and held to what the agent needs and no
//! more. The image definition is read for its structure, and the agent
//! binary is checked against the runtime image's glibc.
//!
//! Needs `kubectl` (Debian package `kubectl`, installed by
//! `cargo xtask setup`). Without it these tests fail and say so.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    io::ErrorKind,
    path::{Component, Path, PathBuf},
    process::Command,
    sync::OnceLock,
};

use anyhow::{bail, ensure, Context as _};
use k8s_openapi::{
    api::{
        admissionregistration::v1::{ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding},
        apps::v1::DaemonSet,
        core::v1::{ConfigMap, Container, Namespace, PodSpec, Service, ServiceAccount, Volume},
        rbac::v1::{ClusterRole, ClusterRoleBinding},
        scheduling::v1::PriorityClass,
    },
    apimachinery::pkg::util::intstr::IntOrString,
};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use serde_norway::Value;

type TestResult = anyhow::Result<()>;

const NAMESPACE: &str = "stockade-system";
const AGENT: &str = "stockade-agent";

/// The capabilities the agent process keeps (setpriv names). Why these:
/// deploy/image/Dockerfile.
const CAPABILITIES: &[&str] = &["net_admin", "sys_admin"];

/// The overlays in `deploy/kustomize/overlays`, each of which must render.
const OVERLAYS: &[&str] = &["tls", "identities", "guards", "terminate"];

/// Every component together, as an operator would combine them.
const ALL_COMPONENTS: &[&str] = &["tls", "identities", "guards", "terminate", "cri-o"];

const HEALTH_PORT: i32 = 9091;
const METRICS_PORT: i32 = 9090;
const TLS_PORT: i32 = 7443;

/// Highest priority a class outside kube-system may have.
const MAX_USER_PRIORITY: i32 = 1_000_000_000;

/// (API group, resource, verb): one permission of a ClusterRole.
type Permission = (String, String, String);

fn kustomize_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/kustomize")
}

fn image_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/image")
}

// ---------------------------------------------------------------------------
// Rendering and parsing

/// Runs `<kubectl> kustomize <dir>`; a missing kubectl names its package.
fn kustomize_with(kubectl: &str, dir: &Path) -> anyhow::Result<String> {
    let output = match Command::new(kubectl).arg("kustomize").arg(dir).output() {
        Ok(output) => output,
        Err(e) if e.kind() == ErrorKind::NotFound => bail!(
            "`{kubectl}` is not installed: install the Debian package `kubectl` \
             (`cargo xtask setup` does) to render deploy/kustomize"
        ),
        Err(e) => return Err(e).context(format!("cannot run {kubectl}")),
    };
    ensure!(
        output.status.success(),
        "kubectl kustomize {} failed: {}",
        dir.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).context("kustomize printed something that is not UTF-8")
}

fn kustomize(dir: &Path) -> anyhow::Result<String> {
    kustomize_with("kubectl", dir)
}

/// Every object of one rendering, each in its Kubernetes type.
#[derive(Default)]
struct Rendered {
    namespaces: Vec<Namespace>,
    service_accounts: Vec<ServiceAccount>,
    cluster_roles: Vec<ClusterRole>,
    role_bindings: Vec<ClusterRoleBinding>,
    priority_classes: Vec<PriorityClass>,
    daemon_sets: Vec<DaemonSet>,
    services: Vec<Service>,
    config_maps: Vec<ConfigMap>,
    policies: Vec<ValidatingAdmissionPolicy>,
    policy_bindings: Vec<ValidatingAdmissionPolicyBinding>,
}

impl Rendered {
    fn parse(yaml: &str) -> anyhow::Result<Self> {
        let mut out = Self::default();
        for document in serde_norway::Deserializer::from_str(yaml) {
            let value = Value::deserialize(document).context("kustomize printed bad YAML")?;
            if !value.is_null() {
                out.add(value)?;
            }
        }
        Ok(out)
    }

    /// Files one document under its kind; an unknown kind is an error, so
    /// that nothing reaches the cluster unchecked.
    fn add(&mut self, value: Value) -> TestResult {
        let kind = value
            .get("kind")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let name = value
            .get("metadata")
            .and_then(|m| m.get("name"))
            .and_then(Value::as_str)
            .unwrap_or_default();
        let what = format!("{kind} {name}");
        match kind {
            "Namespace" => self.namespaces.push(typed(&value, &what)?),
            "ServiceAccount" => self.service_accounts.push(typed(&value, &what)?),
            "ClusterRole" => self.cluster_roles.push(typed(&value, &what)?),
            "ClusterRoleBinding" => self.role_bindings.push(typed(&value, &what)?),
            "PriorityClass" => self.priority_classes.push(typed(&value, &what)?),
            "DaemonSet" => self.daemon_sets.push(typed(&value, &what)?),
            "Service" => self.services.push(typed(&value, &what)?),
            "ConfigMap" => self.config_maps.push(typed(&value, &what)?),
            "ValidatingAdmissionPolicy" => self.policies.push(typed(&value, &what)?),
            "ValidatingAdmissionPolicyBinding" => self.policy_bindings.push(typed(&value, &what)?),
            _ => bail!("{what}: a kind this test does not know; teach it the checks it needs"),
        }
        Ok(())
    }

    fn daemon_set(&self) -> anyhow::Result<&DaemonSet> {
        match self.daemon_sets.as_slice() {
            [ds] => Ok(ds),
            other => bail!("expected one DaemonSet, found {}", other.len()),
        }
    }

    fn pod(&self) -> anyhow::Result<&PodSpec> {
        self.daemon_set()?
            .spec
            .as_ref()
            .and_then(|s| s.template.spec.as_ref())
            .context("the DaemonSet has no pod spec")
    }

    fn agent(&self) -> anyhow::Result<&Container> {
        let pod = self.pod()?;
        ensure!(pod.init_containers.is_none(), "unexpected init containers");
        match pod.containers.as_slice() {
            [c] if c.name == "agent" => Ok(c),
            other => bail!("expected one container named agent, found {}", other.len()),
        }
    }

    fn cluster_role(&self) -> anyhow::Result<&ClusterRole> {
        match self.cluster_roles.as_slice() {
            [role] if role.metadata.name.as_deref() == Some(AGENT) => Ok(role),
            other => bail!("expected one ClusterRole {AGENT}, found {}", other.len()),
        }
    }
}

/// Parses `value` as `T` and fails if anything in it did not survive the
/// round trip: a field `T` does not have is dropped by its deserializer.
fn typed<T: DeserializeOwned + Serialize>(value: &Value, what: &str) -> anyhow::Result<T> {
    let object: T = serde_norway::from_value(value.clone()).with_context(|| what.to_owned())?;
    let back = serde_norway::to_value(&object)?;
    if let Some(path) = first_difference(value, &back, "") {
        bail!("{what}: {path} is not a field of the Kubernetes type, or changed when parsed");
    }
    Ok(object)
}

/// The path of the first place where `a` holds something `b` does not.
fn first_difference(a: &Value, b: &Value, path: &str) -> Option<String> {
    match (a, b) {
        (Value::Mapping(a), Value::Mapping(b)) => a.iter().find_map(|(key, value)| {
            let key = key.as_str().unwrap_or("?");
            let here = format!("{path}.{key}");
            match b.get(key) {
                Some(other) => first_difference(value, other, &here),
                None => Some(here),
            }
        }),
        (Value::Sequence(a), Value::Sequence(b)) if a.len() == b.len() => a
            .iter()
            .zip(b)
            .enumerate()
            .find_map(|(i, (x, y))| first_difference(x, y, &format!("{path}[{i}]"))),
        _ if a == b => None,
        _ => Some(if path.is_empty() {
            ".".into()
        } else {
            path.into()
        }),
    }
}

/// A rendering: the base, an overlay, or every component together.
fn render(variant: &str) -> anyhow::Result<Rendered> {
    let yaml = match variant {
        "base" => kustomize(&kustomize_dir().join("base"))?,
        "all-components" => kustomize_all_components()?,
        overlay => kustomize(&kustomize_dir().join("overlays").join(overlay))?,
    };
    Rendered::parse(&yaml).with_context(|| format!("rendering {variant}"))
}

/// The base with every component, from a kustomization in a temporary
/// folder (kustomize accepts only relative paths to other folders).
fn kustomize_all_components() -> anyhow::Result<String> {
    let dir = tempfile::tempdir()?;
    let here = fs::canonicalize(dir.path())?;
    let target = fs::canonicalize(kustomize_dir())?;
    let up = here
        .components()
        .filter(|c| matches!(c, Component::Normal(_)))
        .map(|_| "..")
        .collect::<Vec<_>>()
        .join("/");
    let rel = format!("{up}{}", target.display());
    let components: String = ALL_COMPONENTS
        .iter()
        .map(|c| format!("  - {rel}/components/{c}\n"))
        .collect();
    let kustomization = format!(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n\
         resources:\n  - {rel}/base\ncomponents:\n{components}"
    );
    fs::write(here.join("kustomization.yaml"), kustomization)?;
    kustomize(&here)
}

/// The base, every overlay, and all components together.
fn variants() -> Vec<&'static str> {
    let mut all = vec!["base", "all-components"];
    all.extend(OVERLAYS);
    all
}

/// A rendering, made once for all the tests of this file.
fn rendered(variant: &str) -> anyhow::Result<&'static Rendered> {
    static ALL: OnceLock<BTreeMap<&'static str, Result<Rendered, String>>> = OnceLock::new();
    let all = ALL.get_or_init(|| {
        let render = |v| render(v).map_err(|e| format!("{e:#}"));
        variants().into_iter().map(|v| (v, render(v))).collect()
    });
    match all.get(variant) {
        Some(Ok(r)) => Ok(r),
        Some(Err(e)) => bail!("{e}"),
        None => bail!("{variant} is not rendered by these tests"),
    }
}

/// Runs `check` on every rendering and reports all the failures at once.
fn for_every_variant(check: impl Fn(&str, &Rendered) -> TestResult) -> TestResult {
    let failures: Vec<String> = variants()
        .into_iter()
        .filter_map(|v| {
            let result = rendered(v).and_then(|r| check(v, r));
            result.err().map(|e| format!("{v}: {e:#}"))
        })
        .collect();
    ensure!(failures.is_empty(), "\n{}", failures.join("\n"));
    Ok(())
}

// ---------------------------------------------------------------------------
// Rendering

#[test]
fn every_overlay_renders_into_known_kubernetes_types() -> TestResult {
    for_every_variant(|_, r| {
        ensure!(r.namespaces.len() == 1, "expected one Namespace");
        ensure!(r.service_accounts.len() == 1, "expected one ServiceAccount");
        ensure!(r.priority_classes.len() == 1, "expected one PriorityClass");
        r.daemon_set()?;
        r.cluster_role()?;
        Ok(())
    })
}

#[test]
fn every_directory_in_overlays_is_rendered_by_these_tests() -> TestResult {
    let mut found: Vec<String> = fs::read_dir(kustomize_dir().join("overlays"))?
        .map(|e| Ok(e?.file_name().to_string_lossy().into_owned()))
        .collect::<anyhow::Result<_>>()?;
    found.sort();
    let mut known: Vec<String> = OVERLAYS.iter().map(|s| s.to_string()).collect();
    known.sort();
    ensure!(
        found == known,
        "overlays on disk {found:?}, tested {known:?}"
    );
    Ok(())
}

#[test]
fn a_missing_kubectl_fails_and_names_its_package() {
    let err = kustomize_with("kubectl-not-installed-here", &kustomize_dir().join("base"))
        .expect_err("a missing kubectl must fail, never skip");
    let msg = err.to_string();
    assert!(msg.contains("Debian package `kubectl`"), "{msg}");
}

#[test]
fn namespaced_objects_are_all_in_the_agents_namespace() -> TestResult {
    for_every_variant(|_, r| {
        let namespaces = r
            .service_accounts
            .iter()
            .map(|o| &o.metadata)
            .chain(r.daemon_sets.iter().map(|o| &o.metadata))
            .chain(r.services.iter().map(|o| &o.metadata))
            .chain(r.config_maps.iter().map(|o| &o.metadata))
            .map(|m| m.namespace.as_deref());
        for ns in namespaces {
            ensure!(ns == Some(NAMESPACE), "an object in namespace {ns:?}");
        }
        let labels = r.namespaces[0].metadata.labels.clone().unwrap_or_default();
        let enforce = labels.get("pod-security.kubernetes.io/enforce");
        ensure!(
            enforce.map(String::as_str) == Some("privileged"),
            "the namespace must allow a privileged hostNetwork pod, has {enforce:?}"
        );
        Ok(())
    })
}

// ---------------------------------------------------------------------------
// RBAC and admission

fn permissions(role: &ClusterRole) -> anyhow::Result<BTreeSet<Permission>> {
    let mut out = BTreeSet::new();
    for rule in role.rules.iter().flatten() {
        ensure!(
            rule.resource_names.is_none() && rule.non_resource_urls.is_none(),
            "unexpected resourceNames or nonResourceURLs"
        );
        for group in rule.api_groups.iter().flatten() {
            for resource in rule.resources.iter().flatten() {
                for verb in &rule.verbs {
                    ensure!(
                        group != "*" && resource != "*" && verb != "*",
                        "wildcard in a rule"
                    );
                    out.insert((group.clone(), resource.clone(), verb.clone()));
                }
            }
        }
    }
    Ok(out)
}

fn expected_permissions(terminate: bool) -> BTreeSet<Permission> {
    let mut out = BTreeSet::new();
    let mut grant = |group: &str, resource: &str, verbs: &[&str]| {
        for verb in verbs {
            out.insert((group.into(), resource.into(), verb.to_string()));
        }
    };
    grant("", "pods", &["get", "list", "watch", "patch"]);
    grant("events.k8s.io", "events", &["create"]);
    if terminate {
        grant("", "pods", &["delete"]);
    }
    out
}

#[test]
fn cluster_role_grants_exactly_pod_reads_and_patches_and_events() -> TestResult {
    for_every_variant(|variant, r| {
        let terminate = matches!(variant, "terminate" | "all-components");
        let got = permissions(r.cluster_role()?)?;
        let want = expected_permissions(terminate);
        ensure!(
            got == want,
            "granted {:?} beyond the expected; missing {:?}",
            got.difference(&want).collect::<Vec<_>>(),
            want.difference(&got).collect::<Vec<_>>()
        );
        Ok(())
    })
}

#[test]
fn the_role_is_bound_to_the_service_account_the_pods_run_as() -> TestResult {
    for_every_variant(|_, r| {
        let [binding] = r.role_bindings.as_slice() else {
            bail!("expected one ClusterRoleBinding");
        };
        ensure!(binding.role_ref.kind == "ClusterRole" && binding.role_ref.name == AGENT);
        let subjects = binding.subjects.as_deref().unwrap_or_default();
        let [subject] = subjects else {
            bail!("expected one subject, found {}", subjects.len());
        };
        ensure!(
            subject.kind == "ServiceAccount"
                && subject.name == AGENT
                && subject.namespace.as_deref() == Some(NAMESPACE),
            "bound to {subject:?}"
        );
        let account = r.pod()?.service_account_name.as_deref();
        ensure!(account == Some(AGENT), "pods run as {account:?}");
        ensure!(r.service_accounts[0].metadata.name.as_deref() == Some(AGENT));
        Ok(())
    })
}

#[test]
fn admission_policies_hold_only_the_agents_writes_to_its_own_node() -> TestResult {
    for_every_variant(|variant, r| {
        let terminate = matches!(variant, "terminate" | "all-components");
        let mut want = vec!["stockade-agent-pod-writes"];
        if terminate {
            want.push("stockade-agent-pod-deletes");
        }
        let names: Vec<&str> = r
            .policies
            .iter()
            .filter_map(|p| p.metadata.name.as_deref())
            .collect();
        ensure!(names == want, "policies {names:?}, expected {want:?}");

        let user = format!("'system:serviceaccount:{NAMESPACE}:{AGENT}'");
        for policy in &r.policies {
            check_policy(policy, &user)?;
            let name = policy.metadata.name.as_deref();
            let bound = r.policy_bindings.iter().any(|b| {
                b.spec.as_ref().is_some_and(|s| {
                    s.policy_name.as_deref() == name
                        && s.validation_actions.as_deref() == Some(&["Deny".to_string()][..])
                })
            });
            ensure!(bound, "policy {name:?} has no Deny binding");
        }
        Ok(())
    })
}

fn check_policy(policy: &ValidatingAdmissionPolicy, user: &str) -> TestResult {
    let name = policy.metadata.name.as_deref().unwrap_or_default();
    let spec = policy.spec.as_ref().context("policy without spec")?;
    ensure!(
        spec.failure_policy.as_deref() == Some("Fail"),
        "{name} must fail closed"
    );
    let conditions = spec.match_conditions.as_deref().unwrap_or_default();
    ensure!(
        conditions.iter().any(|c| c.expression.contains(user)),
        "{name} must match only requests by {user}"
    );
    let validations = spec.validations.as_deref().unwrap_or_default();
    ensure!(
        validations.iter().any(|v| v
            .expression
            .contains("oldObject.spec.nodeName == variables.agentNode")),
        "{name} must compare the pod's node with the agent's"
    );
    Ok(())
}

// ---------------------------------------------------------------------------
// The DaemonSet

#[test]
fn the_agent_runs_on_every_node_in_the_nodes_network_with_high_priority() -> TestResult {
    for_every_variant(|_, r| {
        let pod = r.pod()?;
        ensure!(pod.host_network == Some(true), "hostNetwork must be true");
        ensure!(pod.dns_policy.as_deref() == Some("ClusterFirstWithHostNet"));
        ensure!(pod.host_pid != Some(true), "hostPID is not needed");
        ensure!(pod.host_ipc != Some(true), "hostIPC is not needed");
        let tolerates_all = pod.tolerations.iter().flatten().any(|t| {
            t.operator.as_deref() == Some("Exists") && t.key.is_none() && t.effect.is_none()
        });
        ensure!(tolerates_all, "needs a toleration {{operator: Exists}}");

        let class = pod
            .priority_class_name
            .as_deref()
            .context("no priority class")?;
        ensure!(
            !class.starts_with("system-"),
            "{class} is reserved to kube-system"
        );
        let pc = &r.priority_classes[0];
        ensure!(
            pc.metadata.name.as_deref() == Some(class),
            "{class} is not rendered"
        );
        ensure!(
            pc.value == MAX_USER_PRIORITY,
            "priority {} is not the highest",
            pc.value
        );
        ensure!(
            pc.global_default != Some(true),
            "must not be the default class"
        );
        Ok(())
    })
}

#[test]
fn a_rolling_update_never_runs_two_agents_on_one_node() -> TestResult {
    for_every_variant(|_, r| {
        let strategy = r
            .daemon_set()?
            .spec
            .as_ref()
            .and_then(|s| s.update_strategy.as_ref());
        let strategy = strategy.context("no update strategy")?;
        ensure!(strategy.type_.as_deref() == Some("RollingUpdate"));
        let rolling = strategy
            .rolling_update
            .as_ref()
            .context("no rollingUpdate")?;
        ensure!(rolling.max_unavailable == Some(IntOrString::Int(1)));
        ensure!(
            rolling.max_surge == Some(IntOrString::Int(0)),
            "maxSurge must be 0"
        );
        Ok(())
    })
}

#[test]
fn the_selector_matches_the_pod_template() -> TestResult {
    for_every_variant(|_, r| {
        let spec = r.daemon_set()?.spec.as_ref().context("no spec")?;
        let labels = spec
            .template
            .metadata
            .as_ref()
            .and_then(|m| m.labels.clone());
        let labels = labels.unwrap_or_default();
        let selector = spec.selector.match_labels.clone().unwrap_or_default();
        ensure!(!selector.is_empty(), "empty selector");
        ensure!(
            is_subset(&selector, &labels),
            "selector {selector:?} vs labels {labels:?}"
        );
        Ok(())
    })
}

fn is_subset(part: &BTreeMap<String, String>, whole: &BTreeMap<String, String>) -> bool {
    part.iter().all(|(k, v)| whole.get(k) == Some(v))
}

/// (mount path, host path, mount propagation, read-only) of one host mount.
type HostMount = (String, String, Option<String>, bool);

fn host_mounts(r: &Rendered) -> anyhow::Result<BTreeSet<HostMount>> {
    let volumes: BTreeMap<&str, &Volume> = r
        .pod()?
        .volumes
        .iter()
        .flatten()
        .map(|v| (v.name.as_str(), v))
        .collect();
    let mut out = BTreeSet::new();
    for mount in r.agent()?.volume_mounts.iter().flatten() {
        let volume = volumes
            .get(mount.name.as_str())
            .context(mount.name.clone())?;
        let Some(host) = &volume.host_path else {
            continue;
        };
        ensure!(host.type_.is_some(), "hostPath {} has no type", host.path);
        out.insert((
            mount.mount_path.clone(),
            host.path.clone(),
            mount.mount_propagation.clone(),
            mount.read_only == Some(true),
        ));
    }
    Ok(out)
}

#[test]
fn the_agent_mounts_exactly_the_host_paths_it_needs() -> TestResult {
    for_every_variant(|variant, r| {
        let runtime = if variant == "all-components" {
            "/run/crio"
        } else {
            "/run/containerd"
        };
        let mount = |path: &str, propagation: Option<&str>, read_only: bool| {
            (
                path.into(),
                path.into(),
                propagation.map(str::to_owned),
                read_only,
            )
        };
        let want: BTreeSet<HostMount> = [
            mount("/sys/fs/cgroup", None, false),
            mount("/sys/fs/bpf", Some("Bidirectional"), false),
            mount(runtime, None, true),
            mount("/var/lib/stockade", None, false),
            mount("/run/stockade", None, false),
        ]
        .into();
        let got = host_mounts(r)?;
        ensure!(got == want, "host mounts {got:#?}\nexpected {want:#?}");
        Ok(())
    })
}

#[test]
fn every_mount_has_one_volume_and_every_volume_is_mounted() -> TestResult {
    for_every_variant(|_, r| {
        let volumes: Vec<&str> = r
            .pod()?
            .volumes
            .iter()
            .flatten()
            .map(|v| &*v.name)
            .collect();
        let mounts = r.agent()?.volume_mounts.clone().unwrap_or_default();
        let names: BTreeSet<&str> = volumes.iter().copied().collect();
        ensure!(
            names.len() == volumes.len(),
            "duplicate volume names {volumes:?}"
        );
        let paths: BTreeSet<&str> = mounts.iter().map(|m| &*m.mount_path).collect();
        ensure!(paths.len() == mounts.len(), "two mounts at one path");
        let mounted: BTreeSet<&str> = mounts.iter().map(|m| &*m.name).collect();
        ensure!(mounted == names, "volumes {names:?}, mounted {mounted:?}");
        Ok(())
    })
}

#[test]
fn node_name_and_namespace_come_from_the_downward_api() -> TestResult {
    for_every_variant(|_, r| {
        let env = r.agent()?.env.clone().unwrap_or_default();
        let field = |name: &str| {
            env.iter()
                .find(|e| e.name == name)
                .and_then(|e| e.value_from.as_ref())
                .and_then(|v| v.field_ref.as_ref())
                .map(|f| f.field_path.clone())
        };
        ensure!(field("NODE_NAME").as_deref() == Some("spec.nodeName"));
        ensure!(field("POD_NAMESPACE").as_deref() == Some("metadata.namespace"));
        ensure!(field("POD_UID").as_deref() == Some("metadata.uid"));
        let names: BTreeSet<&str> = env.iter().map(|e| &*e.name).collect();
        ensure!(
            names.len() == env.len(),
            "an environment variable is set twice"
        );
        Ok(())
    })
}

/// The capabilities the agent's command keeps, from its setpriv options.
fn kept_capabilities(agent: &Container) -> anyhow::Result<BTreeSet<String>> {
    let command = agent.command.clone().unwrap_or_default();
    ensure!(
        command.first().map(String::as_str) == Some("/usr/bin/setpriv"),
        "the command must start with setpriv, is {command:?}"
    );
    for option in ["--no-new-privs", "--inh-caps=-all"] {
        ensure!(
            command.iter().any(|a| a == option),
            "setpriv without {option}"
        );
    }
    let bounding = command
        .iter()
        .find_map(|a| a.strip_prefix("--bounding-set="))
        .context("setpriv without --bounding-set")?;
    let mut parts = bounding.split(',');
    ensure!(
        parts.next() == Some("-all"),
        "the bounding set must start from -all"
    );
    parts
        .map(|p| {
            p.strip_prefix('+')
                .map(str::to_owned)
                .context("a capability not added")
        })
        .collect()
}

/// The program setpriv starts.
fn agent_program(agent: &Container) -> anyhow::Result<String> {
    let command = agent.command.clone().unwrap_or_default();
    let after = command.iter().skip_while(|a| *a != "--").nth(1);
    after.cloned().context("setpriv without `-- PROGRAM`")
}

#[test]
fn the_agent_keeps_exactly_the_chosen_capabilities() -> TestResult {
    for_every_variant(|_, r| {
        let agent = r.agent()?;
        let want: BTreeSet<String> = CAPABILITIES.iter().map(|c| c.to_string()).collect();
        let kept = kept_capabilities(agent)?;
        ensure!(kept == want, "the agent keeps {kept:?}, expected {want:?}");

        let context = agent.security_context.clone().unwrap_or_default();
        if let Some(caps) = &context.capabilities {
            let upper: BTreeSet<String> = want.iter().map(|c| c.to_uppercase()).collect();
            let add: BTreeSet<String> = caps.add.iter().flatten().cloned().collect();
            ensure!(
                add == upper,
                "securityContext adds {add:?}, expected {upper:?}"
            );
            ensure!(
                caps.drop.as_deref() == Some(&["ALL".to_string()][..]),
                "drop ALL"
            );
        }
        ensure!(
            context.run_as_user == Some(0),
            "runs as root (see daemonset.yaml)"
        );
        ensure!(context.read_only_root_filesystem == Some(true));
        Ok(())
    })
}

#[test]
fn a_privileged_agent_is_only_what_the_api_server_requires() -> TestResult {
    for_every_variant(|_, r| {
        let agent = r.agent()?;
        let context = agent.security_context.clone().unwrap_or_default();
        let bidirectional = agent
            .volume_mounts
            .iter()
            .flatten()
            .any(|m| m.mount_propagation.as_deref() == Some("Bidirectional"));
        if context.privileged == Some(true) {
            // The API server refuses privileged with this set to false.
            ensure!(context.allow_privilege_escalation != Some(false));
            ensure!(!kept_capabilities(agent)?.is_empty());
        } else {
            ensure!(
                !bidirectional,
                "Bidirectional propagation needs a privileged container"
            );
        }
        Ok(())
    })
}

#[test]
fn privileged_is_explained_where_it_is_set() -> TestResult {
    let text = fs::read_to_string(kustomize_dir().join("base/daemonset.yaml"))?;
    let lines: Vec<&str> = text.lines().collect();
    let at = lines
        .iter()
        .position(|l| l.trim() == "privileged: true")
        .context("base/daemonset.yaml no longer sets privileged: true; update this test")?;
    let comment: String = lines[..at]
        .iter()
        .rev()
        .take_while(|l| l.trim_start().starts_with('#'))
        .map(|l| l.trim_start_matches([' ', '#']))
        .collect::<Vec<_>>()
        .join(" ");
    for reason in ["cgroup namespace", "Bidirectional"] {
        ensure!(
            comment.contains(reason),
            "the comment above privileged must name {reason:?}"
        );
    }
    Ok(())
}

#[test]
fn probes_ask_grpc_health_on_the_declared_health_port() -> TestResult {
    for_every_variant(|_, r| {
        let agent = r.agent()?;
        let probes = [
            ("startup", &agent.startup_probe),
            ("readiness", &agent.readiness_probe),
            ("liveness", &agent.liveness_probe),
        ];
        for (name, probe) in probes {
            let port = probe.as_ref().and_then(|p| p.grpc.as_ref()).map(|g| g.port);
            ensure!(
                port == Some(HEALTH_PORT),
                "{name} probe: gRPC port {port:?}"
            );
        }
        ensure!(declared_port(agent, "health") == Some(HEALTH_PORT));
        ensure!(declared_port(agent, "metrics") == Some(METRICS_PORT));
        for port in agent.ports.iter().flatten() {
            let host = port.host_port.unwrap_or(port.container_port);
            ensure!(
                host == port.container_port,
                "hostNetwork needs hostPort == containerPort"
            );
        }
        Ok(())
    })
}

#[test]
fn the_agent_listens_on_the_ports_the_pod_declares() -> TestResult {
    for_every_variant(|_, r| {
        let agent = r.agent()?;
        for (flag_name, port_name) in [
            ("--health-listen", "health"),
            ("--metrics-listen", "metrics"),
        ] {
            let value = flag(r, flag_name)?.with_context(|| format!("no {flag_name}"))?;
            let addr: std::net::SocketAddr = value
                .parse()
                .with_context(|| format!("{flag_name}={value}"))?;
            let declared = declared_port(agent, port_name);
            ensure!(
                declared == Some(i32::from(addr.port())),
                "{flag_name}={value}, but the {port_name} port is {declared:?}"
            );
        }
        Ok(())
    })
}

fn declared_port(agent: &Container, name: &str) -> Option<i32> {
    let mut ports = agent.ports.iter().flatten();
    ports
        .find(|p| p.name.as_deref() == Some(name))
        .map(|p| p.container_port)
}

#[test]
fn resources_are_requested_and_memory_is_limited() -> TestResult {
    for_every_variant(|_, r| {
        let resources = r.agent()?.resources.clone().unwrap_or_default();
        let requests = resources.requests.unwrap_or_default();
        let limits = resources.limits.unwrap_or_default();
        for name in ["cpu", "memory"] {
            ensure!(requests.contains_key(name), "no {name} request");
        }
        let request = mebibytes(&requests["memory"].0)?;
        let limit = mebibytes(&limits.get("memory").context("no memory limit")?.0)?;
        ensure!(
            request <= limit,
            "memory request {request} MiB above its limit {limit} MiB"
        );
        Ok(())
    })
}

fn mebibytes(quantity: &str) -> anyhow::Result<u64> {
    let (digits, factor) = match quantity.strip_suffix("Gi") {
        Some(d) => (d, 1024),
        None => (quantity.strip_suffix("Mi").context(quantity.to_owned())?, 1),
    };
    Ok(digits.parse::<u64>()? * factor)
}

#[test]
fn the_image_is_pinned_and_runs_the_binary_the_dockerfile_installs() -> TestResult {
    let entrypoint = dockerfile_entrypoint(&dockerfile()?)?;
    for_every_variant(|_, r| {
        let agent = r.agent()?;
        let image = agent.image.as_deref().context("no image")?;
        let tag = image
            .rsplit('/')
            .next()
            .and_then(|last| last.split_once(':'));
        ensure!(
            tag.is_some_and(|(_, t)| !t.is_empty() && t != "latest"),
            "image {image} has no pinned tag"
        );
        let program = agent_program(agent)?;
        ensure!(
            program == entrypoint,
            "runs {program}, the image installs {entrypoint}"
        );
        Ok(())
    })
}

#[test]
fn every_path_flag_points_into_a_mounted_volume() -> TestResult {
    for_every_variant(|_, r| {
        let agent = r.agent()?;
        let mounts: Vec<&str> = agent
            .volume_mounts
            .iter()
            .flatten()
            .map(|m| &*m.mount_path)
            .collect();
        for arg in agent.args.iter().flatten() {
            let Some((flag, value)) = arg.split_once('=') else {
                continue;
            };
            if !value.starts_with('/') {
                continue;
            }
            let inside = mounts.iter().any(|m| Path::new(value).starts_with(m));
            ensure!(inside, "{flag}={value} is outside every mount {mounts:?}");
        }
        Ok(())
    })
}

#[test]
fn metrics_service_selects_the_agents_and_is_annotated_for_prometheus() -> TestResult {
    for_every_variant(|_, r| {
        let service = r
            .services
            .iter()
            .find(|s| s.metadata.name.as_deref() == Some("stockade-agent-metrics"))
            .context("no metrics Service")?;
        let annotations = service.metadata.annotations.clone().unwrap_or_default();
        let want = [
            ("prometheus.io/scrape", "true"),
            ("prometheus.io/port", "9090"),
            ("prometheus.io/path", "/metrics"),
        ];
        for (key, value) in want {
            ensure!(
                annotations.get(key).map(String::as_str) == Some(value),
                "{key}"
            );
        }
        for s in &r.services {
            check_service_reaches_the_agent(s, r)?;
        }
        Ok(())
    })
}

fn check_service_reaches_the_agent(service: &Service, r: &Rendered) -> TestResult {
    let name = service.metadata.name.as_deref().unwrap_or_default();
    let spec = service.spec.as_ref().context("Service without spec")?;
    let labels = r
        .daemon_set()?
        .spec
        .as_ref()
        .and_then(|s| s.template.metadata.clone());
    let labels = labels.and_then(|m| m.labels).unwrap_or_default();
    let selector = spec.selector.clone().unwrap_or_default();
    ensure!(
        !selector.is_empty() && is_subset(&selector, &labels),
        "{name} selects no agent"
    );
    for port in spec.ports.iter().flatten() {
        let Some(IntOrString::String(target)) = &port.target_port else {
            bail!("{name}: target the agent's port by name");
        };
        ensure!(
            declared_port(r.agent()?, target) == Some(port.port),
            "{name}: port {target}"
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// The overlays

fn args(r: &Rendered) -> anyhow::Result<Vec<String>> {
    Ok(r.agent()?.args.clone().unwrap_or_default())
}

fn flag(r: &Rendered, name: &str) -> anyhow::Result<Option<String>> {
    let prefix = format!("{name}=");
    let args = args(r)?;
    let mut found = args.iter().filter(|a| a.starts_with(&prefix) || *a == name);
    let first = found
        .next()
        .map(|a| a.strip_prefix(&prefix).unwrap_or_default().to_owned());
    ensure!(found.next().is_none(), "{name} is given twice");
    Ok(first)
}

/// The renderings that use mutual TLS.
const WITH_TLS: &[&str] = &["tls", "identities", "all-components"];

/// The renderings that use the guards component.
const WITH_GUARDS: &[&str] = &["guards", "all-components"];

/// Flags that only the named renderings may pass.
const OVERLAY_FLAGS: &[(&str, &[&str])] = &[
    ("--listen", WITH_TLS),
    ("--tls-cert", WITH_TLS),
    ("--tls-key", WITH_TLS),
    ("--client-ca", WITH_TLS),
    ("--access-config", WITH_TLS),
    ("--protected-namespaces", WITH_GUARDS),
    ("--max-orders-per-minute", WITH_GUARDS),
    ("--max-contained-percent", WITH_GUARDS),
];

#[test]
fn each_feature_flag_appears_only_where_its_component_is_used() -> TestResult {
    for_every_variant(|variant, r| {
        for (name, wanted_in) in OVERLAY_FLAGS {
            let present = flag(r, name)?.is_some();
            let wanted = wanted_in.contains(&variant);
            ensure!(
                present == wanted,
                "{name}: present {present}, expected {wanted}"
            );
        }
        Ok(())
    })
}

#[test]
fn tls_mounts_the_secret_and_listens_with_mutual_tls() -> TestResult {
    for variant in WITH_TLS {
        let r = rendered(variant)?;
        let volume = r.pod()?.volumes.iter().flatten().find(|v| v.name == "tls");
        let secret = volume
            .and_then(|v| v.secret.as_ref())
            .context("no tls Secret volume")?;
        ensure!(secret.secret_name.as_deref() == Some("stockade-agent-tls"));
        ensure!(
            secret.optional != Some(true),
            "the agent must not start without its keys"
        );
        let keys: BTreeSet<&str> = secret.items.iter().flatten().map(|i| &*i.key).collect();
        ensure!(
            keys == BTreeSet::from(["ca.crt", "tls.crt", "tls.key"]),
            "keys {keys:?}"
        );

        let dir = mount_path(r, "tls")?;
        for (name, file) in [
            ("--tls-cert", "tls.crt"),
            ("--tls-key", "tls.key"),
            ("--client-ca", "ca.crt"),
        ] {
            let want = format!("{dir}/{file}");
            ensure!(
                flag(r, name)?.as_deref() == Some(&*want),
                "{variant}: {name}"
            );
        }
        let listen = flag(r, "--listen")?;
        ensure!(
            listen.as_deref() == Some("0.0.0.0:7443"),
            "{variant}: --listen"
        );
        ensure!(
            declared_port(r.agent()?, "grpc-tls") == Some(TLS_PORT),
            "{variant}: port"
        );
    }
    Ok(())
}

fn mount_path(r: &Rendered, volume: &str) -> anyhow::Result<String> {
    let mut mounts = r.agent()?.volume_mounts.iter().flatten();
    let mount = mounts
        .find(|m| m.name == volume)
        .context(format!("{volume} not mounted"))?;
    ensure!(
        mount.read_only == Some(true),
        "{volume} must be mounted read-only"
    );
    Ok(mount.mount_path.clone())
}

#[test]
fn tls_brings_an_access_config_that_identities_fill() -> TestResult {
    for variant in WITH_TLS {
        let identities = access_identities(rendered(variant)?)?;
        let filled = *variant != "tls";
        ensure!(
            identities.is_empty() != filled,
            "{variant}: {} identities",
            identities.len()
        );
        for (identity, role) in &identities {
            let known = ["reader", "isolator", "responder"].contains(&role.as_str());
            ensure!(known, "{variant}: {identity} has an unknown role {role}");
        }
    }
    Ok(())
}

/// The identities of the access file that `--access-config` names, read
/// from the ConfigMap mounted there.
fn access_identities(r: &Rendered) -> anyhow::Result<BTreeMap<String, String>> {
    let volume = r
        .pod()?
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == "access");
    let source = volume
        .and_then(|v| v.config_map.as_ref())
        .context("no access volume")?;
    let map = r
        .config_maps
        .iter()
        .find(|m| m.metadata.name == source.name.clone().into())
        .context("the access ConfigMap is not rendered")?;
    let path = flag(r, "--access-config")?.context("no --access-config")?;
    let dir = mount_path(r, "access")?;
    let key = path
        .strip_prefix(&format!("{dir}/"))
        .context("--access-config is not in the access volume")?;
    let data = map.data.clone().unwrap_or_default();
    let text = data
        .get(key)
        .with_context(|| format!("no {key} in the ConfigMap"))?;

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Access {
        identities: BTreeMap<String, String>,
    }
    let access: Access = toml::from_str(text).with_context(|| key.to_owned())?;
    Ok(access.identities)
}

#[test]
fn guards_protect_the_clusters_namespaces_and_tighten_the_limits() -> TestResult {
    for variant in WITH_GUARDS {
        let r = rendered(variant)?;
        let list = flag(r, "--protected-namespaces")?.context("no --protected-namespaces")?;
        let protected: BTreeSet<&str> = list.split(',').collect();
        ensure!(protected.contains("kube-system"), "{variant}: kube-system");
        let number = |name| -> anyhow::Result<u32> {
            let value = flag(r, name)?.with_context(|| format!("no {name}"))?;
            value.parse().with_context(|| format!("{name}={value}"))
        };
        let rate = number("--max-orders-per-minute")?;
        ensure!(rate > 0, "{variant}: a rate of 0 turns the limit off");
        let share = number("--max-contained-percent")?;
        ensure!(
            (1..100).contains(&share),
            "{variant}: 100% turns the limit off"
        );
    }
    Ok(())
}

#[test]
fn every_flag_the_manifests_pass_is_one_the_agent_accepts() -> TestResult {
    let agent = built_binary("stockade-agent")?;
    let help = Command::new(&agent).arg("--help").output()?;
    ensure!(help.status.success(), "{} --help failed", agent.display());
    let help = String::from_utf8_lossy(&help.stdout);
    let accepted: BTreeSet<&str> = help
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
        .filter(|w| w.starts_with("--"))
        .collect();
    for_every_variant(|_, r| {
        let args = args(r)?;
        let unknown: Vec<&str> = args
            .iter()
            .map(|a| a.split('=').next().unwrap_or_default())
            .filter(|name| !accepted.contains(name))
            .collect();
        ensure!(
            unknown.is_empty(),
            "{} does not accept {unknown:?}: it would exit at start",
            agent.display()
        );
        Ok(())
    })
}

// ---------------------------------------------------------------------------
// The image

fn dockerfile() -> anyhow::Result<Vec<Instruction>> {
    let text = fs::read_to_string(image_dir().join("Dockerfile"))?;
    Ok(instructions(&text))
}

/// One Dockerfile instruction, continuation lines joined.
#[derive(Debug)]
struct Instruction {
    keyword: String,
    args: String,
}

fn instructions(text: &str) -> Vec<Instruction> {
    let mut out = Vec::new();
    let mut pending = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && pending.is_empty()) {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(head) => pending.push_str(head),
            None => {
                pending.push_str(trimmed);
                let (keyword, args) = pending.split_once(' ').unwrap_or((&pending, ""));
                out.push(Instruction {
                    keyword: keyword.to_uppercase(),
                    args: args.trim().to_owned(),
                });
                pending.clear();
            }
        }
    }
    out
}

/// (image, stage name) of every FROM.
fn stages(dockerfile: &[Instruction]) -> Vec<(String, Option<String>)> {
    dockerfile
        .iter()
        .filter(|i| i.keyword == "FROM")
        .map(|i| {
            let words: Vec<&str> = i
                .args
                .split_whitespace()
                .filter(|w| !w.starts_with("--"))
                .collect();
            let name = match words.as_slice() {
                [_, as_, name] if as_.eq_ignore_ascii_case("as") => Some(name.to_string()),
                _ => None,
            };
            (words.first().copied().unwrap_or_default().to_owned(), name)
        })
        .collect()
}

fn dockerfile_entrypoint(dockerfile: &[Instruction]) -> anyhow::Result<String> {
    let entry = dockerfile
        .iter()
        .rfind(|i| i.keyword == "ENTRYPOINT")
        .context("no ENTRYPOINT")?;
    let exec: Vec<String> =
        serde_json::from_str(&entry.args).context("ENTRYPOINT not in exec form")?;
    exec.first().cloned().context("empty ENTRYPOINT")
}

#[test]
fn the_dockerfile_builds_in_stages_from_pinned_bases_and_installs_both_binaries() -> TestResult {
    let dockerfile = dockerfile()?;
    let stages = stages(&dockerfile);
    ensure!(
        stages.len() >= 2,
        "expected a builder and a runtime stage, found {stages:?}"
    );
    for (image, _) in &stages {
        ensure!(
            !image.contains('$'),
            "{image}: name the base image literally"
        );
        let (_, tag) = image
            .rsplit_once(':')
            .with_context(|| format!("{image} has no tag"))?;
        ensure!(tag != "latest" && !tag.is_empty(), "{image} is not pinned");
    }
    let builders: Vec<&str> = stages[..stages.len() - 1]
        .iter()
        .filter_map(|(_, n)| n.as_deref())
        .collect();
    for binary in ["stockade-agent", "stockade"] {
        let copied = dockerfile.iter().any(|i| {
            i.keyword == "COPY"
                && builders
                    .iter()
                    .any(|b| i.args.starts_with(&format!("--from={b} ")))
                && i.args
                    .split_whitespace()
                    .any(|w| w.ends_with(&format!("/{binary}")))
        });
        ensure!(copied, "no COPY --from=<builder> of {binary}");
    }
    for add in dockerfile.iter().filter(|i| i.keyword == "ADD") {
        ensure!(!add.args.contains("://"), "ADD from a URL: {}", add.args);
    }
    ensure!(dockerfile_entrypoint(&dockerfile)? == "/usr/local/bin/stockade-agent");
    Ok(())
}

/// glibc of the Debian releases an image may be based on.
const DEBIAN_GLIBC: &[(&str, &str, (u32, u32))] = &[
    ("bullseye", "11", (2, 31)),
    ("bookworm", "12", (2, 36)),
    ("trixie", "13", (2, 41)),
];

/// The glibc of a Debian-based image, from its tag's codename or version.
fn image_glibc(image: &str) -> anyhow::Result<(u32, u32)> {
    let (name, tag) = image.rsplit_once(':').context("no tag")?;
    let words: Vec<&str> = tag.split(['-', '.']).collect();
    let debian_major = name.ends_with("debian").then(|| words[0]);
    DEBIAN_GLIBC
        .iter()
        .find(|(codename, major, _)| words.contains(codename) || debian_major == Some(*major))
        .map(|(_, _, glibc)| *glibc)
        .with_context(|| format!("{image}: not a Debian release this test knows"))
}

#[test]
fn builder_and_runtime_images_share_one_glibc() -> TestResult {
    let stages = stages(&dockerfile()?);
    let runtime = image_glibc(&stages.last().context("no FROM")?.0)?;
    for (image, _) in &stages[..stages.len() - 1] {
        ensure!(
            image_glibc(image)? <= runtime,
            "{image} links a newer glibc than the runtime"
        );
    }
    Ok(())
}

/// The newest `GLIBC_x.y` symbol version the ELF file at `path` needs.
fn glibc_needed(path: &Path) -> anyhow::Result<Option<(u32, u32)>> {
    use object::{read::elf::ElfFile64, Endianness};

    let data = fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let elf = ElfFile64::<Endianness>::parse(&*data)?;
    let endian = elf.endian();
    let sections = elf.elf_section_table();
    let Some((mut needs, link)) = sections.gnu_verneed(endian, &*data)? else {
        return Ok(None);
    };
    let strings = sections.strings(endian, &*data, link)?;
    let mut newest = None;
    while let Some((_, mut aux)) = needs.next()? {
        while let Some(version) = aux.next()? {
            let name = String::from_utf8_lossy(version.name(endian, strings)?).into_owned();
            newest = newest.max(glibc_version(&name));
        }
    }
    Ok(newest)
}

/// `GLIBC_2.34` as (2, 34). DT_RELR relocations need glibc 2.36.
fn glibc_version(name: &str) -> Option<(u32, u32)> {
    if name == "GLIBC_ABI_DT_RELR" {
        return Some((2, 36));
    }
    let (major, minor) = name.strip_prefix("GLIBC_")?.split_once('.')?;
    let minor = minor.split('.').next()?;
    Some((major.parse().ok()?, minor.parse().ok()?))
}

#[test]
fn glibc_versions_are_read_from_symbol_names() {
    assert_eq!(glibc_version("GLIBC_2.34"), Some((2, 34)));
    assert_eq!(glibc_version("GLIBC_2.2.5"), Some((2, 2)));
    assert_eq!(glibc_version("GLIBC_ABI_DT_RELR"), Some((2, 36)));
    assert_eq!(glibc_version("GLIBC_PRIVATE"), None);
    assert!(glibc_version("GLIBC_2.36") > glibc_version("GLIBC_2.9"));
}

/// The folder cargo puts this profile's binaries in (this test runs from
/// its `deps` folder).
fn profile_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let deps = exe.parent().context("test binary without a folder")?;
    Ok(deps.parent().context("deps without a parent")?.to_owned())
}

/// A binary of the agent's package, as this profile built it.
fn built_binary(name: &str) -> anyhow::Result<PathBuf> {
    let path = profile_dir()?.join(name);
    ensure!(
        path.is_file(),
        "{} is missing: build it first (cargo build -p stockade-agent)",
        path.display()
    );
    Ok(path)
}

#[test]
fn the_agent_binary_runs_on_the_runtime_images_glibc() -> TestResult {
    let stages = stages(&dockerfile()?);
    let image = &stages.last().context("no FROM")?.0;
    let runtime = image_glibc(image)?;
    let profile = profile_dir()?;
    let release = profile.with_file_name("release");
    for binary in ["stockade-agent", "stockade"] {
        let debug = built_binary(binary)?;
        let built = [debug, release.join(binary)];
        for path in built.iter().filter(|p| p.is_file()) {
            let Some(needed) = glibc_needed(path)? else {
                continue;
            };
            ensure!(
                needed <= runtime,
                "{} needs GLIBC_{}.{}, but {image} has glibc {}.{}: build it on an \
                 older distribution or base the image on a newer one",
                path.display(),
                needed.0,
                needed.1,
                runtime.0,
                runtime.1
            );
        }
    }
    Ok(())
}
