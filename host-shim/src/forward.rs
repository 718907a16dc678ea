//! Host listeners whose accepted connections are piped to a guest socket through the control
//! agent's `Forward` conversation.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use minke_protocol::msg::ForwardTarget;
use minke_protocol::{Secret, CONTROL_PORT};

use crate::client;
use crate::transport::{Connector, Duplex};

/// Where the host listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ForwardListen {
    /// A TCP address (port 0 picks a free port).
    Tcp(SocketAddr),
    /// A Unix socket path (replaced if it exists).
    Unix(PathBuf),
}

/// A running forward; stops accepting on drop (connections already piped live on).
#[derive(Debug)]
pub struct Forwarder {
    local: ForwardListen,
    stop: Arc<AtomicBool>,
}

impl Forwarder {
    /// Where it listens (with the real port when 0 was asked).
    pub fn local(&self) -> &ForwardListen {
        &self.local
    }

    pub(crate) fn start(
        listen: ForwardListen,
        connector: Connector,
        secret: Secret,
        target: ForwardTarget,
    ) -> io::Result<Forwarder> {
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let local = match listen {
            ForwardListen::Tcp(addr) => {
                let l = TcpListener::bind(addr)?;
                let local = ForwardListen::Tcp(l.local_addr()?);
                spawn_acceptor(
                    move || l.accept().map(|(s, _)| Client::Tcp(s)),
                    stop2,
                    connector,
                    secret,
                    target,
                )?;
                local
            }
            ForwardListen::Unix(path) => {
                let _ = std::fs::remove_file(&path);
                let l = UnixListener::bind(&path)?;
                spawn_acceptor(
                    move || l.accept().map(|(s, _)| Client::Unix(s)),
                    stop2,
                    connector,
                    secret,
                    target,
                )?;
                ForwardListen::Unix(path)
            }
        };
        Ok(Forwarder { local, stop })
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the blocked accept so the thread sees the flag.
        match &self.local {
            ForwardListen::Tcp(a) => drop(TcpStream::connect(a)),
            ForwardListen::Unix(p) => {
                drop(UnixStream::connect(p));
                let _ = std::fs::remove_file(p);
            }
        }
    }
}

enum Client {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Client {
    fn halves(&self) -> io::Result<(Box<dyn Read + Send>, Box<dyn Write + Send>)> {
        Ok(match self {
            Client::Tcp(s) => (Box::new(s.try_clone()?), Box::new(s.try_clone()?)),
            Client::Unix(s) => (Box::new(s.try_clone()?), Box::new(s.try_clone()?)),
        })
    }
    fn shutdown_write(&self) {
        let _ = match self {
            Client::Tcp(s) => s.shutdown(Shutdown::Write),
            Client::Unix(s) => s.shutdown(Shutdown::Write),
        };
    }
}

fn spawn_acceptor(
    mut accept: impl FnMut() -> io::Result<Client> + Send + 'static,
    stop: Arc<AtomicBool>,
    connector: Connector,
    secret: Secret,
    target: ForwardTarget,
) -> io::Result<()> {
    std::thread::Builder::new()
        .name("minke-forward".into())
        .spawn(move || loop {
            let c = accept();
            if stop.load(Ordering::SeqCst) {
                return;
            }
            match c {
                Ok(c) => {
                    let (connector, secret, target) =
                        (connector.clone(), secret.clone(), target.clone());
                    let _ = std::thread::Builder::new()
                        .name("minke-forward-conn".into())
                        .spawn(move || {
                            if let Err(e) = pipe(c, &connector, &secret, target) {
                                tracing::warn!("forwarded connection failed: {e}");
                            }
                        });
                }
                Err(e) => tracing::warn!("forward accept failed: {e}"),
            }
        })?;
    Ok(())
}

fn pipe(
    c: Client,
    connector: &Connector,
    secret: &Secret,
    target: ForwardTarget,
) -> Result<(), String> {
    let mut g = connector
        .connect(CONTROL_PORT, std::time::Duration::from_secs(10))
        .map_err(|e| crate::error_chain(&e))?;
    client::handshake(g.as_mut(), "forward", secret).map_err(|e| crate::error_chain(&e))?;
    client::forward(g.as_mut(), target).map_err(|e| crate::error_chain(&e))?;
    let (mut from_client, mut to_client) = c.halves().map_err(|e| crate::error_chain(&e))?;
    let mut to_guest: Box<dyn Duplex> = g.try_clone_box().map_err(|e| crate::error_chain(&e))?;
    let up = std::thread::spawn(move || {
        let _ = io::copy(&mut from_client, &mut to_guest);
        let _ = to_guest.shutdown_write();
    });
    let _ = io::copy(&mut g, &mut to_client);
    c.shutdown_write();
    let _ = up.join();
    Ok(())
}
