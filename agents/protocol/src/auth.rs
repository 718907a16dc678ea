//! The per-VM secret and the proofs of it that open every host↔guest conversation.
//!
//! The host shim makes [`SECRET_LEN`] random bytes for each boot, keeps them in a 0600 file of
//! the VM's state directory and hands them to QEMU as the firmware config file
//! [`FW_CFG_NAME`]; in the guest only root can read them ([`FW_CFG_SYSFS_PATH`], mode 0400).
//! Nothing else carries them: not the kernel command line, not the image, not a log.
//!
//! Each proof is HMAC-SHA256 of the secret over a purpose label and, where the verifier
//! picked one, its nonce, so a proof made for one purpose never passes for another:
//! - **control**: the host's `Hello` carries a fresh nonce and the host's proof over it
//!   ([`Purpose::Control`]); the agent refuses a connection without it. The agent's `Welcome`
//!   proves the secret over the same nonce ([`Purpose::ControlAgent`]), so the host never
//!   takes an answer (an exit status, a file) from something else on the control port.
//! - **time sync**: the guest's `Hello` carries a fresh random nonce and the guest's proof
//!   over it ([`Purpose::TimeGuest`]), so the host's time server answers holders only; the
//!   host's `Welcome` carries the host's proof over the same nonce ([`Purpose::TimeHost`]), so
//!   the guest takes time only from the holder, whoever else listens on the time port.
//! - **readiness** ([`Purpose::Ready`]): PID1's ready line on the console ends with a tag
//!   of the secret ([`Secret::ready_line`]), so a service printing `minke: ready` does not
//!   make the host think the guest is ready.
//!
//! What it protects: guests on hosts where `/dev/vhost-vsock` is usable, where every host
//! process reaches every guest CID; and the time sync port, which any host process could
//! listen on first. On the vhost-user and serial transports the Unix sockets live in the
//! 0700 state directory as well.

use hmac::digest::KeyInit;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Length of the per-VM secret, of a nonce and of a proof.
pub const SECRET_LEN: usize = 32;
/// Name of the firmware config file that carries the secret (`-fw_cfg name=…,file=…`).
pub const FW_CFG_NAME: &str = "opt/minke/secret";
/// Where the guest kernel's `qemu_fw_cfg` driver shows that file (mode 0400, root only).
pub const FW_CFG_SYSFS_PATH: &str = "/sys/firmware/qemu_fw_cfg/by_name/opt/minke/secret/raw";

/// What a proof is for; each purpose is a different HMAC label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// The host opens a control-agent connection (over the host's nonce).
    Control,
    /// The control agent answers the host's `Hello` (over the host's nonce).
    ControlAgent,
    /// The guest opens a time sync connection (over the guest's nonce).
    TimeGuest,
    /// The host answers a time sync `Hello` (over the guest's nonce).
    TimeHost,
    /// PID1 says on the console that the guest is ready.
    Ready,
}

impl Purpose {
    fn label(self) -> &'static [u8] {
        match self {
            Purpose::Control => b"minke control v1\0",
            Purpose::ControlAgent => b"minke control agent v1\0",
            Purpose::TimeGuest => b"minke timesync guest v1\0",
            Purpose::TimeHost => b"minke timesync host v1\0",
            Purpose::Ready => b"minke ready v1\0",
        }
    }
}

/// A proof of the secret (an HMAC-SHA256 tag).
pub type Proof = [u8; SECRET_LEN];

/// The secret bytes had the wrong length.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the VM secret is {0} bytes long, expected {SECRET_LEN}")]
pub struct BadSecret(pub usize);

/// A VM's secret. Its `Debug` form does not show the bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret([u8; SECRET_LEN]);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(…)")
    }
}

