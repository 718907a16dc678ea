//! Stand-in guest agent for the boot tests: serves the control conversations on vsock port
//! 1024 and runs a time sync client to host port 1025, from the same protocol crate as the real
//! agents. It runs as PID1 (exec'd by a busybox script that loads the modules).

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use minke_protocol::msg::{ExecRequest, ForwardTarget, InfoReply};
use minke_protocol::wire::{read_frame, write_frame, MAX_CHUNK};
use minke_protocol::{GuestMsg, HostMsg, PROTOCOL_VERSION};
use vsock::{VsockListener, VsockStream, VMADDR_CID_ANY};

type Shared = Arc<Mutex<VsockStream>>;

fn send(w: &Shared, m: &GuestMsg) -> io::Result<()> {
    let mut g = w.lock().unwrap_or_else(|p| p.into_inner());
    write_frame(&mut *g, m).map_err(io::Error::other)
}

fn main() {
    std::thread::spawn(timesync);
    let l = VsockListener::bind_with_cid_port(VMADDR_CID_ANY, 1024).expect("bind 1024");
    println!("{}", minke_protocol::READY_MARKER);
    for s in l.incoming().flatten() {
        std::thread::spawn(move || {
            if let Err(e) = serve(s) {
                eprintln!("test-guest: {e}");
            }
        });
    }
}

fn timesync() {
    let mut s = loop {
        match VsockStream::connect_with_cid_port(2, 1025) {
            Ok(s) => break s,
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    };
    let _ = write_frame(
        &mut s,
        &GuestMsg::Hello {
            version: PROTOCOL_VERSION,
            client: "timesync".into(),
        },
    );
    let _ = read_frame::<_, HostMsg>(&mut s);
    let mut seq = 0;
    loop {
        seq += 1;
        let t1 = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as i64;
        if write_frame(&mut s, &GuestMsg::TimeRequest { seq, t1 }).is_err() {
            return;
        }
        // A reply, or a Resumed push followed by the reply.
        loop {
            match read_frame::<_, HostMsg>(&mut s) {
                Ok(HostMsg::TimeReply { .. }) => break,
                Ok(HostMsg::Resumed) => println!("test-guest: resumed"),
                _ => return,
            }
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn serve(mut s: VsockStream) -> io::Result<()> {
    let e = io::Error::other;
    match read_frame::<_, HostMsg>(&mut s).map_err(e)? {
        HostMsg::Hello { .. } => {}
        _ => return Ok(()),
    }
    write_frame(
        &mut s,
        &GuestMsg::Welcome {
            version: PROTOCOL_VERSION,
            agent: "test-guest".into(),
        },
    )
    .map_err(e)?;
    let req = match read_frame::<_, HostMsg>(&mut s) {
        Ok(r) => r,
        Err(_) => return Ok(()),
    };
    let w: Shared = Arc::new(Mutex::new(s.try_clone()?));
    let result = match req {
        HostMsg::Exec(r) => exec(s, &w, r),
        HostMsg::PutFile { path, mode } => {
            let data = collect(&mut s)?;
            let tmp = format!("{path}.part");
            std::fs::write(&tmp, data)
                .and_then(|()| {
                    use std::os::unix::fs::PermissionsExt;
                    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))
                })
                .and_then(|()| std::fs::rename(&tmp, &path))
                .and_then(|()| send(&w, &GuestMsg::Ok))
        }
        HostMsg::PutTree { dest } => {
            let data = collect(&mut s)?;
            std::fs::create_dir_all(&dest)
                .and_then(|()| tar::Archive::new(&data[..]).unpack(&dest))
                .and_then(|()| send(&w, &GuestMsg::Ok))
        }
        HostMsg::GetFile { path } => std::fs::read(&path).and_then(|b| data(&w, &b)),
        HostMsg::GetTree { path } => {
            let mut b = tar::Builder::new(Vec::new());
            b.append_dir_all(".", &path)
                .and_then(|()| b.into_inner())
                .and_then(|t| data(&w, &t))
        }
        HostMsg::Info => {
            let boot = r#"{"events":[{"boottime_ns":1000000000,"what":"pid1"},{"boottime_ns":1500000000,"what":"ready"}]}"#;
            send(
                &w,
                &GuestMsg::Info(InfoReply {
                    agent: "test-guest".into(),
                    boot_json: boot.into(),
                    ..Default::default()
                }),
            )
        }
        HostMsg::Logs { .. } => data(&w, b"no logs here\n"),
        HostMsg::Power(_) => {
            send(&w, &GuestMsg::Ok)?;
            Command::new("/bin/busybox")
                .args(["poweroff", "-f"])
                .status()
                .map(drop)
        }
        HostMsg::Forward(ForwardTarget::Tcp(port)) => return forward(s, port),
        _ => send(
            &w,
            &GuestMsg::Error("not supported by the test guest".into()),
        ),
    };
    if let Err(err) = result {
        send(&w, &GuestMsg::Error(err.to_string()))?;
    }
    Ok(())
}

/// Reads `Data` frames until `End`.
fn collect(s: &mut VsockStream) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        match read_frame::<_, HostMsg>(s).map_err(io::Error::other)? {
            HostMsg::Data(b) => out.extend_from_slice(&b),
            HostMsg::End => break,
            _ => return Err(io::Error::other("expected Data or End")),
        }
    }
    Ok(out)
}

