//! The binfmt agent: mounts binfmt_misc if needed and registers the image's foreign-binary
//! interpreters (`ImageConfig.binfmt`, already resolved by the builder), then reports ready
//! and exits. PID1 loads the binfmt_misc module before starting it.
//!
//! Each entry becomes one write of `:NAME:M:0:MAGIC:MASK:INTERPRETER:FLAGS` to
//! `/proc/sys/fs/binfmt_misc/register`, with every magic and mask byte written as `\xHH` (the
//! kernel decodes these escapes, and a raw `:` would end the field). An existing entry of the
//! same name is removed (`-1` written to its file) and registered again. Entries whose magic is
//! an ELF header for the running machine are skipped: registering the native architecture
//! would route every native binary through an emulator.

use std::fmt::Write as _;
use std::io::{self, Write};
use std::path::Path;

use minke_protocol::config::Binfmt;

/// Where binfmt_misc is mounted.
pub const BINFMT_DIR: &str = "/proc/sys/fs/binfmt_misc";

/// ELF `e_machine` of the machine this agent runs on.
pub const NATIVE_E_MACHINE: u16 = if cfg!(target_arch = "x86_64") {
    62
} else if cfg!(target_arch = "aarch64") {
    183
} else if cfg!(target_arch = "riscv64") {
    243
} else if cfg!(target_arch = "s390x") {
    22
} else if cfg!(target_arch = "powerpc64") {
    21
} else {
    0
};

/// Why an entry cannot be registered.
#[derive(Debug, thiserror::Error)]
pub enum BinfmtError {
    /// A field holds a character the register syntax cannot carry.
    #[error("binfmt entry `{name}`: {what}")]
    Invalid {
        /// Entry name.
        name: String,
        /// What is wrong.
        what: String,
    },
    /// The kernel refused a write.
    #[error("binfmt entry `{name}`: cannot write {path}: {source}")]
    Write {
        /// Entry name.
        name: String,
        /// The file written.
        path: String,
        /// The OS error.
        source: io::Error,
    },
    /// binfmt_misc is not available.
    #[error("cannot mount binfmt_misc on {BINFMT_DIR}: {0} (is the binfmt_misc module loaded?)")]
    Mount(io::Error),
}

fn escape(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 4);
    for b in bytes {
        let _ = write!(s, "\\x{b:02x}");
    }
    s
}

/// The line written to `register` for `b`.
pub fn register_line(b: &Binfmt) -> String {
    format!(
        ":{}:M:0:{}:{}:{}:{}",
        b.name,
        escape(&b.magic),
        escape(&b.mask),
        b.interpreter,
        b.flags
    )
}

/// Checks that `b` can be expressed in the register syntax.
pub fn validate(b: &Binfmt) -> Result<(), BinfmtError> {
    let bad = |what: String| {
        Err(BinfmtError::Invalid {
            name: b.name.clone(),
            what,
        })
    };
    if b.name.is_empty() || b.name.contains([':', '/', '\n']) || b.name == "." || b.name == ".." {
        return bad("the name must be non-empty without `:`, `/` or newline".into());
    }
    if b.interpreter.is_empty() || b.interpreter.contains([':', '\n']) {
        return bad("the interpreter path must be non-empty without `:` or newline".into());
    }
    if b.magic.is_empty() || b.magic.len() > 128 {
        return bad(format!(
            "the magic must be 1 to 128 bytes, not {}",
            b.magic.len()
        ));
    }
    if !b.mask.is_empty() && b.mask.len() != b.magic.len() {
        return bad(format!(
            "the mask has {} bytes, the magic {}",
            b.mask.len(),
            b.magic.len()
        ));
    }
    if let Some(c) = b.flags.chars().find(|c| !"POCF".contains(*c)) {
        return bad(format!("unknown flag `{c}` (expected P, O, C or F)"));
    }
    Ok(())
}

/// Whether `b` matches ELF binaries of the running machine (by `e_machine`).
pub fn is_native(b: &Binfmt) -> bool {
    let m = &b.magic;
    if m.len() < 20 || &m[..4] != b"\x7fELF" {
        return false;
    }
    let e_machine = match m[5] {
        2 => u16::from_be_bytes([m[18], m[19]]),
        _ => u16::from_le_bytes([m[18], m[19]]),
    };
    e_machine == NATIVE_E_MACHINE
}

fn write_file(path: &Path, data: &[u8]) -> io::Result<()> {
    let mut f = std::fs::OpenOptions::new().write(true).open(path)?;
    f.write_all(data)
}

