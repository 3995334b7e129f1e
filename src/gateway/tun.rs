//! The TUN device: created non-persistent (the kernel removes it, its
//! address and its route when the last descriptor closes, even after
//! `kill -9`), with the kernel's side on an address outside the peer range
//! so the kernel never answers for a peer itself; the connected route of
//! that address sends the whole subnet into the device. A stale persistent
//! device of the same name is removed first; missing privileges become one
//! line that says how to fix them.

use std::io;

use super::{GatewayConfig, GatewayError};

/// `TUNSETIFF` and `TUNSETPERSIST` (linux/if_tun.h: `_IOW('T', 202, int)`,
/// `_IOW('T', 203, int)`).
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNSETPERSIST: libc::c_ulong = 0x4004_54cb;
const IFF_TUN: libc::c_short = 0x0001;
const IFF_NO_PI: libc::c_short = 0x1000;

#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

fn privilege_error() -> GatewayError {
    let exe = std::env::current_exe()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "$(command -v pilot-gateway)".into());
    GatewayError::Privilege(exe)
}

fn tun_error(device: &str, e: io::Error) -> GatewayError {
    if matches!(e.raw_os_error(), Some(libc::EPERM) | Some(libc::EACCES)) {
        return privilege_error();
    }
    GatewayError::Tun {
        device: device.to_string(),
        message: e.to_string(),
    }
}

/// Checks the device name (IFNAMSIZ - 1 bytes, no '/', no whitespace).
pub fn check_name(name: &str) -> Result<(), GatewayError> {
    if name.is_empty()
        || name.len() >= libc::IFNAMSIZ
        || name.contains(['/', ' ', '\t', '\n', ':'])
        || name == "."
        || name == ".."
    {
        return Err(GatewayError::Tun {
            device: name.to_string(),
            message: format!("invalid device name (1-{} characters)", libc::IFNAMSIZ - 1),
        });
    }
    Ok(())
}

/// Removes a stale TUN of this name left persistent by someone. A device
/// held open by a live process (another gateway) is an error.
pub fn remove_stale(name: &str) -> Result<(), GatewayError> {
    check_name(name)?;
    if !std::path::Path::new("/sys/class/net").join(name).exists() {
        return Ok(());
    }
    // SAFETY: plain open(2) of a constant path.
    let fd = unsafe { libc::open(c"/dev/net/tun".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(tun_error(name, io::Error::last_os_error()));
    }
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        flags: IFF_TUN | IFF_NO_PI,
        _pad: [0; 22],
    };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: fd is open; req is a valid ifreq-sized struct for TUNSETIFF.
    let r = unsafe { libc::ioctl(fd, TUNSETIFF as _, &mut req as *mut IfReq) };
    let result = if r < 0 {
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EBUSY) => Err(GatewayError::Tun {
                device: name.to_string(),
                message: "in use by another process (is a gateway already running?)".into(),
            }),
            Some(libc::EINVAL) => Err(GatewayError::Tun {
                device: name.to_string(),
                message: "an interface of this name exists and is not a TUN device".into(),
            }),
            _ => Err(tun_error(name, e)),
        }
    } else {
        // SAFETY: fd is attached to the device; 0 clears persistence.
        unsafe { libc::ioctl(fd, TUNSETPERSIST as _, 0 as libc::c_ulong) };
        tracing::info!("removed a stale device {name}");
        Ok(())
    };
    // SAFETY: fd is ours. Closing it deletes the now non-persistent device.
    unsafe { libc::close(fd) };
    result
}

/// Creates the device: up, the kernel side at the subnet's gateway address
/// with the subnet's prefix (its connected route covers the peers), a large
/// MTU.
pub fn open(cfg: &GatewayConfig) -> Result<tun_rs::AsyncDevice, GatewayError> {
    check_name(&cfg.device)?;
    tun_rs::DeviceBuilder::new()
        .name(&cfg.device)
        .ipv4(cfg.subnet.gateway_ip(), cfg.subnet.prefix, None)
        .mtu(cfg.mtu)
        .enable(true)
        .build_async()
        .map_err(|e| tun_error(&cfg.device, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_names() {
        assert!(check_name("pilot0").is_ok());
        assert!(check_name("pgw-123456789ab").is_ok());
        for bad in ["", "a/b", "a b", "0123456789abcdef", "..", "a:b"] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ifreq_is_ifreq_sized() {
        assert_eq!(std::mem::size_of::<IfReq>(), 40);
    }
}
