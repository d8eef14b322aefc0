//! An emulated network for tests and benchmarks: hosts in separate Linux network namespaces,
//! each on a wire that delays, jitters, loses and cuts its packets.
//!
//! Each host is a namespace (`ip netns`) with one TUN interface on a /24 of 198.18.0.0/15
//! (the range RFC 2544 sets aside for network benchmarks); the process that owns the
//! [`EmulatedNetwork`] is a host too (`client`, `.1`), so a test's own clients reach the
//! others across the same wire. Every IPv4 packet a host sends goes up its TUN device to
//! this process, which holds it for the link's delay (plus jitter), drops it at the loss
//! rate or when a partition separates the two hosts, and writes it down the receiver's
//! device. The kernels' TCP stacks see a real network: retransmissions, windows,
//! keepalives, connections left half open when a partition drops packets silently.
//!
//! Why TUN and not veth pairs on a bridge with `tc qdisc ... netem`: the kernels this
//! project's CI runs on (Firecracker guests) are built without `sch_netem`, and a qdisc
//! cannot be loaded there. Emulating the wire in user space works on any kernel with TUN
//! and namespaces and behaves the same everywhere. Delays are kept to within tens of µs;
//! packets between two hosts stay in order, as on one link.
//!
//! Needs root (CAP_NET_ADMIN) and the `ip` command; a test that cannot create namespaces
//! fails and says why, it does not skip.

use std::collections::{BinaryHeap, HashMap, HashSet};
use std::ffi::OsStr;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use tun_rs::{DeviceBuilder, InterruptEvent, SyncDevice};

/// The host that is this process (the test and its clients), in the namespace it runs in.
pub const CLIENT: &str = "client";

/// What the wire does to every packet, in each direction.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Conditions {
    /// Held this long on the way (one way; a round trip takes twice as long).
    pub delay: Duration,
    /// Plus or minus up to this much more, uniformly (packets between two hosts still
    /// arrive in the order they were sent).
    pub jitter: Duration,
    /// The share of packets lost, 0.0 to 1.0.
    pub loss: f64,
}

impl Conditions {
    /// A round trip of `rtt` between any two hosts, without jitter or loss.
    pub fn rtt(rtt: Duration) -> Self {
        Self { delay: rtt / 2, ..Self::default() }
    }

    pub fn jitter(self, jitter: Duration) -> Self {
        Self { jitter, ..self }
    }

    pub fn loss(self, loss: f64) -> Self {
        Self { loss, ..self }
    }
}

/// What the wire has done so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WireStats {
    /// Packets delivered.
    pub delivered: u64,
    /// Packets lost at the loss rate.
    pub lost: u64,
    /// Packets dropped by a partition.
    pub cut: u64,
}