fn data(w: &Shared, bytes: &[u8]) -> io::Result<()> {
    for c in bytes.chunks(MAX_CHUNK) {
        send(w, &GuestMsg::Data(c.to_vec()))?;
    }
    send(w, &GuestMsg::End)
}

fn exec(mut s: VsockStream, w: &Shared, r: ExecRequest) -> io::Result<()> {
    let mut cmd = Command::new(&r.argv[0]);
    cmd.args(&r.argv[1..])
        .envs(r.env.iter().cloned())
        .env("PATH", "/bin");
    cmd.current_dir(r.cwd.as_deref().unwrap_or("/"));
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(err) => return send(w, &GuestMsg::Error(format!("{}: {err}", r.argv[0]))),
    };
    send(w, &GuestMsg::Started { pid: child.id() })?;
    let mut stdin = child.stdin.take();
    std::thread::spawn(move || loop {
        match read_frame::<_, HostMsg>(&mut s) {
            Ok(HostMsg::Stdin(b)) => {
                if let Some(i) = stdin.as_mut() {
                    let _ = i.write_all(&b);
                }
            }
            Ok(HostMsg::StdinEof) => drop(stdin.take()),
            _ => return,
        }
    });
    let pump = |mut r: Box<dyn Read + Send>, out: bool, w: Shared| {
        std::thread::spawn(move || {
            let mut buf = vec![0u8; MAX_CHUNK];
            while let Ok(n) = r.read(&mut buf) {
                if n == 0 {
                    break;
                }
                let b = buf[..n].to_vec();
                let _ = send(
                    &w,
                    &if out {
                        GuestMsg::Stdout(b)
                    } else {
                        GuestMsg::Stderr(b)
                    },
                );
            }
        })
    };
    let o = pump(Box::new(child.stdout.take().unwrap()), true, w.clone());
    let e = pump(Box::new(child.stderr.take().unwrap()), false, w.clone());
    let status = child.wait()?;
    let _ = o.join();
    let _ = e.join();
    use std::os::unix::process::ExitStatusExt;
    let code = status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0));
    send(w, &GuestMsg::Exit { code })
}

fn forward(s: VsockStream, port: u16) -> io::Result<()> {
    let mut w = s.try_clone()?;
    let t = match TcpStream::connect(("127.0.0.1", port)) {
        Ok(t) => t,
        Err(err) => {
            return write_frame(&mut w, &GuestMsg::Error(err.to_string())).map_err(io::Error::other)
        }
    };
    write_frame(&mut w, &GuestMsg::Ok).map_err(io::Error::other)?;
    let (mut tr, mut tw) = (t.try_clone()?, t);
    let mut sr = s;
    let up = std::thread::spawn(move || {
        let _ = io::copy(&mut sr, &mut tw);
        let _ = tw.shutdown(std::net::Shutdown::Write);
    });
    let _ = io::copy(&mut tr, &mut w);
    // The target closed: close the whole connection (hybrid vsock does not carry half-closes).
    let _ = w.shutdown(std::net::Shutdown::Both);
    let _ = up.join();
    Ok(())
}
