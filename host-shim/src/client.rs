//! The host's half of each control-agent conversation (see `minke_protocol::msg`), over any
//! [`Duplex`] stream, so tests can drive it with Unix socket pairs.

use std::io::{self, Read, Write};

use minke_protocol::msg::{ExecRequest, ForwardTarget, InfoReply, PowerAction};
use minke_protocol::wire::{read_frame, write_frame, FrameError, MAX_CHUNK};
use minke_protocol::{GuestMsg, HostMsg, Purpose, Secret, PROTOCOL_VERSION};

use crate::transport::Duplex;

/// A conversation with the control agent failed.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// Framing or transport failure.
    #[error("talking to the guest agent failed")]
    Frame(#[from] FrameError),
    /// The agent refused or failed the request.
    #[error("the guest agent said: {0}")]
    Guest(String),
    /// Whatever answered on the control port does not hold the VM's secret.
    #[error(
        "the answer on the control port does not prove this VM's secret: it is not minke's \
         control agent, so nothing it says is taken"
    )]
    Impostor,
    /// The agent answered out of turn.
    #[error("protocol error: expected {expected}, got {got} (are host and guest the same minke version?)")]
    Unexpected {
        /// What the conversation allows here.
        expected: &'static str,
        /// What arrived.
        got: String,
    },
    /// A local stream (stdin, stdout, a file) failed.
    #[error("{what}")]
    Local {
        /// Which stream.
        what: &'static str,
        /// OS error.
        source: io::Error,
    },
}

fn unexpected(expected: &'static str, got: &GuestMsg) -> AgentError {
    match got {
        GuestMsg::Error(e) => AgentError::Guest(e.clone()),
        m => {
            let s = format!("{m:?}");
            AgentError::Unexpected {
                expected,
                got: s.chars().take(80).collect(),
            }
        }
    }
}

/// Where an exec's stdin comes from.
pub enum Stdin {
    /// Closed at once.
    Null,
    /// These bytes, then EOF.
    Bytes(Vec<u8>),
    /// Read until EOF on a separate thread (a terminal, a pipe, a file).
    Reader(Box<dyn Read + Send>),
}

/// Output of [`crate::Vm::exec_output`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    /// Exit code, or 128 + signal number.
    pub code: i32,
    /// Everything written to stdout.
    pub stdout: Vec<u8>,
    /// Everything written to stderr.
    pub stderr: Vec<u8>,
}

