//! Guest networking: the interface configuration the host hands PID1 (as a firmware config
//! file, like the share list) when it gives the guest a network card.
//!
//! User-mode networking needs no root on the host: passt (or QEMU's slirp) answers for the
//! gateway, forwards the guest's connections through host sockets, and maps the gateway
//! address to the host itself, so a guest reaches a server on the host's 127.0.0.1 at
//! [`NetConfig::gateway`]. Both backends are given the same addresses, so the guest's
//! configuration does not depend on which one the host found.

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

/// The firmware config name QEMU is given the configuration under.
pub const FW_CFG_NAME: &str = "opt/minke/net";
/// Where the guest's `qemu_fw_cfg` driver shows it.
pub const FW_CFG_SYSFS_PATH: &str = "/sys/firmware/qemu_fw_cfg/by_name/opt/minke/net/raw";

/// How the guest's one network interface is set up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetConfig {
    /// The guest's address.
    pub address: Ipv4Addr,
    /// Its prefix length.
    pub prefix: u8,
    /// The default gateway (the host, as seen from the guest).
    pub gateway: Ipv4Addr,
    /// The name server the guest's resolver asks.
    pub dns: Ipv4Addr,
}

impl Default for NetConfig {
    /// The addresses QEMU's slirp uses by default, given to passt too.
    fn default() -> Self {
        NetConfig {
            address: Ipv4Addr::new(10, 0, 2, 15),
            prefix: 24,
            gateway: Ipv4Addr::new(10, 0, 2, 2),
            dns: Ipv4Addr::new(10, 0, 2, 3),
        }
    }
}

/// Why a configuration was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NetError {
    /// Not a postcard-encoded configuration.
    #[error("the network configuration cannot be decoded: {0}")]
    Decode(String),
    /// A value no interface can take.
    #[error("the network configuration is unusable: {0}")]
    Invalid(String),
}

impl NetConfig {
    /// The configuration as bytes for the firmware config file.
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_stdvec(self).unwrap_or_default()
    }

    /// The configuration from the firmware config file, checked: a prefix of 1 to 30 bits,
    /// the gateway inside the guest's subnet, no address that is unspecified, broadcast or
    /// multicast.
    pub fn decode(bytes: &[u8]) -> Result<NetConfig, NetError> {
        let c: NetConfig =
            postcard::from_bytes(bytes).map_err(|e| NetError::Decode(e.to_string()))?;
        if !(1..=30).contains(&c.prefix) {
            return Err(NetError::Invalid(format!("prefix /{}", c.prefix)));
        }
        for (what, a) in [
            ("address", c.address),
            ("gateway", c.gateway),
            ("dns", c.dns),
        ] {
            if a.is_unspecified() || a.is_broadcast() || a.is_multicast() {
                return Err(NetError::Invalid(format!("{what} {a}")));
            }
        }
        if c.address == c.gateway {
            return Err(NetError::Invalid("the address is the gateway's".into()));
        }
        let mask = u32::MAX.checked_shl(32 - u32::from(c.prefix)).unwrap_or(0);
        if u32::from(c.address) & mask != u32::from(c.gateway) & mask {
            return Err(NetError::Invalid(format!(
                "gateway {} outside {}/{}",
                c.gateway, c.address, c.prefix
            )));
        }
        Ok(c)
    }

    /// The subnet's broadcast address.
    pub fn broadcast(&self) -> Ipv4Addr {
        let host = u32::MAX.checked_shr(u32::from(self.prefix)).unwrap_or(0);
        Ipv4Addr::from(u32::from(self.address) | host)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_checks() {
        let c = NetConfig::default();
        assert_eq!(NetConfig::decode(&c.encode()).unwrap(), c);
        assert_eq!(c.broadcast(), Ipv4Addr::new(10, 0, 2, 255));
        let bad = |f: &dyn Fn(&mut NetConfig)| {
            let mut c = NetConfig::default();
            f(&mut c);
            NetConfig::decode(&c.encode()).unwrap_err()
        };
        bad(&|c| c.prefix = 0);
        bad(&|c| c.prefix = 31);
        bad(&|c| c.gateway = Ipv4Addr::new(10, 0, 3, 2));
        bad(&|c| c.address = c.gateway);
        bad(&|c| c.dns = Ipv4Addr::BROADCAST);
        let good = NetConfig::default().encode();
        for cut in 0..good.len() {
            let _ = NetConfig::decode(&good[..cut]);
        }
    }
}
