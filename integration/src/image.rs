//! Container images built offline from the host's static busybox.
//!
//! The tests never pull: they write an OCI image layout tar holding one
//! uncompressed layer (`/bin/busybox` and a symlink per applet) and import
//! it into their containerd with `ctr images import`.

use std::{
    io::Write,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};
use serde_json::json;
use sha2::{Digest, Sha256};

/// Where `busybox-static` installs its binary.
pub const BUSYBOX: &str = "/bin/busybox";
/// Image the test containers run.
pub const TEST_IMAGE: &str = "stockade.test/busybox:1";
/// containerd 1.6's default CRI sandbox ("pause") image.
pub const PAUSE_IMAGE: &str = "registry.k8s.io/pause:3.6";

/// One image of the archive: its full reference and default command.
#[derive(Debug, Clone)]
pub struct ImageDef {
    pub reference: String,
    pub cmd: Vec<String>,
}

/// The two images every runtime test needs: busybox with a shell as
/// default command, and the sandbox image whose PID 1 sleeps for ever.
pub fn default_images() -> Vec<ImageDef> {
    vec![
        ImageDef {
            reference: TEST_IMAGE.into(),
            cmd: vec!["/bin/sh".into()],
        },
        ImageDef {
            reference: PAUSE_IMAGE.into(),
            cmd: vec!["/bin/sleep".into(), "2147483647".into()],
        },
    ]
}

fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn digest(data: &[u8]) -> String {
    format!("sha256:{}", sha256_hex(data))
}

/// The OCI name of this machine's architecture.
fn oci_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// The applets `busybox --list` names, except ones that would shadow
/// nothing useful (`busybox` itself).
fn applets(busybox: &Path) -> Result<Vec<String>> {
    let out = Command::new(busybox)
        .arg("--list")
        .output()
        .with_context(|| {
            format!(
                "running {} --list (apt package busybox-static)",
                busybox.display()
            )
        })?;
    if !out.status.success() {
        bail!("{} --list failed: {}", busybox.display(), out.status);
    }
    let list = String::from_utf8(out.stdout).context("busybox --list is not UTF-8")?;
    Ok(list
        .lines()
        .map(str::trim)
        .filter(|a| !a.is_empty() && *a != "busybox" && !a.contains('/'))
        .map(str::to_owned)
        .collect())
}

fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h
}

/// The layer: the root directories a container needs, `/bin/busybox` and a
/// symlink in `/bin` for each applet.
fn build_layer(busybox: &Path) -> Result<Vec<u8>> {
    let binary = std::fs::read(busybox)
        .with_context(|| format!("reading {} (apt package busybox-static)", busybox.display()))?;
    let mut layer = tar::Builder::new(Vec::new());
    for dir in ["bin", "dev", "etc", "proc", "root", "sys", "tmp", "var"] {
        let mode = if dir == "tmp" { 0o1777 } else { 0o755 };
        let mut h = header(tar::EntryType::Directory, mode, 0);
        layer.append_data(&mut h, format!("{dir}/"), std::io::empty())?;
    }
    let mut h = header(tar::EntryType::Regular, 0o755, binary.len() as u64);
    layer.append_data(&mut h, "bin/busybox", binary.as_slice())?;
    for applet in applets(busybox)? {
        let mut h = header(tar::EntryType::Symlink, 0o777, 0);
        layer.append_link(&mut h, format!("bin/{applet}"), "busybox")?;
    }
    let passwd = b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n";
    let mut h = header(tar::EntryType::Regular, 0o644, passwd.len() as u64);
    layer.append_data(&mut h, "etc/passwd", &passwd[..])?;
    let group = b"root:x:0:\nnogroup:x:65534:\n";
    let mut h = header(tar::EntryType::Regular, 0o644, group.len() as u64);
    layer.append_data(&mut h, "etc/group", &group[..])?;
    Ok(layer.into_inner()?)
}