impl Secret {
    /// The secret made of exactly [`SECRET_LEN`] bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Secret, BadSecret> {
        <[u8; SECRET_LEN]>::try_from(bytes)
            .map(Secret)
            .map_err(|_| BadSecret(bytes.len()))
    }

    /// The raw bytes (for the 0600 file the host hands to QEMU).
    pub fn as_bytes(&self) -> &[u8; SECRET_LEN] {
        &self.0
    }

    fn mac(&self, purpose: Purpose, nonce: &[u8]) -> Hmac<Sha256> {
        // HMAC pads a short key with zeros to the hash's block size; doing it here makes the
        // key a fixed-size array, and the construction infallible.
        let mut key = [0u8; 64];
        key[..SECRET_LEN].copy_from_slice(&self.0);
        let mut m = <Hmac<Sha256> as KeyInit>::new(&key.into());
        m.update(purpose.label());
        m.update(nonce);
        m
    }

    /// The proof for `purpose` over `nonce` (empty where the purpose has none).
    pub fn proof(&self, purpose: Purpose, nonce: &[u8]) -> Proof {
        self.mac(purpose, nonce).finalize().into_bytes().into()
    }

    /// Whether `proof` is this secret's proof for `purpose` over `nonce` (in constant time).
    pub fn verify(&self, purpose: Purpose, nonce: &[u8], proof: &[u8]) -> bool {
        self.mac(purpose, nonce).verify_slice(proof).is_ok()
    }

    /// The console line PID1 prints once the guest is ready: [`crate::READY_MARKER`], a
    /// space, and a 128-bit tag of the secret in hex. Only a holder of the secret can print it.
    pub fn ready_line(&self) -> String {
        let tag = self.proof(Purpose::Ready, &[]);
        let mut s = String::with_capacity(crate::READY_MARKER.len() + 33);
        s.push_str(crate::READY_MARKER);
        s.push(' ');
        for b in &tag[..16] {
            s.push(char::from(b"0123456789abcdef"[usize::from(b >> 4)]));
            s.push(char::from(b"0123456789abcdef"[usize::from(b & 15)]));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(b: u8) -> Secret {
        Secret::from_bytes(&[b; SECRET_LEN]).unwrap()
    }

    #[test]
    fn proofs_differ_by_secret_purpose_and_nonce() {
        let (a, b) = (secret(1), secret(2));
        let n = [7u8; SECRET_LEN];
        let p = a.proof(Purpose::TimeHost, &n);
        assert!(a.verify(Purpose::TimeHost, &n, &p));
        assert!(!b.verify(Purpose::TimeHost, &n, &p));
        assert!(!a.verify(Purpose::TimeGuest, &n, &p));
        assert!(!a.verify(Purpose::TimeHost, &[8u8; SECRET_LEN], &p));
        assert!(!a.verify(Purpose::TimeHost, &n, &p[..31]));
        assert_ne!(a.proof(Purpose::Control, &[]), a.proof(Purpose::Ready, &[]));
    }

    #[test]
    fn hmac_sha256_matches_rfc_4231() {
        // RFC 4231 test case 2 through the same construction: key "Jefe" is not 32 bytes, so
        // check the primitive directly with the label as the whole message.
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(b"Jefe").unwrap();
        m.update(b"what do ya want for nothing?");
        let tag: [u8; 32] = m.finalize().into_bytes().into();
        assert_eq!(
            hex(&tag),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        // And the zero-padded key of `mac` is the same key as the unpadded one.
        let s = secret(5);
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(&[5u8; SECRET_LEN]).unwrap();
        m.update(Purpose::Control.label());
        let tag: [u8; 32] = m.finalize().into_bytes().into();
        assert_eq!(tag, s.proof(Purpose::Control, &[]));
    }

    fn hex(b: &[u8]) -> String {
        b.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn ready_line_is_the_marker_and_a_tag() {
        let l = secret(3).ready_line();
        assert!(l.starts_with("minke: ready "));
        assert_eq!(l.len(), "minke: ready ".len() + 32);
        assert_ne!(l, secret(4).ready_line());
        assert_eq!(l, secret(3).ready_line());
    }

    #[test]
    fn wrong_lengths_are_refused_and_debug_hides_bytes() {
        assert_eq!(Secret::from_bytes(&[0; 31]), Err(BadSecret(31)));
        assert_eq!(format!("{:?}", secret(9)), "Secret(…)");
    }
}
