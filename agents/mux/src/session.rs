//! The session with the peer: the guest asks for one with `Hello` and a fresh nonce, the host
//! answers `Welcome` or `Error`; a frame that breaks the protocol ends the session in progress
//! and the search for the next one starts.

use minke_protocol::mux::{MuxFrame, MUX_VERSION};

use crate::state::{Shared, State};
use crate::Role;

/// A nonce that differs between the sessions of one process and between processes: the time
/// in nanoseconds mixed with the process id. It only has to tell a session's `Welcome` from
/// stale ones, not resist guessing.
fn fresh_nonce() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    t ^ (u64::from(std::process::id()) << 40)
}

pub(crate) fn new_guest_session(st: &mut State) {
    st.nonce = fresh_nonce();
    st.refused = None;
    st.send_session = Some(MuxFrame::Hello {
        version: MUX_VERSION,
        nonce: st.nonce,
    });
}

/// A frame that breaks the protocol: the session in progress ends. The guest asks for a new
/// one; the host sends the padding alone, which ends the guest's session if it still believes
/// in it (the guest then asks for a new one).
pub(crate) fn protocol_error(sh: &Shared, what: &str) {
    let mut st = sh.lock();
    st.stats.protocol_errors += 1;
    st.stats.last_error = Some(what.to_owned());
    if !st.up {
        return; // already looking for a session marker
    }
    st.end_session();
    match sh.role {
        Role::Guest => new_guest_session(&mut st),
        Role::Host => st.send_pad = true,
    }
    sh.wake();
}

/// Applies a session frame from the peer (`Hello`, `Welcome` or `Error`; other frames are not
/// this module's). Returns `false` when the frame is dropped untouched (a `Hello` to the
/// guest, a stale `Welcome`), so nobody needs waking.
pub(crate) fn on_frame(role: Role, st: &mut State, f: MuxFrame) -> bool {
    match f {
        MuxFrame::Hello { version, nonce } => {
            if role != Role::Host {
                return false;
            }
            st.end_session();
            if version == MUX_VERSION {
                st.up = true;
                st.stats.sessions += 1;
                st.send_session = Some(MuxFrame::Welcome {
                    version: MUX_VERSION,
                    nonce,
                });
            } else {
                st.send_session = Some(MuxFrame::Error(format!(
                    "the guest speaks multiplexer version {version}, the host {MUX_VERSION}: \
                     use a host and image built from the same minke"
                )));
            }
        }
        MuxFrame::Welcome { version, nonce } => {
            if role != Role::Guest || st.up || nonce != st.nonce {
                return false; // stale
            }
            if version == MUX_VERSION {
                st.up = true;
                st.stats.sessions += 1;
            } else {
                st.refused = Some(format!(
                    "the host speaks multiplexer version {version}, the guest {MUX_VERSION}"
                ));
            }
        }
        MuxFrame::Error(msg) => {
            if role == Role::Guest && !st.up {
                st.refused = Some(msg);
            }
        }
        _ => return false,
    }
    true
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::os::unix::net::UnixStream;
    use std::time::Duration;

    use minke_protocol::mux::{encode, session_bytes, MuxFrame, DEFAULT_WINDOW};

    use crate::testutil::{echo_acceptor, line, RawPeer};
    use crate::{Mux, Role};

    #[test]
    fn version_mismatch_is_refused_with_a_message() {
        let (h, g) = UnixStream::pair().unwrap();
        let _host = Mux::start(Role::Host, line(h), echo_acceptor()).unwrap();
        let mut raw = RawPeer::new(g);
        raw.s
            .write_all(
                &session_bytes(&MuxFrame::Hello {
                    version: 99,
                    nonce: 1,
                })
                .unwrap(),
            )
            .unwrap();
        match raw.next() {
            MuxFrame::Error(m) => assert!(m.contains("version 99"), "{m}"),
            f => panic!("{f:?}"),
        }
        raw.hello(2);
    }

    /// A guest restarted in the middle of a frame: the host resets every stream of the old
    /// session and welcomes the new one.
    #[test]
    fn guest_restart_mid_frame_starts_a_new_session() {
        let (h, g) = UnixStream::pair().unwrap();
        let host = Mux::start(Role::Host, line(h), echo_acceptor()).unwrap();
        let mut raw = RawPeer::new(g);
        raw.hello(1);
        // The old session opens a stream to the host, then dies halfway through a data frame.
        raw.send(&MuxFrame::Open {
            id: 2,
            port: 1025,
            window: 1 << 16,
        });
        assert_eq!(
            raw.next(),
            MuxFrame::Accept {
                id: 2,
                window: DEFAULT_WINDOW
            }
        );
        let half = encode(&MuxFrame::Data {
            id: 2,
            bytes: vec![1; 20_000],
        })
        .unwrap();
        raw.s.write_all(&half[..5000]).unwrap();
        let mut old = host.connect(1, Duration::from_millis(1)).err();
        assert!(old.take().is_some(), "the raw guest answers nothing");
        // A new session: the padding completes the broken frame, the host resets and answers.
        raw.dec = minke_protocol::mux::MuxDecoder::new();
        raw.hello(2);
        assert_eq!(host.stats().sessions, 2);
        assert!(host.stats().protocol_errors >= 1);
        assert_eq!(host.stats().streams, 0);
    }
}
