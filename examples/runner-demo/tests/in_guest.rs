//! Runs in the guest: PID 1 is minke's init, and the crate's directory is shared at its host
//! path, which is also the working directory.

#[test]
fn runs_inside_a_minke_guest() {
    let pid1 = std::fs::read_link("/proc/1/exe").expect("/proc/1/exe");
    assert_eq!(pid1, std::path::Path::new("/init"), "PID 1 is not minke's init");
    assert!(
        std::path::Path::new("/etc/minke/image.cfg").is_file(),
        "no minke image config: not a minke guest"
    );
}

#[test]
fn reads_a_fixture_from_the_crate_directory() {
    let text = std::fs::read_to_string("fixtures/pangram.txt").expect("the shared fixture");
    assert_eq!(runner_demo::words(&text), 9);
    assert_eq!(
        std::env::current_dir().unwrap(),
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")),
        "the working directory is the crate's, at the same path as on the host"
    );
}

#[test]
fn cargo_environment_passes_through() {
    assert_eq!(
        std::env::var("CARGO_PKG_NAME").as_deref(),
        Ok("runner-demo"),
        "cargo's variables reach the guest"
    );
}

#[cfg(feature = "fail")]
#[test]
fn fails_on_purpose() {
    panic!("this test fails on purpose (feature `fail`)");
}