/// Hosts on an emulated wire (see the module's docs). Dropping it stops the wire and
/// removes the namespaces (processes still in one keep it until they exit: kill them
/// first).
pub struct EmulatedNetwork {
    wire: Arc<Wire>,
    /// The /24's number within 198.18.0.0/15 (0..512).
    subnet: u16,
    hosts: Mutex<Vec<Host>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

#[derive(Debug)]
struct Host {
    name: String,
    address: Ipv4Addr,
    /// The namespace; `None` for [`CLIENT`], this process's own.
    netns: Option<String>,
}

/// The part the wire's threads share.
struct Wire {
    /// Each host's device, by the last octet of its address.
    devices: RwLock<HashMap<u8, Arc<SyncDevice>>>,
    rules: Mutex<Rules>,
    queue: Mutex<BinaryHeap<InFlight>>,
    queued: Condvar,
    stop: InterruptEvent,
    stopping: AtomicBool,
    delivered: AtomicU64,
    lost: AtomicU64,
    cut: AtomicU64,
    /// TCP connections each host tried to open (SYNs it sent), by last octet.
    dialed: Box<[AtomicU64]>,
}

#[derive(Debug)]
struct Rules {
    conditions: Conditions,
    /// Hosts (last octets) cut off from every other.
    isolated: HashSet<u8>,
    /// When the last packet from one host to another is due, to keep each pair in order.
    last_due: HashMap<(u8, u8), Instant>,
    random: u64,
}

impl Rules {
    /// A uniform number in [0, 1) (xorshift: the wire needs no better).
    fn uniform(&mut self) -> f64 {
        let mut x = self.random;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.random = x;
        (x >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// A packet on its way, ordered by when it is due (the earliest first), then by arrival.
#[derive(Debug)]
struct InFlight {
    due: Instant,
    order: u64,
    from: u8,
    to: u8,
    packet: Vec<u8>,
}

impl PartialEq for InFlight {
    fn eq(&self, other: &Self) -> bool {
        (self.due, self.order) == (other.due, other.order)
    }
}
impl Eq for InFlight {}
impl PartialOrd for InFlight {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for InFlight {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (other.due, other.order).cmp(&(self.due, self.order))
    }
}

/// Subnets taken by this process's live networks.
static TAKEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
const SUBNETS: u16 = 512;
const MTU: u16 = 1500;

impl EmulatedNetwork {
    /// A network with only [`CLIENT`] on it (this process); [`EmulatedNetwork::add_host`]
    /// adds the others.
    pub fn new(conditions: Conditions) -> anyhow::Result<Self> {
        ensure!((0.0..=1.0).contains(&conditions.loss), "loss is a share from 0.0 to 1.0");
        sweep_leftovers();
        let subnet = take_subnet()?;
        let wire = Arc::new(Wire {
            devices: RwLock::new(HashMap::new()),
            rules: Mutex::new(Rules {
                conditions,
                isolated: HashSet::new(),
                last_due: HashMap::new(),
                random: 0x9e37_79b9_7f4a_7c15 ^ u64::from(std::process::id()),
            }),
            queue: Mutex::new(BinaryHeap::new()),
            queued: Condvar::new(),
            stop: InterruptEvent::new().context("cannot make the wire's stop event")?,
            stopping: AtomicBool::new(false),
            delivered: AtomicU64::new(0),
            lost: AtomicU64::new(0),
            cut: AtomicU64::new(0),
            dialed: (0..256).map(|_| AtomicU64::new(0)).collect(),
        });
        let network = Self {
            wire: wire.clone(),
            subnet,
            hosts: Mutex::new(Vec::new()),
            threads: Mutex::new(Vec::new()),
        };
        let deliverer = std::thread::Builder::new()
            .name(format!("wire-{subnet}"))
            .spawn(move || wire.deliver())?;
        network.lock_threads().push(deliverer);
        network.attach(CLIENT, None)?;
        Ok(network)
    }

    /// Adds a host named `name` in a namespace of its own; its address.
    pub fn add_host(&self, name: &str) -> anyhow::Result<Ipv4Addr> {
        ensure!(self.address(name).is_none(), "the network already has a host named {name:?}");
        let netns = format!("afnet-{}-{}-{}", std::process::id(), self.subnet, self.hosts_len());
        ip(["netns", "add", &netns])?;
        ip(["-n", &netns, "link", "set", "lo", "up"])?;
        self.attach(name, Some(netns))
    }

    /// Host `name`'s address, the host added first when the network has none by that name.
    pub fn host(&self, name: &str) -> anyhow::Result<Ipv4Addr> {
        match self.address(name) {
            Some(address) => Ok(address),
            None => self.add_host(name),
        }
    }

    /// A host's address.
    pub fn address(&self, name: &str) -> Option<Ipv4Addr> {
        self.lock_hosts().iter().find(|h| h.name == name).map(|h| h.address)
    }

    /// The namespace of host `name` (`None` for [`CLIENT`] or no such host).
    pub fn netns(&self, name: &str) -> Option<String> {
        self.lock_hosts().iter().find(|h| h.name == name).and_then(|h| h.netns.clone())
    }

    /// A command that runs `program` on host `name` (in its namespace).
    pub fn command(
        &self,
        name: &str,
        program: impl AsRef<OsStr>,
    ) -> anyhow::Result<tokio::process::Command> {
        let hosts = self.lock_hosts();
        let host = hosts.iter().find(|h| h.name == name).context("no such host")?;
        Ok(match &host.netns {
            // `ip netns exec` execs the program: the child is the program itself.
            Some(netns) => {
                let mut command = tokio::process::Command::new("ip");
                command.args(["netns", "exec", netns]).arg(program);
                command
            }
            None => tokio::process::Command::new(program),
        })
    }

    /// Changes what the wire does to packets from now on.
    pub fn set_conditions(&self, conditions: Conditions) {
        self.wire.lock_rules().conditions = conditions;
    }

    /// Cuts host `name` off: every packet to or from it is dropped silently, those on
    /// their way too (as when a cable is pulled; connections are left half open).
    pub fn isolate(&self, name: &str) -> anyhow::Result<()> {
        let octet = self.octet(name)?;
        self.wire.lock_rules().isolated.insert(octet);
        Ok(())
    }

    /// Joins an isolated host to the others again.
    pub fn heal(&self, name: &str) -> anyhow::Result<()> {
        let octet = self.octet(name)?;
        self.wire.lock_rules().isolated.remove(&octet);
        Ok(())
    }

    /// What the wire has done so far.
    pub fn stats(&self) -> WireStats {
        WireStats {
            delivered: self.wire.delivered.load(Ordering::Relaxed),
            lost: self.wire.lost.load(Ordering::Relaxed),
            cut: self.wire.cut.load(Ordering::Relaxed),
        }
    }

    /// How many TCP connections host `name` has tried to open (SYNs sent, retransmitted
    /// ones included), whether or not they got through.
    pub fn dialed(&self, name: &str) -> anyhow::Result<u64> {
        Ok(self.wire.dialed[usize::from(self.octet(name)?)].load(Ordering::Relaxed))
    }

    fn octet(&self, name: &str) -> anyhow::Result<u8> {
        let address = self.address(name).with_context(|| format!("no host named {name:?}"))?;
        Ok(address.octets()[3])
    }

    fn hosts_len(&self) -> usize {
        self.lock_hosts().len()
    }

    fn lock_hosts(&self) -> std::sync::MutexGuard<'_, Vec<Host>> {
        self.hosts.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn lock_threads(&self) -> std::sync::MutexGuard<'_, Vec<JoinHandle<()>>> {
        self.threads.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Puts a TUN device for `name` in `netns` (this process's namespace with `None`),
    /// addresses it and starts reading what the host sends.
    fn attach(&self, name: &str, netns: Option<String>) -> anyhow::Result<Ipv4Addr> {
        let octet = u8::try_from(self.hosts_len() + 1)
            .ok()
            .filter(|&o| o < 255)
            .context("an emulated network holds at most 254 hosts")?;
        let [a, b] = [18 + (self.subnet >> 8) as u8, (self.subnet & 0xff) as u8];
        let address = Ipv4Addr::new(198, a, b, octet);
        let interface = format!("afn{}h{octet}", self.subnet);
        let device = DeviceBuilder::new()
            .name(&interface)
            .mtu(MTU)
            .packet_information(false)
            .build_sync()
            .with_context(|| {
                format!("cannot create the TUN device {interface} (needs root and /dev/net/tun)")
            })?;
        // Nonblocking, so that the reader's wait can be interrupted (tun-rs's advice).
        device.set_nonblocking(true)?;
        let cidr = format!("{address}/24");
        // A TUN device queues 500 packets by default: a burst longer than that, sent while
        // the wire's reader waits for a core, would be dropped before the wire sees it.
        let queue = "10000";
        match &netns {
            Some(netns) => {
                ip(["link", "set", &interface, "netns", netns])?;
                ip(["-n", netns, "addr", "add", &cidr, "dev", &interface])?;
                ip(["-n", netns, "link", "set", &interface, "txqueuelen", queue, "up"])?;
            }
            None => {
                ip(["addr", "add", &cidr, "dev", &interface])?;
                ip(["link", "set", &interface, "txqueuelen", queue, "up"])?;
            }
        }
        let device = Arc::new(device);
        self.wire
            .devices
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(octet, device.clone());
        self.lock_hosts().push(Host { name: name.to_owned(), address, netns });
        let wire = self.wire.clone();
        let reader = std::thread::Builder::new()
            .name(format!("wire-{}-{octet}", self.subnet))
            .spawn(move || wire.read(&device, octet))?;
        self.lock_threads().push(reader);
        Ok(address)
    }
}

impl std::fmt::Debug for EmulatedNetwork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmulatedNetwork")
            .field("subnet", &self.subnet)
            .field("hosts", &*self.lock_hosts())
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl Wire {
    fn lock_rules(&self) -> std::sync::MutexGuard<'_, Rules> {
        self.rules.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn lock_queue(&self) -> std::sync::MutexGuard<'_, BinaryHeap<InFlight>> {
        self.queue.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Reads what host `from` sends until the wire stops, putting each packet on its way.
    fn read(&self, device: &SyncDevice, from: u8) {
        let mut buffer = vec![0u8; usize::from(MTU) + 64];
        let mut order = u64::from(from) << 56;
        while !self.stopping.load(Ordering::Relaxed) {
            let n = match device.recv_intr(&mut buffer, &self.stop) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(_) => return,
            };
            let packet = &buffer[..n];
            // IPv4 only (the kernel also sends IPv6 router solicitations: not ours).
            if n < 20 || packet[0] >> 4 != 4 {
                continue;
            }
            let to = packet[19];
            if is_syn(packet) {
                self.dialed[usize::from(from)].fetch_add(1, Ordering::Relaxed);
            }
            let now = Instant::now();
            let due = {
                let mut rules = self.lock_rules();
                if rules.isolated.contains(&from) || rules.isolated.contains(&to) {
                    self.cut.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                let Conditions { delay, jitter, loss } = rules.conditions;
                if loss > 0.0 && rules.uniform() < loss {
                    self.lost.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                let spread = jitter.as_secs_f64() * (2.0 * rules.uniform() - 1.0);
                let held = (delay.as_secs_f64() + spread).max(0.0);
                let mut due = now + Duration::from_secs_f64(held);
                let last = rules.last_due.entry((from, to)).or_insert(due);
                due = due.max(*last);
                *last = due;
                due
            };
            order += 1;
            let flight = InFlight { due, order, from, to, packet: packet.to_vec() };
            self.lock_queue().push(flight);
            self.queued.notify_one();
        }
    }

    /// Hands each packet to its receiver when it is due, until the wire stops.
    fn deliver(&self) {
        // A waiting thread wakes up to 50 µs late by default (the kernel's timer slack, to
        // batch wake-ups); a packet crosses the wire four times in a task's round trip.
        let _ = nix::sys::prctl::set_timerslack(1_000);
        let mut queue = self.lock_queue();
        loop {
            if self.stopping.load(Ordering::Relaxed) {
                return;
            }
            let now = Instant::now();
            let wait = match queue.peek() {
                None => None,
                Some(next) if next.due <= now => {
                    let Some(flight) = queue.pop() else { continue };
                    drop(queue);
                    self.hand_over(&flight);
                    queue = self.lock_queue();
                    continue;
                }
                Some(next) => Some(next.due - now),
            };
            queue = match wait {
                None => self.queued.wait(queue).unwrap_or_else(std::sync::PoisonError::into_inner),
                Some(wait) => {
                    self.queued
                        .wait_timeout(queue, wait)
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .0
                }
            };
        }
    }

    fn hand_over(&self, flight: &InFlight) {
        // A partition made while the packet was on its way drops it too.
        let cut = {
            let rules = self.lock_rules();
            rules.isolated.contains(&flight.from) || rules.isolated.contains(&flight.to)
        };
        if cut {
            self.cut.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let device = self
            .devices
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&flight.to)
            .cloned();
        // A packet to an address nobody has is dropped, as a router without a route does.
        if let Some(device) = device
            && device.send(&flight.packet).is_ok()
        {
            self.delivered.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl Drop for EmulatedNetwork {
    fn drop(&mut self) {
        self.wire.stopping.store(true, Ordering::Relaxed);
        let _ = self.wire.stop.trigger();
        {
            let _queue = self.wire.lock_queue();
            self.wire.queued.notify_all();
        }
        for thread in self.lock_threads().drain(..) {
            let _ = thread.join();
        }
        for host in self.lock_hosts().drain(..) {
            if let Some(netns) = host.netns {
                let _ = ip(["netns", "del", &netns]);
            }
        }
        if let Ok(mut taken) = TAKEN.lock() {
            taken.retain(|&s| s != self.subnet);
        }
    }
}

/// Whether an IPv4 packet is a TCP SYN without ACK: a connection being opened.
fn is_syn(packet: &[u8]) -> bool {
    let header = usize::from(packet[0] & 0x0f) * 4;
    packet[9] == 6 && packet.get(header + 13).is_some_and(|flags| flags & 0x12 == 0x02)
}

/// A /24 no live network of this process has and no route of this machine covers.
fn take_subnet() -> anyhow::Result<u16> {
    let mut taken = TAKEN.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let routes = std::process::Command::new("ip")
        .args(["-4", "route", "show"])
        .output()
        .context("cannot run `ip` (install iproute2)")?;
    let routes = String::from_utf8_lossy(&routes.stdout);
    // Start at a place of this process's own, so that test binaries running at once rarely
    // try the same subnets.
    let start = (std::process::id() % u32::from(SUBNETS)) as u16;
    for i in 0..SUBNETS {
        let subnet = (start + i) % SUBNETS;
        let prefix = format!("198.{}.{}.0/24", 18 + (subnet >> 8), subnet & 0xff);
        if !taken.contains(&subnet) && !routes.contains(&prefix) {
            taken.push(subnet);
            return Ok(subnet);
        }
    }
    bail!("every /24 of 198.18.0.0/15 is in use")
}

/// Removes namespaces that networks of processes no longer running left behind.
fn sweep_leftovers() {
    let Ok(entries) = std::fs::read_dir("/run/netns") else { return };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix("afnet-").and_then(|r| r.split('-').next()) else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = ip(["netns", "del", &name]);
        }
    }
}

fn ip<const N: usize>(args: [&str; N]) -> anyhow::Result<()> {
    let output = std::process::Command::new("ip")
        .args(args)
        .output()
        .context("cannot run `ip` (install iproute2)")?;
    ensure!(
        output.status.success(),
        "`ip {}` failed: {} (emulated networks need root)",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr).trim()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packets_are_due_earliest_first_then_in_arrival_order() {
        let now = Instant::now();
        let flight = |ms: u64, order| InFlight {
            due: now + Duration::from_millis(ms),
            order,
            from: 1,
            to: 2,
            packet: Vec::new(),
        };
        let mut heap: BinaryHeap<_> = [flight(5, 1), flight(1, 3), flight(1, 2)].into();
        let popped: Vec<u64> = std::iter::from_fn(|| heap.pop().map(|f| f.order)).collect();
        assert_eq!(popped, [2, 3, 1]);
    }
}
