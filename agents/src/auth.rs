//! The guest's copy of the VM secret (see [`minke_protocol::auth`]): read once per process
//! from the firmware config file QEMU was given, which only root can read in the guest.

use std::sync::OnceLock;

use minke_protocol::auth::{Secret, FW_CFG_SYSFS_PATH, SECRET_LEN};

/// The VM secret, or why this guest has none (then every conversation is refused).
pub fn secret() -> Result<&'static Secret, &'static str> {
    static SECRET: OnceLock<Result<Secret, String>> = OnceLock::new();
    SECRET
        .get_or_init(|| read(FW_CFG_SYSFS_PATH))
        .as_ref()
        .map_err(String::as_str)
}

fn read(path: &str) -> Result<Secret, String> {
    let bytes = std::fs::read(path).map_err(|e| {
        format!(
            "the guest has no VM secret ({path}: {e}): the kernel needs qemu_fw_cfg \
             (CONFIG_FW_CFG_SYSFS) and QEMU the secret's -fw_cfg file; boot images with minke"
        )
    })?;
    Secret::from_bytes(&bytes).map_err(|e| format!("{path}: {e}"))
}

/// Fresh random bytes for a nonce. `GRND_INSECURE` never blocks early in boot, before the
/// kernel's random pool is counted as initialised; its output is still unpredictable to
/// anyone outside the guest, which is all a nonce needs.
pub fn nonce() -> std::io::Result<[u8; SECRET_LEN]> {
    let mut n = [0u8; SECRET_LEN];
    let mut filled = 0;
    while filled < n.len() {
        match rustix::rand::getrandom(&mut n[filled..], rustix::rand::GetRandomFlags::INSECURE) {
            Ok(k) => filled += k,
            Err(rustix::io::Errno::INTR) => {}
            // Kernels before 5.6 have no GRND_INSECURE: the non-blocking pool then.
            Err(rustix::io::Errno::INVAL) => {
                match rustix::rand::getrandom(
                    &mut n[filled..],
                    rustix::rand::GetRandomFlags::NONBLOCK,
                ) {
                    Ok(k) => filled += k,
                    Err(rustix::io::Errno::INTR) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_secret_file_and_refuses_others() {
        let d = tempfile_dir();
        let p = d.join("raw");
        std::fs::write(&p, [7u8; SECRET_LEN]).unwrap();
        assert_eq!(
            read(p.to_str().unwrap()).unwrap(),
            Secret::from_bytes(&[7u8; SECRET_LEN]).unwrap()
        );
        std::fs::write(&p, [7u8; 5]).unwrap();
        assert!(read(p.to_str().unwrap()).unwrap_err().contains("5 bytes"));
        let e = read(d.join("missing").to_str().unwrap()).unwrap_err();
        assert!(e.contains("qemu_fw_cfg"), "{e}");
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn nonces_differ() {
        assert_ne!(nonce().unwrap(), nonce().unwrap());
    }

    fn tempfile_dir() -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("minke-auth-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}