/// 32 random bytes from the kernel (a nonce, a VM secret).
pub(crate) fn random32() -> io::Result<[u8; 32]> {
    let mut b = [0u8; 32];
    let mut filled = 0;
    while filled < b.len() {
        match rustix::rand::getrandom(&mut b[filled..], rustix::rand::GetRandomFlags::empty()) {
            Ok(n) => filled += n,
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(b)
}

/// Sends `Hello` with a fresh nonce and the proof of `secret` over it, and expects a
/// `Welcome` proving the secret over the same nonce; returns the agent's version string.
pub fn handshake(s: &mut dyn Duplex, client: &str, secret: &Secret) -> Result<String, AgentError> {
    handshake_with(s, client, secret, None)
}

/// Like [`handshake`], with `request` sent right behind `Hello` (in the same write) instead of
/// after `Welcome`: the agent reads it once it has answered, and the host saves a round trip.
/// If the agent refuses the `Hello`, it closes the connection without reading the request.
pub fn handshake_with(
    mut s: &mut dyn Duplex,
    client: &str,
    secret: &Secret,
    request: Option<&HostMsg>,
) -> Result<String, AgentError> {
    let nonce = random32().map_err(|source| AgentError::Local {
        what: "cannot make a nonce (getrandom)",
        source,
    })?;
    let mut out = Vec::new();
    write_frame(
        &mut out,
        &HostMsg::Hello {
            version: PROTOCOL_VERSION,
            client: client.into(),
            nonce,
            proof: secret.proof(Purpose::Control, &nonce),
        },
    )?;
    if let Some(r) = request {
        write_frame(&mut out, r)?;
    }
    s.write_all(&out).map_err(FrameError::Io)?;
    match read_frame::<_, GuestMsg>(&mut s)? {
        GuestMsg::Welcome {
            version,
            agent,
            proof,
        } if version == PROTOCOL_VERSION => {
            if secret.verify(Purpose::ControlAgent, &nonce, &proof) {
                Ok(agent)
            } else {
                Err(AgentError::Impostor)
            }
        }
        GuestMsg::Welcome { version, .. } => Err(AgentError::Guest(format!(
            "agent speaks protocol version {version}, this host speaks {PROTOCOL_VERSION}: \
             rebuild the image with this minke"
        ))),
        m => Err(unexpected("Welcome", &m)),
    }
}

/// Runs one exec on a handshaken connection, streaming both ways.
pub fn exec(
    mut s: Box<dyn Duplex>,
    req: ExecRequest,
    stdin: Stdin,
    stdout: &mut dyn Write,
    stderr: &mut dyn Write,
) -> Result<i32, AgentError> {
    write_frame(&mut s, &HostMsg::Exec(req))?;
    exec_sent(s, stdin, stdout, stderr)
}

/// [`exec`] once the `Exec` request is sent (with [`handshake_with`]).
pub fn exec_sent(
    mut s: Box<dyn Duplex>,
    stdin: Stdin,
    stdout: &mut dyn Write,
    stderr: &mut dyn Write,
) -> Result<i32, AgentError> {
    match read_frame::<_, GuestMsg>(&mut s)? {
        GuestMsg::Started { .. } => {}
        m => return Err(unexpected("Started", &m)),
    }
    let mut w = s.try_clone_box().map_err(|source| AgentError::Local {
        what: "socket",
        source,
    })?;
    let pump = move || -> Result<(), FrameError> {
        match stdin {
            Stdin::Null => {}
            Stdin::Bytes(b) => {
                for c in b.chunks(MAX_CHUNK) {
                    write_frame(&mut w, &HostMsg::Stdin(c.to_vec()))?;
                }
            }
            Stdin::Reader(mut r) => {
                let mut buf = vec![0u8; MAX_CHUNK];
                loop {
                    match r.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => write_frame(&mut w, &HostMsg::Stdin(buf[..n].to_vec()))?,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(e.into()),
                    }
                }
            }
        }
        write_frame(&mut w, &HostMsg::StdinEof)
    };
    // Detached on purpose: a terminal stdin may block long after the process ended; a write
    // error after the exit is harmless.
    std::thread::Builder::new()
        .name("minke-exec-stdin".into())
        .spawn(move || drop(pump()))
        .map_err(|source| AgentError::Local {
            what: "stdin thread",
            source,
        })?;
    loop {
        match read_frame::<_, GuestMsg>(&mut s)? {
            GuestMsg::Stdout(b) => {
                stdout
                    .write_all(&b)
                    .and_then(|()| stdout.flush())
                    .map_err(|source| AgentError::Local {
                        what: "writing stdout",
                        source,
                    })?
            }
            GuestMsg::Stderr(b) => {
                stderr
                    .write_all(&b)
                    .and_then(|()| stderr.flush())
                    .map_err(|source| AgentError::Local {
                        what: "writing stderr",
                        source,
                    })?
            }
            GuestMsg::Exit { code } => return Ok(code),
            m => return Err(unexpected("Stdout, Stderr or Exit", &m)),
        }
    }
}

/// Sends `head` (`PutFile`/`PutTree`), then `src` as `Data` chunks and `End`; waits for `Ok`.
pub fn put(mut s: &mut dyn Duplex, head: HostMsg, src: &mut dyn Read) -> Result<(), AgentError> {
    write_frame(&mut s, &head)?;
    let mut buf = vec![0u8; MAX_CHUNK];
    loop {
        let n = match src.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(source) => {
                return Err(AgentError::Local {
                    what: "reading the source",
                    source,
                })
            }
        };
        write_frame(&mut s, &HostMsg::Data(buf[..n].to_vec()))?;
    }
    write_frame(&mut s, &HostMsg::End)?;
    match read_frame::<_, GuestMsg>(&mut s)? {
        GuestMsg::Ok => Ok(()),
        m => Err(unexpected("Ok", &m)),
    }
}

/// Sends `head` (`GetFile`/`GetTree`/`Logs`) and copies the `Data` chunks to `dst` until `End`.
pub fn get(mut s: &mut dyn Duplex, head: HostMsg, dst: &mut dyn Write) -> Result<u64, AgentError> {
    write_frame(&mut s, &head)?;
    let mut total = 0;
    loop {
        match read_frame::<_, GuestMsg>(&mut s)? {
            GuestMsg::Data(b) => {
                dst.write_all(&b).map_err(|source| AgentError::Local {
                    what: "writing the destination",
                    source,
                })?;
                total += b.len() as u64;
            }
            GuestMsg::End => return Ok(total),
            m => return Err(unexpected("Data or End", &m)),
        }
    }
}

/// A reader over the `Data` frames of a get conversation (for unpacking a tar on the fly).
pub struct DataReader<'a> {
    s: &'a mut dyn Duplex,
    buf: Vec<u8>,
    pos: usize,
    done: bool,
}

