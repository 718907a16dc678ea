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
    if !support::require_tools(support::registry::TOOLS) {
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

    // The same platforms in Docker's media types (a manifest list, schema 2 manifests).
    reg.push_as(&multi, "docker:1", true, Some("v2s2"));

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
    let docker_ref = format!("{addr}/docker:1");
    let pinned = r.pin(&docker_ref, Some("linux/arm/v7")).unwrap();
    let stored = std::fs::read(cache.join("blobs/sha256").join(&pinned.digest[7..])).unwrap();
    assert!(
        String::from_utf8_lossy(&stored)
            .contains("application/vnd.docker.distribution.manifest.v2+json"),
        "skopeo pushed Docker's media types"
    );
    let img = r.fetch(&pinned, &quiet).unwrap();
    assert_eq!(file(&img, "etc/arch").unwrap(), b"armv7");
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
    if !support::require_tools(support::registry::TOOLS) {
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
    if !support::require_tools(support::registry::TOOLS) {
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

/// Debian's static busybox for `arch` as a one-layer image with the applets the test uses.
fn busybox_image(arch: &str, oci_arch: &'static str, variant: Option<&'static str>) -> Img {
    let cache = Cache::default_location();
    let deb = minke::sources::deb::pins::fetch(&cache, "busybox-static", arch).unwrap();
    let tree = minke::sources::deb::unpack(&deb.path).unwrap();
    let bytes = match &tree.get("bin/busybox").unwrap().kind {
        NodeKind::File(d) => d.read().unwrap(),
        k => panic!("{k:?}"),
    };
    let mut entries = vec![E::D("bin"), E::F("bin/busybox", &bytes), E::D("etc")];
    for applet in ["sh", "uname", "cat", "ls", "hostname", "id", "wget"] {
        entries.push(E::L(
            Box::leak(format!("bin/{applet}").into_boxed_str()),
            "busybox",
        ));
    }
    entries.push(E::F("etc/hidden", b"below"));
    entries.push(E::F(
        "etc/passwd",
        b"root:x:0:0::/root:/bin/sh\nnobody:x:65534:65534::/:/bin/sh\n",
    ));
    entries.push(E::Dm("tmp", 0o1777));
    let base = layer(&entries);
    let top = layer(&[
        E::F("etc/.wh.hidden", b""),
        E::F("etc/motd", oci_arch.as_bytes()),
    ]);
    Img {
        arch: oci_arch,
        variant,
        layers: vec![(base, Comp::Gzip), (top, Comp::Zstd)],
        run: serde_json::json!({"Cmd": ["/bin/sh", "-c", "echo default command; exit 7"],
            "Env": ["PATH=/bin", "GREETING=hello"], "WorkingDir": "/etc", "User": "nobody"}),
    }
}

/// The cross-arch demo from a registry: one multi-platform index, three containers of one
/// x86_64 image, each run through binfmt_misc and QEMU user emulation; whiteouts hide what they
/// should; the lock file pins the three digests, and a second build needs no registry.
#[test]
fn cross_arch_containers_from_a_registry() {
    if !support::require_tools(support::registry::TOOLS)
        || !support::require_tools(support::BOOT_TOOLS)
    {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let mut reg = LocalRegistry::start(None);
    let layout = tmp.path().join("busybox");
    write_layout(
        &layout,
        &[
            busybox_image("arm64", "arm64", None),
            busybox_image("armhf", "arm", Some("v7")),
            busybox_image("s390x", "s390x", None),
        ],
    );
    reg.push(&layout, "busybox:multi", true);

    let spec_dir = tmp.path().join("project");
    let mut containers = String::new();
    let mut packages = String::new();
    for (name, platform) in [
        ("arm64", "linux/arm64"),
        ("armhf", "linux/arm/v7"),
        ("s390x", "linux/s390x"),
    ] {
        let pkg = spec_dir.join("packages").join(format!("box-{name}"));
        std::fs::create_dir_all(&pkg).unwrap();
        std::fs::write(
            pkg.join("package.yml"),
            format!(
                "description: busybox {name} from a registry\noci:\n  image: {}/busybox:multi\n  platform: {platform}\n  dest: /containers/{name}\n",
                reg.addr
            ),
        )
        .unwrap();
        packages.push_str(&format!("  - box-{name}\n"));
        containers.push_str(&format!("  - name: {name}\n    package: box-{name}\n"));
    }
    let spec = spec_dir.join("reg-cross.yml");
    std::fs::write(
        &spec,
        format!(
            "name: reg-cross\nkernel:\n  package: linux-image-cloud-amd64\nagents: [control, binfmt]\npackages:\n  - busybox-static\n  - qemu-user-static\n{packages}binfmt: [aarch64, arm, s390x]\ncontainers:\n{containers}"
        ),
    )
    .unwrap();
    let build = |out: &Path| {
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_minke"))
            .arg("build")
            .arg(&spec)
            .arg("-o")
            .arg(out)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "minke build: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    };
    let out = tmp.path().join("out");
    build(&out);
    let lock = std::fs::read_to_string(spec_dir.join("reg-cross.lock")).unwrap();
    for p in ["linux/arm64", "linux/arm/v7", "linux/s390x"] {
        assert!(lock.contains(p), "{lock}");
    }
    assert_eq!(lock.matches("digest: sha256:").count(), 3, "{lock}");

    for (name, want) in [
        ("arm64", "aarch64"),
        ("armhf", "armv7l"),
        ("s390x", "s390x"),
    ] {
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_minke"))
            .args(["run", "--accel", "tcg", "--name"])
            .arg(format!("reg-{name}"))
            .arg("--container")
            .arg(name)
            .arg(&out)
            .args(["--", "sh", "-c", "uname -m; cat /etc/motd; echo; ls /etc"])
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&o.stdout);
        assert_eq!(
            o.status.code(),
            Some(0),
            "{name}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let mut lines = stdout.lines();
        assert_eq!(lines.next(), Some(want), "{stdout}");
        assert!(
            !stdout.contains("hidden"),
            "the whiteout hides etc/hidden: {stdout}"
        );
        assert!(stdout.contains("motd"), "{stdout}");
    }

    // The registry gone, the lock and the cache rebuild the same image.
    reg.stop();
    let again = tmp.path().join("again");
    build(&again);
    for f in ["reg-cross-initrd.img", "reg-cross.manifest.json"] {
        assert!(
            std::fs::read(out.join(f)).unwrap() == std::fs::read(again.join(f)).unwrap(),
            "{f} differs"
        );
    }
}

/// `minke run --image`: a registry image run in a guest without rebuilding it, foreign platform
/// through binfmt_misc, with its config's command, environment, working directory and user, on
/// a writable overlay; converted once, and run again from the cache with the registry gone.
#[test]
fn run_image_from_a_registry() {
    if !support::require_tools(support::registry::TOOLS)
        || !support::require_tools(support::BOOT_TOOLS)
    {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let mut reg = LocalRegistry::start(None);
    let layout = tmp.path().join("busybox");
    write_layout(
        &layout,
        &[
            busybox_image("arm64", "arm64", None),
            busybox_image("s390x", "s390x", None),
        ],
    );
    reg.push(&layout, "busybox:run", true);
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let index_digest = index["manifests"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let ws = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let cross = ws.join("examples/cross-arch.yml");
    let run = |name: &str, image: &str, platform: &str, cmd: &[&str]| {
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_minke"))
            .args(["run", "--accel", "tcg", "--name", name])
            .arg(&cross)
            .args(["--image", image, "--platform", platform])
            .args(cmd)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    // A page on the host's loopback, for the container to fetch over `--net user`.
    let web = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = web.local_addr().unwrap().port();
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        for mut s in web.incoming().flatten() {
            let mut req = [0u8; 1024];
            let _ = s.read(&mut req);
            let _ = s.write_all(
                b"HTTP/1.0 200 OK\r\nContent-Length: 13\r\nConnection: close\r\n\r\nfrom the host",
            );
        }
    });
    let tagged = format!("{}/busybox:run", reg.addr);
    let script =
        "uname -m; id -u; pwd; echo $GREETING; echo written > /tmp/f && read l < /tmp/f && echo $l; ls /etc";
    let (code, out, err) = run(
        "img-arm64",
        &tagged,
        "linux/arm64",
        &["--", "sh", "-c", script],
    );
    assert_eq!(code, Some(0), "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        &lines[..5],
        ["aarch64", "65534", "/etc", "hello", "written"],
        "{out}{err}"
    );
    assert!(!out.contains("hidden") && out.contains("motd"), "{out}");

    // `--net user` reaches the container: it shares the guest's network.
    let url = format!("http://10.0.2.2:{port}/");
    let (code, out, err) = run(
        "img-net",
        &tagged,
        "linux/arm64",
        &["--net", "user", "--", "wget", "-qO-", &url],
    );
    assert_eq!((code, out.as_str()), (Some(0), "from the host"), "{err}");

    // No command: the image's own, and its exit status.
    let (code, out, err) = run("img-default", &tagged, "linux/s390x", &[]);
    assert_eq!(
        (code, out.as_str()),
        (Some(7), "default command\n"),
        "{err}"
    );

    // The registry gone: a digest reference runs from the cache.
    reg.stop();
    let pinned = format!("{}/busybox@{index_digest}", reg.addr);
    let (code, out, err) = run(
        "img-offline",
        &pinned,
        "linux/s390x",
        &["--", "uname", "-m"],
    );
    assert_eq!((code, out.as_str()), (Some(0), "s390x\n"), "{err}");

    // An image without the emulator says so before booting.
    let (code, _, err) = {
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_minke"))
            .args([
                "run",
                "--accel",
                "tcg",
                "--image",
                &pinned,
                "--platform",
                "linux/s390x",
            ])
            .args(["--", "true"])
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        (
            o.status.code(),
            (),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    assert_ne!(code, Some(0));
    assert!(err.contains("qemu-s390x-static"), "{err}");
}

/// `minke push` publishes a built image as an OCI artifact that skopeo (a client no one here
/// wrote) reads and copies; the same image pushed twice has the same digest; `minke pull` into
/// two caches gives the image's bytes back; `minke run REF` boots straight from the registry.
#[test]
fn images_are_pushed_pulled_and_run_from_a_registry() {
    if !support::require_tools(support::registry::TOOLS)
        || !support::require_tools(support::BOOT_TOOLS)
    {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let reg = LocalRegistry::start(None);
    let minke = |args: &[&str], cache: Option<&Path>| {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_minke"));
        c.args(args).stdin(std::process::Stdio::null());
        if let Some(cache) = cache {
            c.env("MINKE_CACHE", cache);
        }
        let o = c.output().unwrap();
        assert!(
            o.status.success(),
            "minke {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let built = tmp.path().join("built");
    minke(&["build", "-o", built.to_str().unwrap()], None);
    let reference = format!("{}/minke/default:1", reg.addr);
    let first = minke(&["push", built.to_str().unwrap(), &reference], None);
    let again = minke(&["push", built.to_str().unwrap(), &reference], None);
    assert_eq!(first, again, "the same image, the same manifest digest");
    let digest = first.trim().rsplit('@').next().unwrap().to_string();
    assert!(digest.starts_with("sha256:"), "{first}");

    // skopeo reads the artifact and copies it whole.
    let o = std::process::Command::new("skopeo")
        .args(["inspect", "--raw", "--tls-verify=false"])
        .arg(format!("docker://{reference}"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let raw = String::from_utf8_lossy(&o.stdout).into_owned();
    assert_eq!(support::registry::sha(raw.as_bytes()), digest, "{raw}");
    assert!(raw.contains("application/vnd.minke.image.v1"), "{raw}");
    let copy = tmp.path().join("skopeo-copy");
    let o = std::process::Command::new("skopeo")
        .args([
            "--insecure-policy",
            "copy",
            "--quiet",
            "--src-tls-verify=false",
        ])
        .arg(format!("docker://{reference}"))
        .arg(format!("oci:{}:1", copy.display()))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let kernel_sha = support::registry::sha(&std::fs::read(built.join("default-kernel")).unwrap());
    assert!(copy.join("blobs/sha256").join(&kernel_sha[7..]).is_file());

    // Two pulls into two empty caches: the built bytes, by tag and by digest.
    for (i, r) in [
        reference.clone(),
        format!("{}/minke/default@{digest}", reg.addr),
    ]
    .iter()
    .enumerate()
    {
        let cache = tmp.path().join(format!("cache{i}"));
        let out = tmp.path().join(format!("pulled{i}"));
        minke(&["pull", r, "-o", out.to_str().unwrap()], Some(&cache));
        for f in [
            "default-kernel",
            "default-initrd.img",
            "default-cmdline",
            "default.manifest.json",
            "default.spdx.json",
        ] {
            assert!(
                std::fs::read(built.join(f)).unwrap() == std::fs::read(out.join(f)).unwrap(),
                "{f} differs after a pull"
            );
        }
    }

    // Booted straight from the registry.
    let out = minke(
        &[
            "run",
            &reference,
            "--accel",
            "tcg",
            "--name",
            "from-registry",
            "--",
            "cat",
            "/etc/motd",
        ],
        Some(&tmp.path().join("cache0")),
    );
    assert!(out.contains("Welcome to a minke guest."), "{out}");
}

/// `--cache-to` / `--cache-from`: a second runner with an empty cache takes every layer from
/// the registry (its in-guest binary is not compiled: the cargo target it would use stays
/// absent) and builds the same image; skopeo reads what was pushed.
#[test]
fn layers_are_shared_through_a_registry_cache() {
    if !support::require_tools(support::registry::TOOLS) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let reg = LocalRegistry::start(None);
    let repo = format!("{}/ci/layers", reg.addr);
    let build = |cache: &Path, target: &Path, flag: &str, out: &Path| {
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_minke"))
            .args(["build", "-o"])
            .arg(out)
            .args([flag, &repo])
            .env("MINKE_CACHE", cache)
            .env("MINKE_CARGO_TARGET_DIR", target)
            .env("RUST_LOG", "info")
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
        assert!(o.status.success(), "minke build {flag}: {stderr}");
        (String::from_utf8_lossy(&o.stdout).into_owned(), stderr)
    };
    // The first runner compiles into the workspace's shared target (as the reproducibility
    // test does), so this test does not pay for a cold build.
    let shared_target = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .join("target/reproducible-cargo-target");
    let (cache_a, cache_b) = (tmp.path().join("cache-a"), tmp.path().join("cache-b"));
    let (first, _) = build(
        &cache_a,
        &shared_target,
        "--cache-to",
        &tmp.path().join("a"),
    );
    let keys: Vec<String> = std::fs::read_dir(cache_a.join("layers"))
        .unwrap()
        .map(|e| {
            e.unwrap()
                .file_name()
                .to_string_lossy()
                .trim_end_matches(".json")
                .to_string()
        })
        .collect();
    assert!(keys.len() >= 2, "{keys:?}");
    // A real client reads a pushed layer.
    let o = std::process::Command::new("skopeo")
        .args(["inspect", "--raw", "--tls-verify=false"])
        .arg(format!("docker://{repo}:layer-{}", keys[0]))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let raw = String::from_utf8_lossy(&o.stdout);
    assert!(raw.contains("application/vnd.minke.layer.v1"), "{raw}");

    let untouched_target = tmp.path().join("never-built");
    let (second, stderr) = build(
        &cache_b,
        &untouched_target,
        "--cache-from",
        &tmp.path().join("b"),
    );
    let digest = |s: &str| s.lines().last().unwrap_or_default().to_string();
    assert_eq!(
        digest(&first),
        digest(&second),
        "the same image from shared layers"
    );
    assert!(
        !untouched_target.exists(),
        "the in-guest binary was compiled although its layer was in the shared cache: {stderr}"
    );
    for k in &keys {
        assert_eq!(
            std::fs::read(cache_a.join("layers").join(format!("{k}.json"))).unwrap(),
            std::fs::read(cache_b.join("layers").join(format!("{k}.json"))).unwrap(),
            "layer {k}"
        );
    }
}

/// What a shared cache offers is checked before it enters the local cache: a layer pushed
/// under another key's tag, and a blob whose bytes are not what its name says, are refused.
#[test]
fn a_shared_cache_cannot_pass_off_a_wrong_layer() {
    use minke::archive::tree::{Node, Tree};
    use minke::remote::RemoteCache;
    if !support::require_tools(support::registry::TOOLS) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let reg = LocalRegistry::start(None);
    let repo = format!("{}/ci/layers", reg.addr);
    let remote = RemoteCache::new(&repo).unwrap();
    let a = Cache::at(tmp.path().join("a"));
    let b = Cache::at(tmp.path().join("b"));
    let net = Registry::new(a.clone(), RegistryOptions::default(), None).unwrap();
    let mut tree = Tree::new();
    tree.insert("etc/hello", Node::file(0o644, &b"hello\n"[..]))
        .unwrap();
    let key1 = "1".repeat(64);
    let key2 = "2".repeat(64);
    a.store("hello", &key1, &tree, Vec::new()).unwrap();
    assert!(remote.push(&net, &a, &key1, &quiet).unwrap());
    assert!(
        !remote.push(&net, &a, &key1, &quiet).unwrap(),
        "pushed once"
    );
    // Fetched into an empty cache: the same layer.
    let net_b = Registry::new(b.clone(), RegistryOptions::default(), None).unwrap();
    assert!(remote.fetch(&net_b, &b, &key1, &quiet).unwrap());
    let got = b.load(&key1).unwrap().expect("the layer is in the cache");
    assert_eq!(
        got.record.digest,
        a.load(&key1).unwrap().unwrap().record.digest
    );
    assert!(
        !remote.fetch(&net_b, &b, &key2, &quiet).unwrap(),
        "no such layer"
    );

    // Key 1's artifact under key 2's tag.
    let (m, _) = net.raw_manifest(&format!("{repo}:layer-{key1}")).unwrap();
    net.push_manifest(
        &format!("{repo}:layer-{key2}"),
        &m,
        minke::sources::oci::artifact::MANIFEST_TYPE,
    )
    .unwrap();
    let e = remote
        .fetch(&net_b, &b, &key2, &quiet)
        .unwrap_err()
        .to_string();
    assert!(e.contains("not 2222"), "{e}");
    assert!(b.load(&key2).unwrap().is_none());

    // A record naming a blob the tarball carries with other bytes.
    let key3 = "3".repeat(64);
    let c = Cache::at(tmp.path().join("c"));
    c.store("hello", &key3, &tree, Vec::new()).unwrap();
    let record = c.record_bytes(&key3).unwrap().unwrap();
    let hello_sha = support::registry::sha(b"hello\n")[7..].to_string();
    let mut tar = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_ustar();
    h.set_size(6);
    h.set_mode(0o644);
    tar.append_data(&mut h, &hello_sha, &b"HELLO\n"[..])
        .unwrap();
    let tar = tar.into_inner().unwrap();
    let reference = format!("{repo}:layer-{key3}");
    let mut layers = Vec::new();
    for (bytes, media) in [
        (&record, "application/vnd.minke.layer.record.v1+json"),
        (&tar, "application/vnd.minke.layer.blobs.v1.tar"),
    ] {
        let digest = support::registry::sha(bytes);
        net.push_blob_bytes(&reference, bytes, &digest).unwrap();
        layers.push(minke::sources::oci::artifact::Descriptor {
            media_type: media.into(),
            digest,
            size: bytes.len() as u64,
            data: None,
            annotations: Default::default(),
        });
    }
    minke::sources::oci::artifact::ArtifactManifest::new(
        minke::remote::ARTIFACT_TYPE,
        layers,
        Default::default(),
    )
    .push(&net, &reference)
    .unwrap();
    let d = Cache::at(tmp.path().join("d"));
    let net_d = Registry::new(d.clone(), RegistryOptions::default(), None).unwrap();
    let e = remote
        .fetch(&net_d, &d, &key3, &quiet)
        .unwrap_err()
        .to_string();
    assert!(e.contains("does not match its digest"), "{e}");
    assert!(d.load(&key3).unwrap().is_none());
    assert!(!d.has_blob(&hello_sha), "the wrong bytes were kept");
}
