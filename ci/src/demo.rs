//! `cargo xtask demo`: set up, build the default image, boot it and run commands in it, then
//! the cross-arch demo — every step through the `minke` command a user would type.

use anyhow::Result;
use xshell::{cmd, Shell};

pub fn run(sh: &Shell) -> Result<()> {
    println!("== cargo xtask setup: what minke needs on this machine");
    crate::setup::run(sh)?;
    println!("\n== cargo build --release -p minke-cli (a few minutes the first time)");
    cmd!(sh, "cargo build --release -p minke-cli").run()?;
    let minke = crate::workspace_root().join("target/release/minke");
    let out = crate::workspace_root().join("out");
    println!("\n== minke build (the built-in default spec)");
    cmd!(sh, "{minke} build -o {out}").run()?;
    println!("\n== minke run out -- uname -a");
    cmd!(sh, "{minke} run {out} -- uname -a").run()?;
    println!("\n== minke run out -- sh -c 'cat /etc/motd; mount | grep /var'");
    cmd!(
        sh,
        "{minke} run {out} -- sh -c 'cat /etc/motd; mount | grep /var'"
    )
    .run()?;
    println!("\n== minke run examples/cross-arch.yml -- /opt/arm64/bin/busybox uname -m");
    cmd!(
        sh,
        "{minke} run examples/cross-arch.yml -- /opt/arm64/bin/busybox uname -m"
    )
    .run()?;
    println!("\n== minke run examples/cross-arch.yml --container arm64 -- uname -m");
    cmd!(
        sh,
        "{minke} run examples/cross-arch.yml --container arm64 -- uname -m"
    )
    .run()?;
    // The same arm64 container, this time from a registry: MINKE_DEMO_REGISTRY (HOST:PORT)
    // when given, else one the demo serves on 127.0.0.1 for itself.
    let layout = minke::layer::Cache::default_location()
        .dir("oci")
        .join("arm64-busybox");
    let own;
    let addr = match std::env::var("MINKE_DEMO_REGISTRY") {
        Ok(a) if !a.is_empty() => a,
        _ => {
            own = crate::bench_registry::LocalRegistry::start(None);
            own.addr.clone()
        }
    };
    let reference = format!("{addr}/minke-demo/busybox:arm64");
    println!(
        "\n== skopeo copy oci:{} docker://{reference}",
        layout.display()
    );
    let src = format!("oci:{}", layout.display());
    let dest = format!("docker://{reference}");
    cmd!(
        sh,
        "skopeo --insecure-policy copy --quiet --dest-tls-verify=false {src} {dest}"
    )
    .run()?;
    println!(
        "\n== minke run examples/cross-arch.yml --image {reference} --platform linux/arm64 -- uname -m"
    );
    cmd!(
        sh,
        "{minke} run examples/cross-arch.yml --image {reference} --platform linux/arm64 -- uname -m"
    )
    .run()?;
    println!("\ndemo done: every guest powered off cleanly");
    Ok(())
}
