//! Development smoke client for the agents in a guest reached through vhost-user vsock
//! (`vhost-device-vsock --uds-path VM.vsock`) whose secret is in the file SECRET (the state
//! directory's `secret`): `smoke_host VM.vsock SECRET control` runs a few control
//! conversations; `smoke_host VM.vsock SECRET timesync SECONDS` serves the time port and
//! prints the guest's apparent offset (host receive time − guest send time) per request.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use minke_protocol::msg::{ExecRequest, ForwardTarget};
use minke_protocol::wire::{read_frame, write_frame, PROTOCOL_VERSION};
use minke_protocol::{GuestMsg, HostMsg, Purpose, Secret};

fn secret() -> Secret {
    let path = std::env::args()
        .nth(2)
        .expect("usage: smoke_host VM.vsock SECRET …");
    Secret::from_bytes(&std::fs::read(path).expect("read the secret")).expect("a secret")
}

fn connect(uds: &str, port: u32) -> UnixStream {
    let mut s = UnixStream::connect(uds).expect("connect uds");
    writeln!(s, "CONNECT {port}").unwrap();
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while b[0] != b'\n' {
        s.read_exact(&mut b).unwrap();
        line.push(b[0]);
    }
    assert!(
        line.starts_with(b"OK"),
        "{}",
        String::from_utf8_lossy(&line)
    );
    write_frame(
        &mut s,
        &HostMsg::Hello {
            version: PROTOCOL_VERSION,
            client: "smoke".into(),
            nonce: [0x5a; 32],
            proof: secret().proof(Purpose::Control, &[0x5a; 32]),
        },
    )
    .unwrap();
    match read_frame::<_, GuestMsg>(&mut s).unwrap() {
        GuestMsg::Welcome { .. } => {}
        other => panic!("{other:?}"),
    }
    s
}

