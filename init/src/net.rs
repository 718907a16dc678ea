//! The guest's network card, when the host gave it one: the configuration from the firmware
//! config ([`minke_protocol::net`]), virtio-net loaded only then, and the interface set up
//! over rtnetlink — link up, address, default route — with `/etc/resolv.conf` pointing at
//! the host's name server. The messages are built by `netlink-packet-route`; only the
//! kernel's acknowledgements are parsed (`netlink-packet-core`).

use std::net::IpAddr;
use std::time::Duration;

use minke_protocol::config::Module;
use minke_protocol::net::{self, NetConfig};
use netlink_packet_core::{
    Emitable, ErrorBuffer, NetlinkBuffer, NLMSG_ERROR, NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL,
    NLM_F_REQUEST,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{LinkFlags, LinkMessage};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::AddressFamily;
use rustix::net::{netlink, AddressFamily as Af, SocketType};

use crate::console::log;
use crate::modules;

/// How long the card may take to appear once its driver is loaded.
const LINK_WAIT: Duration = Duration::from_secs(2);

/// Sets up the network card if the host gave one; returns the interface name when it did.
pub fn set_up(net_modules: &[Module]) -> Option<String> {
    let bytes = match std::fs::read(net::FW_CFG_SYSFS_PATH) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            crate::console::loud(format_args!("network: cannot read its configuration: {e}"));
            return None;
        }
    };
    let cfg = match NetConfig::decode(&bytes) {
        Ok(c) => c,
        Err(e) => {
            crate::console::loud(format_args!("network: {e}; left down"));
            return None;
        }
    };
    modules::load_all(net_modules, |_, _| {});
    let Some((name, index)) = wait_for_ethernet() else {
        crate::console::loud(format_args!(
            "network: no network interface appeared within {LINK_WAIT:?}"
        ));
        return None;
    };
    match configure(index, &cfg) {
        Ok(()) => {
            log!(
                "network: {name} {}/{} via {}, dns {}",
                cfg.address,
                cfg.prefix,
                cfg.gateway,
                cfg.dns
            );
        }
        Err(e) => {
            crate::console::loud(format_args!("network: {name}: {e}"));
            return None;
        }
    }
    // Replaced, not written through: an image's resolv.conf may be a link elsewhere.
    let _ = std::fs::remove_file("/etc/resolv.conf");
    if let Err(e) = std::fs::write("/etc/resolv.conf", format!("nameserver {}\n", cfg.dns)) {
        log!("network: cannot write /etc/resolv.conf: {e}");
    }
    Some(name)
}

/// The first Ethernet interface (`type` 1 in sysfs) and its index, polled for a bounded time.
fn wait_for_ethernet() -> Option<(String, u32)> {
    let deadline = crate::timeline::now_ms() + LINK_WAIT.as_millis() as u64;
    loop {
        if let Some(found) = ethernet() {
            return Some(found);
        }
        if crate::timeline::now_ms() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn ethernet() -> Option<(String, u32)> {
    let mut found: Vec<(String, u32)> = std::fs::read_dir("/sys/class/net")
        .ok()?
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_str()?.to_owned();
            let read = |f: &str| std::fs::read_to_string(e.path().join(f)).ok();
            (read("type")?.trim() == "1").then_some(())?;
            let index = read("ifindex")?.trim().parse().ok()?;
            Some((name, index))
        })
        .collect();
    found.sort_by_key(|(_, i)| *i);
    found.into_iter().next()
}

/// Link up, the address, the default route: one rtnetlink request each, each acknowledged.
fn configure(index: u32, cfg: &NetConfig) -> Result<(), String> {
    // NETLINK_ROUTE is protocol 0, which `None` passes.
    let fd = rustix::net::socket(Af::NETLINK, SocketType::RAW, None)
        .map_err(|e| format!("netlink socket: {e}"))?;
    let mut link = LinkMessage::default();
    link.header.index = index;
    link.header.flags = LinkFlags::Up;
    link.header.change_mask = LinkFlags::Up;
    request(&fd, 1, libc::RTM_SETLINK, 0, &link).map_err(|e| format!("link up: {e}"))?;

    let mut addr = AddressMessage::default();
    addr.header.family = AddressFamily::Inet;
    addr.header.prefix_len = cfg.prefix;
    addr.header.index = index;
    addr.attributes = vec![
        AddressAttribute::Local(IpAddr::V4(cfg.address)),
        AddressAttribute::Address(IpAddr::V4(cfg.address)),
        AddressAttribute::Broadcast(cfg.broadcast()),
    ];
    request(&fd, 2, libc::RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL, &addr)
        .map_err(|e| format!("address {}/{}: {e}", cfg.address, cfg.prefix))?;

    let mut route = RouteMessage::default();
    route.header.address_family = AddressFamily::Inet;
    route.header.table = RouteHeader::RT_TABLE_MAIN;
    route.header.protocol = RouteProtocol::Boot;
    route.header.scope = RouteScope::Universe;
    route.header.kind = RouteType::Unicast;
    route.attributes = vec![
        RouteAttribute::Gateway(RouteAddress::Inet(cfg.gateway)),
        RouteAttribute::Oif(index),
    ];
    request(
        &fd,
        3,
        libc::RTM_NEWROUTE,
        NLM_F_CREATE | NLM_F_EXCL,
        &route,
    )
    .map_err(|e| format!("default route via {}: {e}", cfg.gateway))?;
    Ok(())
}

/// Length of a netlink message header.
const HEADER_LEN: usize = 16;

/// Sends one request of `message_type` carrying `body` and waits for the kernel's
/// acknowledgement. Only the acknowledgement is parsed, not any other reply, which keeps
/// the parsers of every rtnetlink message out of the in-guest binary.
fn request(
    fd: &rustix::fd::OwnedFd,
    seq: u32,
    message_type: u16,
    flags: u16,
    body: &dyn Emitable,
) -> Result<(), String> {
    let len = HEADER_LEN + body.buffer_len();
    let mut buf = vec![0u8; len];
    {
        let mut nl = NetlinkBuffer::new(&mut buf[..]);
        nl.set_length(len as u32);
        nl.set_message_type(message_type);
        nl.set_flags(NLM_F_REQUEST | NLM_F_ACK | flags);
        nl.set_sequence_number(seq);
    }
    body.emit(&mut buf[HEADER_LEN..]);
    let kernel = netlink::SocketAddrNetlink::new(0, 0);
    rustix::net::sendto(fd, &buf, rustix::net::SendFlags::empty(), &kernel)
        .map_err(|e| format!("send: {e}"))?;
    let mut reply = vec![0u8; 8192];
    loop {
        let (n, _) = rustix::net::recv(fd, &mut reply[..], rustix::net::RecvFlags::empty())
            .map_err(|e| format!("receive: {e}"))?;
        let nl = NetlinkBuffer::new_checked(&reply[..n])
            .map_err(|e| format!("undecodable reply: {e}"))?;
        if nl.sequence_number() != seq {
            continue;
        }
        if nl.message_type() != NLMSG_ERROR {
            return Err(format!(
                "reply of type {} instead of an acknowledgement",
                nl.message_type()
            ));
        }
        let ack = ErrorBuffer::new_checked(nl.payload())
            .map_err(|e| format!("undecodable acknowledgement: {e}"))?;
        return match ack.code() {
            None => Ok(()),
            Some(code) => Err(std::io::Error::from_raw_os_error(-code.get()).to_string()),
        };
    }
}
