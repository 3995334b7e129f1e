//! The gateway's address table: which local IPv4 address stands for which
//! overlay node, plus the subnet's reserved addresses and the small state
//! file that keeps the table across restarts.
//!
//! Pure data (no I/O except [`Table::load`] / [`Table::save`]), so the
//! allocation rules are unit-tested without a TUN device. Addresses are
//! handed out from `.1` upwards; a node keeps its address while the gateway
//! runs and, through the state file, across restarts.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::wire::address::Addr;

/// Most mappings one gateway keeps (a /16 has 65,533 usable addresses; the
/// limit bounds the state file and the table's memory).
pub const MAX_MAPPINGS: usize = 16_384;

/// Errors of the table.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TableError {
    /// A subnet that does not parse or is too small.
    #[error("invalid subnet {0:?} (expected e.g. 10.4.0.0/16, prefix 8-28)")]
    Subnet(String),
    /// The asked-for IP is outside the subnet or reserved.
    #[error("{0} is not a usable address of {1}")]
    NotInSubnet(Ipv4Addr, String),
    /// The asked-for IP already stands for another node.
    #[error("{ip} is already mapped to {addr}")]
    Taken {
        /// The IP.
        ip: Ipv4Addr,
        /// Its current node.
        addr: String,
    },
    /// No free address left.
    #[error("no free address left in {0}")]
    Full(String),
    /// `unmap` of something that is not mapped.
    #[error("{0} is not mapped")]
    NotMapped(String),
}

/// An IPv4 subnet such as `10.4.0.0/16`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subnet {
    /// The network address.
    pub net: Ipv4Addr,
    /// Prefix length.
    pub prefix: u8,
}

impl Subnet {
    /// Parses `A.B.C.D/P`, P between 8 and 28 (room for the reserved
    /// addresses and some peers).
    pub fn parse(s: &str) -> Result<Subnet, TableError> {
        let bad = || TableError::Subnet(s.to_string());
        let (ip, p) = s.split_once('/').ok_or_else(bad)?;
        let ip: Ipv4Addr = ip.parse().map_err(|_| bad())?;
        let prefix: u8 = p.parse().map_err(|_| bad())?;
        if !(8..=28).contains(&prefix) {
            return Err(bad());
        }
        let mask = u32::MAX << (32 - prefix);
        Ok(Subnet {
            net: Ipv4Addr::from(u32::from(ip) & mask),
            prefix,
        })
    }

    fn mask(&self) -> u32 {
        u32::MAX << (32 - self.prefix)
    }

    /// The broadcast address.
    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.net) | !self.mask())
    }

    /// Whether `ip` is inside the subnet.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.net)
    }

    /// The kernel's side of the TUN (broadcast - 1, e.g. 10.4.255.254):
    /// outside the range handed to peers, so the kernel never answers for a
    /// peer itself. The DNS server listens here.
    pub fn gateway_ip(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.broadcast()) - 1)
    }

    /// The userspace stack's own address (broadcast - 2): smoltcp needs one
    /// interface address to route "any IP" through.
    pub fn stack_ip(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.broadcast()) - 2)
    }

    /// Whether `ip` may be handed to a peer.
    pub fn usable(&self, ip: Ipv4Addr) -> bool {
        self.contains(ip) && ip != self.net && u32::from(ip) < u32::from(self.stack_ip())
    }
}

impl std::fmt::Display for Subnet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.net, self.prefix)
    }
}

/// One mapping, as `list` and the state file show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mapping {
    /// The local address.
    pub ip: Ipv4Addr,
    /// The node's overlay address.
    pub addr: String,
    /// The hostname it was mapped by, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
}

/// The state file's content.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct StateFile {
    subnet: String,
    #[serde(default)]
    mappings: Vec<Mapping>,
}

/// The live table.
#[derive(Debug, Clone)]
pub struct Table {
    subnet: Subnet,
    by_ip: BTreeMap<Ipv4Addr, Mapping>,
}

impl Table {
    /// An empty table over `subnet`.
    pub fn new(subnet: Subnet) -> Table {
        Table {
            subnet,
            by_ip: BTreeMap::new(),
        }
    }

