//! What `/proc` says about a process: its open TCP connections (what a test checks when a
//! bound on connections is the behaviour under test, counted by the kernel rather than by
//! the process's own bookkeeping) and the CPU time it has used (Linux).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use anyhow::Context;

/// One established TCP connection: this end's address and the other end's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Connection {
    pub local: SocketAddr,
    pub remote: SocketAddr,
}

/// The established TCP connections (IPv4 and IPv6) that process `pid` holds open.
pub fn established_connections(pid: u32) -> anyhow::Result<Vec<Connection>> {
    // The sockets in state 01 (ESTABLISHED) in the process's network namespace, by inode.
    let mut established = HashMap::new();
    for table in ["tcp", "tcp6"] {
        let path = format!("/proc/{pid}/net/{table}");
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(remote), Some(&"01"), Some(inode)) =
                (fields.get(1), fields.get(2), fields.get(3), fields.get(9))
            else {
                continue;
            };
            let (Some(local), Some(remote)) = (address(local), address(remote)) else {
                continue;
            };
            established.insert(format!("socket:[{inode}]"), Connection { local, remote });
        }
    }
    let dir = format!("/proc/{pid}/fd");
    let mut connections = Vec::new();
    for fd in std::fs::read_dir(&dir).with_context(|| format!("listing {dir}"))? {
        // A descriptor closed while listing is simply not counted.
        let Ok(target) = std::fs::read_link(fd?.path()) else { continue };
        if let Some(connection) = established.get(target.to_string_lossy().as_ref()) {
            connections.push(*connection);
        }
    }
    Ok(connections)
}

/// CPU seconds (user + system) process `pid` has used so far.
pub fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces), from field 3 on: utime and
    // stime are the 14th and 15th.
    let after = stat.rsplit_once(')').context("/proc stat")?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| -> anyhow::Result<f64> {
        Ok(fields.get(i).context("a short /proc stat")?.parse::<f64>()?)
    };
    // USER_HZ is 100 on every Linux this runs on.
    Ok((ticks(11)? + ticks(12)?) / 100.0)
}

/// An address as `/proc/net/tcp{,6}` writes it: the IP as 32-bit words in the host's byte
/// order (x86 and arm64: little-endian), hex, a colon, the port in hex.
fn address(text: &str) -> Option<SocketAddr> {
    let (ip, port) = text.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |i: usize| -> Option<[u8; 4]> {
        let hex = ip.get(i * 8..i * 8 + 8)?;
        Some(u32::from_str_radix(hex, 16).ok()?.to_le_bytes())
    };
    let ip = match ip.len() {
        8 => IpAddr::V4(Ipv4Addr::from(word(0)?)),
        32 => {
            let mut bytes = [0u8; 16];
            for i in 0..4 {
                bytes[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            IpAddr::V6(Ipv6Addr::from(bytes))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_addresses_as_the_kernel_writes_them() {
        assert_eq!(address("0100007F:1F90"), Some("127.0.0.1:8080".parse().expect("addr")));
        assert_eq!(
            address("00000000000000000000000001000000:0016"),
            Some("[::1]:22".parse().expect("addr"))
        );
        assert_eq!(address("nonsense"), None);
    }

    #[test]
    fn lists_both_ends_of_a_connection_this_process_holds() -> anyhow::Result<()> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let client = std::net::TcpStream::connect(listener.local_addr()?)?;
        let (server, _) = listener.accept()?;
        let ours = established_connections(std::process::id())?;
        let out = Connection { local: client.local_addr()?, remote: listener.local_addr()? };
        let back = Connection { local: listener.local_addr()?, remote: client.local_addr()? };
        assert!(ours.contains(&out) && ours.contains(&back), "{ours:?}");
        drop((client, server));
        Ok(())
    }
}
