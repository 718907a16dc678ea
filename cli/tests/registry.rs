//! Images from a real registry (Debian's `docker-registry` on 127.0.0.1, filled by `skopeo`):
//! platforms picked from an index (variants included), layers with whiteouts in gzip and zstd,
//! basic auth, digests verified, tags pinned by the lock file, and builds that need no network
//! once pinned and cached.

mod support;

use std::path::Path;

use minke::archive::tree::NodeKind;
use minke::layer::Cache;
use minke::sources::oci::registry::{Registry, RegistryError, RegistryOptions};
use minke::sources::oci::OciImage;
use support::registry::{layer, write_layout, Comp, Img, LocalRegistry, E};

fn file(img: &OciImage, path: &str) -> Option<Vec<u8>> {
    match &img.tree.get(path)?.kind {
        NodeKind::File(d) => Some(d.read().unwrap()),
        k => panic!("{path}: {k:?}"),
    }
}

fn arch_img(arch: &'static str, variant: Option<&'static str>, text: &str) -> Img {
    Img {
        arch,
        variant,
        layers: vec![(
            layer(&[E::D("etc"), E::F("etc/arch", text.as_bytes())]),
            Comp::Gzip,
        )],
        run: serde_json::json!({}),
    }
}

fn registry(cache: &Path, lock: &Path, opts: RegistryOptions) -> Registry {
    Registry::new(Cache::at(cache), opts, Some(lock)).unwrap()
}

fn quiet(_: &str) {}

#[test]
fn registry_images_are_pinned_verified_and_cached() {
    if !support::registry::tools_present() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let mut reg = LocalRegistry::start(None);

    // A multi-platform index, arm in two variants.
    let multi = tmp.path().join("multi");
    let digests = write_layout(
        &multi,
        &[
            arch_img("arm64", None, "arm64"),
            arch_img("arm", Some("v6"), "armv6"),
            arch_img("arm", Some("v7"), "armv7"),
            arch_img("s390x", None, "s390x"),
        ],
    );
    reg.push(&multi, "multi:1", true);
    // Two layers: gzip below, zstd above with a whiteout and an opaque directory.
    let layered = tmp.path().join("layered");
    write_layout(
        &layered,
        &[Img {
            arch: "amd64",
            variant: None,
            layers: vec![
                (
                    layer(&[
                        E::D("bin"),
                        E::F("bin/sh", b"shell"),
                        E::F("bin/gone", b"x"),
                        E::D("etc"),
                        E::D("etc/conf.d"),
                        E::F("etc/conf.d/old", b"old"),
                        E::L("usr/bin", "../bin"),
                    ]),
                    Comp::Gzip,
                ),
                (
                    layer(&[
                        E::F("bin/.wh.gone", b""),
                        E::D("etc/conf.d"),
                        E::F("etc/conf.d/.wh..wh..opq", b""),
                        E::F("etc/conf.d/new", b"new"),
                    ]),
                    Comp::Zstd,
                ),
            ],
            run: serde_json::json!({"Entrypoint": ["/bin/sh"], "Cmd": ["-c", "true"],
                "Env": ["PATH=/bin"], "WorkingDir": "/etc", "User": "1000:1000"}),
        }],
    );
    reg.push(&layered, "layered:1", false);

    let cache = tmp.path().join("cache");
    let lock = tmp.path().join("spec.lock");
    let addr = reg.addr.clone();
    let r = registry(&cache, &lock, RegistryOptions::default());
    let multi_ref = format!("{addr}/multi:1");
    for (platform, want, digest) in [
        ("linux/arm64", "arm64", &digests[0]),
        ("linux/arm/v6", "armv6", &digests[1]),
        ("linux/arm/v7", "armv7", &digests[2]),
        ("linux/armhf", "armv7", &digests[2]),
        ("linux/s390x", "s390x", &digests[3]),
    ] {
        let pinned = r.pin(&multi_ref, Some(platform)).unwrap();
        assert_eq!(&pinned.digest, digest, "{platform}");
        let img = r.fetch(&pinned, &quiet).unwrap();
        assert_eq!(
            file(&img, "etc/arch").unwrap(),
            want.as_bytes(),
            "{platform}"
        );
    }
    let e = r
        .pin(&multi_ref, Some("linux/riscv64"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("linux/riscv64") && e.contains("linux/s390x"),
        "{e}"
    );

    let layered_ref = format!("{addr}/layered:1");
    let img = r
        .fetch(&r.pin(&layered_ref, None).unwrap(), &quiet)
        .unwrap();
    assert_eq!(file(&img, "bin/sh").unwrap(), b"shell");
    assert!(
        img.tree.get("bin/gone").is_none(),
        "the whiteout hides bin/gone"
    );
    assert!(
        img.tree.get("etc/conf.d/old").is_none(),
        "the opaque dir hides old"
    );
    assert_eq!(file(&img, "etc/conf.d/new").unwrap(), b"new");
    assert_eq!(img.run.entrypoint, ["/bin/sh"]);
    assert_eq!(img.run.working_dir, "/etc");
    assert_eq!(img.run.user, "1000:1000");
    assert!(r.save_lock().unwrap());
    let text = std::fs::read_to_string(&lock).unwrap();
    assert!(
        text.contains(&digests[2]) && text.contains("linux/arm/v7"),
        "{text}"
    );

    // The tag moves; the lock keeps the build on the pinned manifest until a refresh.
    let moved = tmp.path().join("moved");
    let new = write_layout(&moved, &[arch_img("arm64", None, "arm64 v2")]);
    reg.push(&moved, "multi:1", true);
    let r = registry(&cache, &lock, RegistryOptions::default());
    let pinned = r.pin(&multi_ref, Some("linux/arm64")).unwrap();
    assert_eq!(pinned.digest, digests[0]);
    assert_eq!(
        file(&r.fetch(&pinned, &quiet).unwrap(), "etc/arch").unwrap(),
        b"arm64"
    );
    let refresh = RegistryOptions {
        refresh: true,
        ..RegistryOptions::default()
    };
    let fresh = registry(&cache, &tmp.path().join("other.lock"), refresh);
    let pinned = fresh.pin(&multi_ref, Some("linux/arm64")).unwrap();
    assert_eq!(pinned.digest, new[0]);
    assert_eq!(
        file(&fresh.fetch(&pinned, &quiet).unwrap(), "etc/arch").unwrap(),
        b"arm64 v2"
    );

    // With the registry gone, the lock and the cache are enough.
    reg.stop();
    let r = registry(&cache, &lock, RegistryOptions::default());
    for platform in ["linux/arm/v7", "linux/s390x"] {
        let pinned = r.pin(&multi_ref, Some(platform)).unwrap();
        r.fetch(&pinned, &quiet).unwrap();
    }
    r.fetch(&r.pin(&layered_ref, None).unwrap(), &quiet)
        .unwrap();
    // …and what is neither locked nor cached says that it cannot reach the registry.
    let e = r.pin(&format!("{addr}/other:1"), None).unwrap_err();
    assert!(matches!(e, RegistryError::Pull { .. }), "{e}");
}

#[test]
fn a_blob_that_does_not_match_its_digest_is_refused() {
    if !support::registry::tools_present() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let reg = LocalRegistry::start(None);
    let dir = tmp.path().join("img");
    let md = write_layout(&dir, &[arch_img("amd64", None, "right")]);
    reg.push(&dir, "victim:1", false);
    // skopeo pushed the same bytes, so the manifest's layer digest is the layout's.
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("blobs/sha256").join(&md[0][7..])).unwrap())
            .unwrap();
    let layer_digest = manifest["layers"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let stored = reg.blob_file(&layer_digest);
    let mut bytes = std::fs::read(&stored).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&stored, bytes).unwrap();

    let cache = tmp.path().join("cache");
    let r = registry(
        &cache,
        &tmp.path().join("l.lock"),
        RegistryOptions::default(),
    );
    let pinned = r.pin(&format!("{}/victim:1", reg.addr), None).unwrap();
    let e = r.fetch(&pinned, &quiet).unwrap_err().to_string();
    assert!(
        e.contains(&layer_digest) && e.contains("refusing them"),
        "{e}"
    );
    let hex = &layer_digest[7..];
    assert!(
        !cache.join("blobs/sha256").join(hex).exists(),
        "a refused blob stays out of the cache"
    );
}