    /// The subnet.
    pub fn subnet(&self) -> Subnet {
        self.subnet
    }

    /// Loads the state file; entries outside `subnet` (the subnet changed)
    /// are dropped. A missing or unreadable file gives an empty table.
    pub fn load(path: &Path, subnet: Subnet) -> Table {
        let mut t = Table::new(subnet);
        let Ok(text) = std::fs::read_to_string(path) else {
            return t;
        };
        let Ok(st) = serde_json::from_str::<StateFile>(&text) else {
            tracing::warn!("ignoring unreadable gateway state {}", path.display());
            return t;
        };
        for m in st.mappings.into_iter().take(MAX_MAPPINGS) {
            if subnet.usable(m.ip) && m.addr.parse::<Addr>().is_ok() && t.find(&m.addr).is_none() {
                t.by_ip.insert(m.ip, m);
            }
        }
        t
    }

    /// Writes the state file (owner-only, replaced atomically).
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        let st = StateFile {
            subnet: self.subnet.to_string(),
            mappings: self.list(),
        };
        let text = serde_json::to_string_pretty(&st).map_err(std::io::Error::other)?;
        if let Some(dir) = path.parent() {
            let _ = crate::config::create_private_dir(dir);
        }
        let tmp = path.with_extension("json.tmp");
        {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .write(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(text.as_bytes())?;
        }
        std::fs::rename(&tmp, path)
    }

    /// The mapping of `ip`.
    pub fn get(&self, ip: Ipv4Addr) -> Option<&Mapping> {
        self.by_ip.get(&ip)
    }

    /// The mapping of overlay address `addr`.
    pub fn find(&self, addr: &str) -> Option<&Mapping> {
        self.by_ip.values().find(|m| m.addr == addr)
    }

    /// All mappings, by IP.
    pub fn list(&self) -> Vec<Mapping> {
        self.by_ip.values().cloned().collect()
    }

    /// Maps `addr` (already resolved), at `want` or the lowest free address.
    /// Mapping a node that is already mapped returns its mapping (or moves
    /// it, when `want` names another address). Returns the mapping and
    /// whether the table changed.
    pub fn map(
        &mut self,
        addr: &str,
        hostname: Option<String>,
        want: Option<Ipv4Addr>,
    ) -> Result<(Mapping, bool), TableError> {
        if let Some(m) = self.find(addr).cloned() {
            if want.is_none_or(|w| w == m.ip) {
                if hostname.is_some() && m.hostname != hostname {
                    let m2 = Mapping { hostname, ..m };
                    self.by_ip.insert(m2.ip, m2.clone());
                    return Ok((m2, true));
                }
                return Ok((m, false));
            }
        }
        let ip = match want {
            Some(ip) => {
                if !self.subnet.usable(ip) {
                    return Err(TableError::NotInSubnet(ip, self.subnet.to_string()));
                }
                if let Some(m) = self.by_ip.get(&ip) {
                    return Err(TableError::Taken {
                        ip,
                        addr: m.addr.clone(),
                    });
                }
                ip
            }
            None => self.first_free()?,
        };
        if self.by_ip.len() >= MAX_MAPPINGS {
            return Err(TableError::Full(self.subnet.to_string()));
        }
        // Moving a node: drop its old address.
        if let Some(old) = self.find(addr).map(|m| m.ip) {
            self.by_ip.remove(&old);
        }
        let m = Mapping {
            ip,
            addr: addr.to_string(),
            hostname,
        };
        self.by_ip.insert(ip, m.clone());
        Ok((m, true))
    }

    fn first_free(&self) -> Result<Ipv4Addr, TableError> {
        let start = u32::from(self.subnet.net) + 1;
        let end = u32::from(self.subnet.stack_ip());
        (start..end)
            .map(Ipv4Addr::from)
            .find(|ip| !self.by_ip.contains_key(ip))
            .ok_or_else(|| TableError::Full(self.subnet.to_string()))
    }