/// Registers `b` under binfmt_misc mounted at `dir`, replacing an entry of the same name.
pub fn register(dir: &Path, b: &Binfmt) -> Result<(), BinfmtError> {
    validate(b)?;
    let line = register_line(b);
    let reg = dir.join("register");
    let werr = |path: &Path, source| BinfmtError::Write {
        name: b.name.clone(),
        path: path.display().to_string(),
        source,
    };
    match write_file(&reg, line.as_bytes()) {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
            let entry = dir.join(&b.name);
            write_file(&entry, b"-1").map_err(|e| werr(&entry, e))?;
            write_file(&reg, line.as_bytes()).map_err(|e| werr(&reg, e))
        }
        Err(e) => Err(werr(&reg, e)),
    }
}

fn ensure_mounted() -> Result<(), BinfmtError> {
    if Path::new(BINFMT_DIR).join("register").exists() {
        return Ok(());
    }
    rustix::mount::mount(
        "binfmt_misc",
        BINFMT_DIR,
        "binfmt_misc",
        rustix::mount::MountFlags::NOSUID
            | rustix::mount::MountFlags::NODEV
            | rustix::mount::MountFlags::NOEXEC,
        None,
    )
    .map_err(|e| BinfmtError::Mount(e.into()))
}

/// Runs the binfmt agent; returns the process exit code (0 when every entry was registered).
pub fn run() -> i32 {
    let cfg = crate::load_config("binfmt");
    let mut failed = 0;
    if !cfg.binfmt.is_empty() {
        if let Err(e) = ensure_mounted() {
            eprintln!("minke agent binfmt: {e}");
            crate::notify_ready("binfmt");
            return 1;
        }
    }
    for b in &cfg.binfmt {
        if is_native(b) {
            eprintln!(
                "minke agent binfmt: skipping `{}`: it matches this machine's own binaries",
                b.name
            );
            continue;
        }
        match register(Path::new(BINFMT_DIR), b) {
            Ok(()) => eprintln!(
                "minke agent binfmt: registered `{}` -> {}",
                b.name, b.interpreter
            ),
            Err(e) => {
                eprintln!("minke agent binfmt: {e}");
                failed += 1;
            }
        }
    }
    crate::notify_ready("binfmt");
    i32::from(failed > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn aarch64() -> Binfmt {
        // Debian's qemu-aarch64 magic and mask (ELF64, little endian, e_machine 183).
        let magic =
            b"\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xb7\x00".to_vec();
        let mask =
            b"\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff"
                .to_vec();
        Binfmt {
            name: "qemu-aarch64".into(),
            interpreter: "/usr/bin/qemu-aarch64-static".into(),
            magic,
            mask,
            flags: "F".into(),
        }
    }

    #[test]
    fn register_line_escapes_every_byte() {
        let line = register_line(&aarch64());
        assert_eq!(
            line,
            ":qemu-aarch64:M:0:\
             \\x7f\\x45\\x4c\\x46\\x02\\x01\\x01\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x02\\x00\\xb7\\x00:\
             \\xff\\xff\\xff\\xff\\xff\\xff\\xff\\x00\\xff\\xff\\xff\\xff\\xff\\xff\\xff\\xff\\xfe\\xff\\xff\\xff:\
             /usr/bin/qemu-aarch64-static:F"
        );
        // Exactly the 7 field separators, whatever the magic holds.
        let mut b = aarch64();
        b.magic[7] = b':';
        assert_eq!(register_line(&b).matches(':').count(), 7);
    }

    #[test]
    fn validation() {
        assert!(validate(&aarch64()).is_ok());
        let mut b = aarch64();
        b.name = "a:b".into();
        assert!(validate(&b).is_err());
        let mut b = aarch64();
        b.interpreter = "/x:y".into();
        assert!(validate(&b).is_err());
        let mut b = aarch64();
        b.mask.pop();
        assert!(validate(&b).is_err());
        let mut b = aarch64();
        b.flags = "FX".into();
        assert!(validate(&b).is_err());
    }

    #[test]
    fn native_entries_are_detected() {
        assert!(!is_native(&aarch64()));
        let mut x86 = aarch64();
        x86.magic[18] = 62;
        assert_eq!(is_native(&x86), cfg!(target_arch = "x86_64"));
        // Big-endian s390x (e_machine 22) is read big-endian.
        let mut s390 = aarch64();
        s390.magic[5] = 2;
        s390.magic[18] = 0;
        s390.magic[19] = 22;
        assert_eq!(is_native(&s390), cfg!(target_arch = "s390x"));
    }

    #[test]
    fn eexist_removes_and_registers_again() {
        // A fake binfmt_misc directory whose `register` is a FIFO would block; a plain file
        // accepts the write, which is enough to check the happy path writes the line.
        let dir = crate::control::tests::tmpdir("binfmt");
        std::fs::write(dir.join("register"), "").unwrap();
        register(&dir, &aarch64()).unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.join("register")).unwrap(),
            register_line(&aarch64())
        );
    }
}