#[test]
fn basic_auth_from_a_credentials_file() {
    if !support::registry::tools_present() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let reg = LocalRegistry::start(Some("ci:s3cret-pass"));
    let dir = tmp.path().join("img");
    write_layout(&dir, &[arch_img("amd64", None, "private")]);
    reg.push(&dir, "private:1", false);
    let image = format!("{}/private:1", reg.addr);
    let cache = tmp.path().join("cache");

    let empty = tmp.path().join("empty.json");
    std::fs::write(&empty, "{}").unwrap();
    let anon = registry(
        &cache,
        &tmp.path().join("a.lock"),
        RegistryOptions {
            auth_file: Some(empty),
            ..RegistryOptions::default()
        },
    );
    let e = anon.pin(&image, None).unwrap_err().to_string();
    assert!(e.contains("log in") && e.contains(&image), "{e}");

    let auth = tmp.path().join("auth.json");
    let token = {
        // base64("ci:s3cret-pass"), the `auth` field of Docker's config.json.
        "Y2k6czNjcmV0LXBhc3M="
    };
    std::fs::write(
        &auth,
        format!(r#"{{"auths": {{"{}": {{"auth": "{token}"}}}}}}"#, reg.addr),
    )
    .unwrap();
    let r = registry(
        &cache,
        &tmp.path().join("b.lock"),
        RegistryOptions {
            auth_file: Some(auth),
            ..RegistryOptions::default()
        },
    );
    let img = r.fetch(&r.pin(&image, None).unwrap(), &quiet).unwrap();
    assert_eq!(file(&img, "etc/arch").unwrap(), b"private");
}