    /// Removes the mapping named by its IP, overlay address or hostname.
    pub fn unmap(&mut self, key: &str) -> Result<Mapping, TableError> {
        let ip = if let Ok(ip) = key.parse::<Ipv4Addr>() {
            Some(ip)
        } else {
            self.by_ip
                .values()
                .find(|m| m.addr == key || m.hostname.as_deref() == Some(key))
                .map(|m| m.ip)
        };
        ip.and_then(|ip| self.by_ip.remove(&ip))
            .ok_or_else(|| TableError::NotMapped(key.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t() -> Table {
        Table::new(Subnet::parse("10.4.0.0/16").unwrap())
    }

    #[test]
    fn subnet_reserved_addresses() {
        let s = Subnet::parse("10.4.7.9/16").unwrap();
        assert_eq!(s.net, Ipv4Addr::new(10, 4, 0, 0));
        assert_eq!(s.gateway_ip(), Ipv4Addr::new(10, 4, 255, 254));
        assert_eq!(s.stack_ip(), Ipv4Addr::new(10, 4, 255, 253));
        assert!(s.usable(Ipv4Addr::new(10, 4, 0, 1)));
        assert!(s.usable(Ipv4Addr::new(10, 4, 255, 252)));
        assert!(!s.usable(Ipv4Addr::new(10, 4, 255, 253)));
        assert!(!s.usable(Ipv4Addr::new(10, 4, 0, 0)));
        assert!(!s.usable(Ipv4Addr::new(10, 5, 0, 1)));
        for bad in [
            "10.4.0.0",
            "10.4.0.0/7",
            "10.4.0.0/29",
            "x/16",
            "10.4.0.0/x",
        ] {
            assert!(Subnet::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn allocation_from_one_upwards_and_stable() {
        let mut t = t();
        let a = "0:0000.0000.0001";
        let b = "0:0000.0000.0002";
        let (m, changed) = t.map(a, None, None).unwrap();
        assert!(changed);
        assert_eq!(m.ip, Ipv4Addr::new(10, 4, 0, 1));
        assert_eq!(
            t.map(b, None, None).unwrap().0.ip,
            Ipv4Addr::new(10, 4, 0, 2)
        );
        // Same node again: same address, no change.
        assert_eq!(t.map(a, None, None).unwrap(), (m.clone(), false));
        // A freed address is reused by the next node.
        t.unmap("10.4.0.1").unwrap();
        let c = "0:0000.0000.0003";
        assert_eq!(
            t.map(c, None, None).unwrap().0.ip,
            Ipv4Addr::new(10, 4, 0, 1)
        );
    }

    #[test]
    fn explicit_addresses_and_errors() {
        let mut t = t();
        let a = "0:0000.0000.0001";
        let ip = Ipv4Addr::new(10, 4, 3, 3);
        assert_eq!(t.map(a, None, Some(ip)).unwrap().0.ip, ip);
        assert!(matches!(
            t.map("0:0000.0000.0002", None, Some(ip)),
            Err(TableError::Taken { .. })
        ));
        assert!(matches!(
            t.map(a, None, Some(Ipv4Addr::new(10, 9, 0, 1))),
            Err(TableError::NotInSubnet(..))
        ));
        // Moving the node frees its old address.
        let ip2 = Ipv4Addr::new(10, 4, 3, 4);
        t.map(a, None, Some(ip2)).unwrap();
        assert!(t.get(ip).is_none());
        assert_eq!(t.list().len(), 1);
        assert!(t.unmap("nope").is_err());
        t.map(a, Some("alpha".into()), None).unwrap();
        assert_eq!(t.unmap("alpha").unwrap().ip, ip2);
    }

    #[test]
    fn state_file_round_trip_drops_foreign_entries() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("gateway.json");
        let mut t = t();
        t.map("0:0000.0000.0001", Some("a".into()), None).unwrap();
        t.map("0:0000.0000.0002", None, Some(Ipv4Addr::new(10, 4, 9, 9)))
            .unwrap();
        t.save(&p).unwrap();
        let back = Table::load(&p, t.subnet());
        assert_eq!(back.list(), t.list());
        let other = Table::load(&p, Subnet::parse("10.5.0.0/16").unwrap());
        assert!(other.list().is_empty());
        std::fs::write(&p, "garbage").unwrap();
        assert!(Table::load(&p, t.subnet()).list().is_empty());
    }
}