fn exec(uds: &str, argv: &[&str], stdin: Option<&[u8]>) -> (i32, Vec<u8>, Duration) {
    let t = Instant::now();
    let mut s = connect(uds, 1024);
    let req = ExecRequest {
        argv: argv.iter().map(|a| a.to_string()).collect(),
        ..Default::default()
    };
    write_frame(&mut s, &HostMsg::Exec(req)).unwrap();
    if let Some(d) = stdin {
        write_frame(&mut s, &HostMsg::Stdin(d.to_vec())).unwrap();
        write_frame(&mut s, &HostMsg::StdinEof).unwrap();
    }
    let mut out = Vec::new();
    loop {
        match read_frame::<_, GuestMsg>(&mut s) {
            Ok(GuestMsg::Stdout(d)) | Ok(GuestMsg::Stderr(d)) => out.extend(d),
            Ok(GuestMsg::Exit { code }) => return (code, out, t.elapsed()),
            Ok(GuestMsg::Started { .. }) => {}
            Ok(GuestMsg::Error(e)) => return (-1, e.into_bytes(), t.elapsed()),
            other => panic!("{other:?}"),
        }
    }
}

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let uds = args[1].clone();
    match args[3].as_str() {
        "control" => {
            let (c, o, t) = exec(&uds, &["uname", "-r"], None);
            println!(
                "exec uname: code {c} {:?} in {t:?}",
                String::from_utf8_lossy(&o)
            );
            let (c, o, _) = exec(&uds, &["sh", "-c", "kill -9 $$"], None);
            println!("exec kill -9: code {c} {:?}", String::from_utf8_lossy(&o));
            let (c, o, _) = exec(&uds, &["cat"], Some(b"round trip"));
            println!("exec cat: code {c} {:?}", String::from_utf8_lossy(&o));
            let (c, o, _) = exec(&uds, &["nope"], None);
            println!("exec nope: code {c} {:?}", String::from_utf8_lossy(&o));
            let t = Instant::now();
            let hs: Vec<_> = (0..20)
                .map(|i| {
                    let uds = uds.clone();
                    std::thread::spawn(move || {
                        exec(&uds, &["sh", "-c", &format!("echo {i}")], None)
                    })
                })
                .collect();
            let ok = hs
                .into_iter()
                .map(|h| h.join().unwrap())
                .filter(|r| r.0 == 0)
                .count();
            println!("20 concurrent execs: {ok} ok in {:?}", t.elapsed());
            let mut s = connect(&uds, 1024);
            write_frame(
                &mut s,
                &HostMsg::PutFile {
                    path: "/tmp/x/y.txt".into(),
                    mode: 0o640,
                },
            )
            .unwrap();
            write_frame(&mut s, &HostMsg::Data(b"payload".to_vec())).unwrap();
            write_frame(&mut s, &HostMsg::End).unwrap();
            println!("put: {:?}", read_frame::<_, GuestMsg>(&mut s).unwrap());
            let (_, o, _) = exec(
                &uds,
                &["sh", "-c", "stat -c %a /tmp/x/y.txt; cat /tmp/x/y.txt"],
                None,
            );
            println!("after put: {:?}", String::from_utf8_lossy(&o));
            let mut s = connect(&uds, 1024);
            write_frame(&mut s, &HostMsg::Info).unwrap();
            if let GuestMsg::Info(i) = read_frame::<_, GuestMsg>(&mut s).unwrap() {
                println!(
                    "info: agent {} kernel {} boottime {} ms",
                    i.agent,
                    i.kernel,
                    i.boottime_ns / 1_000_000
                );
            }
            let mut s = connect(&uds, 1024);
            write_frame(&mut s, &HostMsg::Forward(ForwardTarget::Tcp(1))).unwrap();
            println!(
                "forward to closed port: {:?}",
                read_frame::<_, GuestMsg>(&mut s).unwrap()
            );
        }
        "timesync" => {
            let secs: u64 = args[4].parse().unwrap();
            let path = format!("{uds}_{}", minke_protocol::TIMESYNC_PORT);
            let _ = std::fs::remove_file(&path);
            let l = UnixListener::bind(&path).unwrap();
            let end = Instant::now() + Duration::from_secs(secs);
            let resume_flag = format!("{uds}.resumed");
            while Instant::now() < end {
                let (mut s, _) = l.accept().unwrap();
                let nonce = match read_frame::<_, GuestMsg>(&mut s) {
                    Ok(GuestMsg::Hello { nonce, .. }) => nonce,
                    other => {
                        println!("bad hello {other:?}");
                        continue;
                    }
                };
                write_frame(
                    &mut s,
                    &HostMsg::Welcome {
                        version: PROTOCOL_VERSION,
                        proof: secret().proof(Purpose::TimeHost, &nonce),
                    },
                )
                .unwrap();
                s.set_read_timeout(Some(Duration::from_millis(100)))
                    .unwrap();
                let start = Instant::now();
                loop {
                    if std::fs::remove_file(&resume_flag).is_ok() {
                        println!("{:8.3} pushing Resumed", start.elapsed().as_secs_f64());
                        write_frame(&mut s, &HostMsg::Resumed).unwrap();
                    }
                    match read_frame::<_, GuestMsg>(&mut s) {
                        Ok(GuestMsg::TimeRequest { seq, t1 }) => {
                            let t2 = now_ns();
                            write_frame(
                                &mut s,
                                &HostMsg::TimeReply {
                                    seq,
                                    t1,
                                    t2,
                                    t3: now_ns(),
                                },
                            )
                            .unwrap();
                            if seq % 8 == 1 {
                                println!(
                                    "{:8.3} seq {seq} apparent offset {:+.3} ms",
                                    start.elapsed().as_secs_f64(),
                                    (t2 - t1) as f64 / 1e6
                                );
                            }
                        }
                        Ok(other) => println!("unexpected {other:?}"),
                        Err(minke_protocol::FrameError::Io(e))
                            if e.kind() == std::io::ErrorKind::WouldBlock => {}
                        Err(e) => {
                            println!("session ended: {e}");
                            break;
                        }
                    }
                    if Instant::now() >= end {
                        break;
                    }
                }
            }
            let _ = BufReader::new(std::io::stdin()).lines();
        }
        _ => panic!("usage"),
    }
}