/// Writes an OCI image layout tar holding `images` (all sharing the one
/// busybox layer) to `out`.
pub fn write_oci_archive(out: &Path, busybox: &Path, images: &[ImageDef]) -> Result<()> {
    let layer = build_layer(busybox)?;
    let layer_digest = digest(&layer);
    let mut blobs: Vec<(String, Vec<u8>)> = vec![(layer_digest.clone(), layer.clone())];
    let mut manifests = Vec::new();
    for image in images {
        let config = serde_json::to_vec(&json!({
            "architecture": oci_arch(),
            "os": "linux",
            "config": {
                "Env": ["PATH=/bin"],
                "Cmd": image.cmd,
                "WorkingDir": "/",
            },
            "rootfs": { "type": "layers", "diff_ids": [layer_digest] },
        }))?;
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": digest(&config),
                "size": config.len(),
            },
            "layers": [{
                "mediaType": "application/vnd.oci.image.layer.v1.tar",
                "digest": layer_digest,
                "size": layer.len(),
            }],
        }))?;
        let tag = image
            .reference
            .rsplit_once(':')
            .map(|(_, t)| t)
            .unwrap_or("latest");
        manifests.push(json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": digest(&manifest),
            "size": manifest.len(),
            "platform": { "architecture": oci_arch(), "os": "linux" },
            "annotations": {
                "io.containerd.image.name": image.reference,
                "org.opencontainers.image.ref.name": tag,
            },
        }));
        blobs.push((digest(&config), config));
        blobs.push((digest(&manifest), manifest));
    }
    let index = serde_json::to_vec(&json!({ "schemaVersion": 2, "manifests": manifests }))?;
    let layout = br#"{"imageLayoutVersion":"1.0.0"}"#;

    let file = std::fs::File::create(out).with_context(|| format!("creating {}", out.display()))?;
    let mut archive = tar::Builder::new(std::io::BufWriter::new(file));
    let mut h = header(tar::EntryType::Regular, 0o644, layout.len() as u64);
    archive.append_data(&mut h, "oci-layout", &layout[..])?;
    let mut h = header(tar::EntryType::Regular, 0o644, index.len() as u64);
    archive.append_data(&mut h, "index.json", index.as_slice())?;
    for dir in ["blobs/", "blobs/sha256/"] {
        let mut h = header(tar::EntryType::Directory, 0o755, 0);
        archive.append_data(&mut h, dir, std::io::empty())?;
    }
    let mut written = std::collections::BTreeSet::new();
    for (d, data) in &blobs {
        if !written.insert(d.clone()) {
            continue;
        }
        let hex = d.trim_start_matches("sha256:");
        let mut h = header(tar::EntryType::Regular, 0o644, data.len() as u64);
        archive.append_data(&mut h, format!("blobs/sha256/{hex}"), data.as_slice())?;
    }
    archive.into_inner()?.flush()?;
    Ok(())
}

/// Builds the default images into `dir/images.tar` and returns its path.
pub fn build_default_archive(dir: &Path) -> Result<PathBuf> {
    let out = dir.join("images.tar");
    write_oci_archive(&out, Path::new(BUSYBOX), &default_images())?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archive_has_layout_index_and_blobs() {
        if !Path::new(BUSYBOX).exists() {
            panic!("{BUSYBOX} is missing: install the apt package busybox-static");
        }
        let dir = tempfile::tempdir().unwrap();
        let out = build_default_archive(dir.path()).unwrap();
        let mut archive = tar::Archive::new(std::fs::File::open(&out).unwrap());
        let mut names = Vec::new();
        let mut index = None;
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let name = entry.path().unwrap().to_string_lossy().into_owned();
            if name == "index.json" {
                let mut s = String::new();
                std::io::Read::read_to_string(&mut entry, &mut s).unwrap();
                index = Some(serde_json::from_str::<serde_json::Value>(&s).unwrap());
            }
            names.push(name);
        }
        assert!(names.contains(&"oci-layout".to_owned()));
        let index = index.unwrap();
        let manifests = index["manifests"].as_array().unwrap();
        assert_eq!(manifests.len(), 2);
        for m in manifests {
            let hex = m["digest"].as_str().unwrap().trim_start_matches("sha256:");
            assert!(
                names.contains(&format!("blobs/sha256/{hex}")),
                "{hex} missing"
            );
        }
        // layer + 2 configs + 2 manifests
        assert_eq!(
            names
                .iter()
                .filter(|n| n.starts_with("blobs/sha256/") && n.len() > 20)
                .count(),
            5
        );
    }
}