impl<'a> DataReader<'a> {
    /// Sends `head` and returns a reader of the reply's data.
    pub fn start(mut s: &'a mut dyn Duplex, head: HostMsg) -> Result<Self, AgentError> {
        write_frame(&mut s, &head)?;
        Ok(DataReader {
            s,
            buf: Vec::new(),
            pos: 0,
            done: false,
        })
    }
}

impl Read for DataReader<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.buf.len() && !self.done {
            match read_frame::<_, GuestMsg>(&mut self.s).map_err(io::Error::other)? {
                GuestMsg::Data(b) => {
                    self.buf = b;
                    self.pos = 0;
                }
                GuestMsg::End => self.done = true,
                m => return Err(io::Error::other(unexpected("Data or End", &m))),
            }
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Asks for agent and boot information.
pub fn info(mut s: &mut dyn Duplex) -> Result<InfoReply, AgentError> {
    write_frame(&mut s, &HostMsg::Info)?;
    match read_frame::<_, GuestMsg>(&mut s)? {
        GuestMsg::Info(i) => Ok(i),
        m => Err(unexpected("Info", &m)),
    }
}

/// Asks PID1 to power off or reboot.
pub fn power(mut s: &mut dyn Duplex, action: PowerAction) -> Result<(), AgentError> {
    write_frame(&mut s, &HostMsg::Power(action))?;
    match read_frame::<_, GuestMsg>(&mut s)? {
        GuestMsg::Ok => Ok(()),
        m => Err(unexpected("Ok", &m)),
    }
}

/// Turns a handshaken connection into a raw pipe to `target`.
pub fn forward(mut s: &mut dyn Duplex, target: ForwardTarget) -> Result<(), AgentError> {
    write_frame(&mut s, &HostMsg::Forward(target))?;
    match read_frame::<_, GuestMsg>(&mut s)? {
        GuestMsg::Ok => Ok(()),
        m => Err(unexpected("Ok", &m)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    fn secret() -> Secret {
        Secret::from_bytes(&[0x44; 32]).unwrap()
    }

    /// A fake agent on the other end: reads the Hello, answers with `welcome(nonce)`, then
    /// claims the exec succeeded.
    fn fake_agent(
        mut g: UnixStream,
        welcome: impl Fn(&[u8; 32]) -> [u8; 32] + Send + 'static,
    ) -> std::thread::JoinHandle<()> {
        std::thread::spawn(move || {
            let nonce = match read_frame::<_, HostMsg>(&mut g).unwrap() {
                HostMsg::Hello { nonce, proof, .. } => {
                    assert!(secret().verify(Purpose::Control, &nonce, &proof));
                    nonce
                }
                m => panic!("{m:?}"),
            };
            let _ = write_frame(
                &mut g,
                &GuestMsg::Welcome {
                    version: PROTOCOL_VERSION,
                    agent: "fake".into(),
                    proof: welcome(&nonce),
                },
            );
            let _ = write_frame(&mut g, &GuestMsg::Started { pid: 1 });
            let _ = write_frame(&mut g, &GuestMsg::Exit { code: 0 });
        })
    }

    /// Something on the control port that cannot prove the secret over this connection's
    /// nonce is not believed: no exit status comes from it.
    #[test]
    fn an_answer_without_the_secret_is_not_believed() {
        let (mut h, g) = UnixStream::pair().unwrap();
        let t = fake_agent(g, |_| [0; 32]);
        let e = handshake_with(&mut h, "t", &secret(), None).unwrap_err();
        assert!(matches!(e, AgentError::Impostor), "{e}");
        t.join().unwrap();

        // A Welcome replayed from another connection (another nonce) fails the same way.
        let (mut h, g) = UnixStream::pair().unwrap();
        let t = fake_agent(g, |_| secret().proof(Purpose::ControlAgent, &[9; 32]));
        let e = handshake_with(&mut h, "t", &secret(), None).unwrap_err();
        assert!(matches!(e, AgentError::Impostor), "{e}");
        t.join().unwrap();

        // The holder's Welcome over this connection's nonce is taken.
        let (mut h, g) = UnixStream::pair().unwrap();
        let t = fake_agent(g, |n| secret().proof(Purpose::ControlAgent, n));
        assert_eq!(
            handshake_with(&mut h, "t", &secret(), None).unwrap(),
            "fake"
        );
        t.join().unwrap();
    }

    #[test]
    fn nonces_are_fresh() {
        assert_ne!(random32().unwrap(), random32().unwrap());
    }
}
