//! A real registry for tests: Debian's `docker-registry` (the CNCF distribution registry) on
//! 127.0.0.1, with images pushed into it by `skopeo` from OCI layouts the tests write.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

/// What the registry tests need.
pub const TOOLS: &[&str] = &["docker-registry", "skopeo", "htpasswd"];

/// A registry serving from its own directory until dropped.
pub struct LocalRegistry {
    child: Option<Child>,
    dir: tempfile::TempDir,
    /// `127.0.0.1:PORT`.
    pub addr: String,
    /// `user:password` when it demands basic auth.
    pub creds: Option<String>,
}

impl LocalRegistry {
    /// Starts a registry; with `creds` (`user:password`) it demands basic auth.
    pub fn start(creds: Option<&str>) -> LocalRegistry {
        let dir = tempfile::tempdir().unwrap();
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = format!("127.0.0.1:{port}");
        let mut config = format!(
            "version: 0.1\nlog: {{level: warn}}\nstorage: {{filesystem: {{rootdirectory: {}}}}}\nhttp: {{addr: {addr}}}\n",
            dir.path().join("storage").display()
        );
        if let Some(c) = creds {
            let (user, pass) = c.split_once(':').unwrap();
            let o = Command::new("htpasswd")
                .args(["-Bbn", user, pass])
                .output()
                .unwrap();
            assert!(o.status.success(), "htpasswd failed");
            let file = dir.path().join("htpasswd");
            std::fs::write(&file, &o.stdout).unwrap();
            config.push_str(&format!(
                "auth: {{htpasswd: {{realm: minke-test, path: {}}}}}\n",
                file.display()
            ));
        }
        let cfg = dir.path().join("config.yml");
        std::fs::write(&cfg, config).unwrap();
        let log = std::fs::File::create(dir.path().join("log")).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&cfg)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("docker-registry");
        let reg = LocalRegistry {
            child: Some(child),
            dir,
            addr,
            creds: creds.map(str::to_string),
        };
        reg.wait_ready();
        reg
    }

    /// Waits until `GET /v2/` answers (200, or 401 behind auth).
    fn wait_ready(&self) {
        let end = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(mut s) = TcpStream::connect(&self.addr) {
                let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                let req = format!(
                    "GET /v2/ HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
                    self.addr
                );
                let mut buf = String::new();
                if s.write_all(req.as_bytes()).is_ok()
                    && s.read_to_string(&mut buf).is_ok()
                    && (buf.starts_with("HTTP/1.1 200") || buf.starts_with("HTTP/1.1 401"))
                {
                    return;
                }
            }
            assert!(
                Instant::now() < end,
                "the registry did not answer on {} within 60 s: {}",
                self.addr,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Its log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
    }

    /// Pushes the OCI layout at `layout` (every image of its index with `all`) as `NAME:TAG`.
    pub fn push(&self, layout: &Path, name_tag: &str, all: bool) {
        self.push_as(layout, name_tag, all, None)
    }

    /// [`LocalRegistry::push`] with skopeo's manifest `format` (`v2s2`: Docker's media types).
    pub fn push_as(&self, layout: &Path, name_tag: &str, all: bool, format: Option<&str>) {
        let mut c = Command::new("skopeo");
        c.args([
            "--insecure-policy",
            "copy",
            "--quiet",
            "--dest-tls-verify=false",
        ]);
        if let Some(f) = format {
            c.arg("--format").arg(f);
        }
        if all {
            c.arg("--all");
        }
        if let Some(creds) = &self.creds {
            c.arg("--dest-creds").arg(creds);
        }
        c.arg(format!("oci:{}", layout.display()))
            .arg(format!("docker://{}/{name_tag}", self.addr));
        let o = c.output().unwrap();
        assert!(
            o.status.success(),
            "{c:?}: {}\nregistry log:\n{}",
            String::from_utf8_lossy(&o.stderr),
            self.log()
        );
    }

    /// Where the registry keeps the blob `digest`.
    pub fn blob_file(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap();
        self.dir
            .path()
            .join("storage/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    /// Stops it (as dropping does).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for LocalRegistry {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A layer's compression.
#[derive(Clone, Copy)]
pub enum Comp {
    Gzip,
    Zstd,
}

/// One image of a layout.
pub struct Img {
    /// OCI architecture.
    pub arch: &'static str,
    /// Variant.
    pub variant: Option<&'static str>,
    /// Uncompressed layer tars, bottom first.
    pub layers: Vec<(Vec<u8>, Comp)>,
    /// The config's `config` object.
    pub run: serde_json::Value,
}

/// `sha256:HEX`.
pub fn sha(b: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(b)))
}

fn put(blobs: &Path, b: &[u8]) -> String {
    let d = sha(b);
    std::fs::write(blobs.join(&d[7..]), b).unwrap();
    d
}

/// Writes an OCI layout holding `imgs` (an index with one entry per image); returns the
/// manifests' digests in order.
pub fn write_layout(dir: &Path, imgs: &[Img]) -> Vec<String> {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let mut entries = Vec::new();
    let mut digests = Vec::new();
    for img in imgs {
        let mut layers = Vec::new();
        let mut diff_ids = Vec::new();
        for (tar, comp) in &img.layers {
            diff_ids.push(sha(tar));
            let (bytes, mt) = match comp {
                Comp::Gzip => {
                    let mut e =
                        flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                    e.write_all(tar).unwrap();
                    (
                        e.finish().unwrap(),
                        "application/vnd.oci.image.layer.v1.tar+gzip",
                    )
                }
                Comp::Zstd => (
                    zstd::encode_all(&tar[..], 3).unwrap(),
                    "application/vnd.oci.image.layer.v1.tar+zstd",
                ),
            };
            layers.push(serde_json::json!({"mediaType": mt, "digest": put(&blobs, &bytes), "size": bytes.len()}));
        }
        let mut platform = serde_json::json!({"architecture": img.arch, "os": "linux"});
        if let Some(v) = img.variant {
            platform["variant"] = v.into();
        }
        let mut config = platform.clone();
        config["config"] = img.run.clone();
        config["rootfs"] = serde_json::json!({"type": "layers", "diff_ids": diff_ids});
        let config = serde_json::to_vec(&config).unwrap();
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": put(&blobs, &config), "size": config.len()},
            "layers": layers,
        }))
        .unwrap();
        let md = put(&blobs, &manifest);
        entries.push(
            serde_json::json!({"mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": md, "size": manifest.len(), "platform": platform}),
        );
        digests.push(md);
    }
    let mut index = serde_json::json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": entries});
    if imgs.len() > 1 {
        // skopeo copies a layout's one entry: several images sit in a nested index.
        let inner = serde_json::to_vec(&index).unwrap();
        index = serde_json::json!({"schemaVersion": 2, "manifests": [{
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "digest": put(&blobs, &inner), "size": inner.len()}]});
    }
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    digests
}

/// A tar entry of a test layer.
pub enum E<'a> {
    /// Directory.
    D(&'a str),
    /// Directory with a mode.
    Dm(&'a str, u32),
    /// File (mode 0644, or 0755 for `bin/`).
    F(&'a str, &'a [u8]),
    /// Symlink.
    L(&'a str, &'a str),
}

/// An uncompressed layer tar of `entries`.
pub fn layer(entries: &[E<'_>]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_gnu();
        h.set_mtime(0);
        h.set_uid(0);
        h.set_gid(0);
        match e {
            E::D(p) | E::Dm(p, _) => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(match e {
                    E::Dm(_, m) => *m,
                    _ => 0o755,
                });
                h.set_size(0);
                b.append_data(&mut h, p, std::io::empty()).unwrap();
            }
            E::F(p, d) => {
                h.set_mode(if p.starts_with("bin/") { 0o755 } else { 0o644 });
                h.set_size(d.len() as u64);
                b.append_data(&mut h, p, *d).unwrap();
            }
            E::L(p, t) => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_mode(0o777);
                h.set_size(0);
                b.append_link(&mut h, p, t).unwrap();
            }
        }
    }
    b.into_inner().unwrap()
}
