//! TLS on the head's one port (`--tls-cert`, `--tls-key`): gRPC and HTTP both, through
//! rustls. ALPN offers `h2` and `http/1.1`, so gRPC clients and plain HTTP/1.1 clients
//! (curl, httpx, the A2A SDKs) each get the protocol they speak after the handshake.
//!
//! Handshakes run beside the accept loop, each within [`HANDSHAKE_TIMEOUT`], so a client that
//! connects and stays silent holds nothing up. At most [`MAX_HANDSHAKES`] connections are
//! waiting for or in their handshake; of those, at most [`PEER_HANDSHAKES`] from one peer
//! (an IPv4 address, an IPv6 /64), [`PEER_HANDSHAKES_AT_ONCE`] of them handshaking at a time
//! (the others wait their turn). So one peer that opens connections and stays silent, or
//! floods the head with handshakes, holds a share of the slots and of the CPU, not all of it.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::crypto::aws_lc_rs;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::{self, ServerConfig};
use tokio_stream::wrappers::ReceiverStream;
use tracing::{debug, warn};

use crate::{Error, Result};

/// Connections waiting for or in their handshake at most; further connections wait in the
/// kernel's backlog.
pub const MAX_HANDSHAKES: usize = 1024;
/// Of those, from one peer at most: a peer's connection past them is closed at once.
pub const PEER_HANDSHAKES: usize = 256;
/// Of a peer's connections, those handshaking at a time; the rest wait their turn.
pub const PEER_HANDSHAKES_AT_ONCE: usize = 32;
/// A client that has not finished its handshake by then (its wait included) is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A TLS connection as tonic serves it (its connect info still carries the peer address).
pub type TlsConnection = tokio_rustls::server::TlsStream<TcpStream>;

/// Loads the certificate chain and private key (PEM files) into an acceptor.
pub fn acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor> {
    let bad = |path: &Path, message: String| Error::Tls { path: path.to_owned(), message };
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<std::result::Result<Vec<_>, _>>())
        .map_err(|e| bad(cert, format!("cannot read a PEM certificate chain: {e}")))?;
    if chain.is_empty() {
        return Err(bad(cert, "no certificate (-----BEGIN CERTIFICATE-----) in the file".into()));
    }
    let private = PrivateKeyDer::from_pem_file(key).map_err(|e| {
        bad(key, format!("cannot read a PEM private key (PKCS#8, PKCS#1 or SEC1): {e}"))
    })?;
    let mut config = ServerConfig::builder_with_provider(Arc::new(aws_lc_rs::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(cert, e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, private)
        .map_err(|e| match e {
            rustls::Error::InconsistentKeys(_) => bad(
                key,
                format!("this key does not belong to the certificate in {}", cert.display()),
            ),
            e => bad(cert, e.to_string()),
        })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// The certificate and key files named in the settings, when TLS is on.
pub fn files(cert: &Option<PathBuf>, key: &Option<PathBuf>) -> Result<Option<(PathBuf, PathBuf)>> {
    match (cert, key) {
        (Some(cert), Some(key)) => Ok(Some((cert.clone(), key.clone()))),
        (None, None) => Ok(None),
        (Some(path), None) | (None, Some(path)) => Err(Error::Tls {
            path: path.clone(),
            message: "TLS needs both --tls-cert and --tls-key".into(),
        }),
    }
}

/// Accepts on `listener` and yields the connections whose handshake succeeded; stops
/// accepting once the stream is dropped.
pub fn incoming(
    listener: TcpListener,
    acceptor: TlsAcceptor,
) -> ReceiverStream<io::Result<TlsConnection>> {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(accept_loop(listener, acceptor, tx));
    ReceiverStream::new(rx)
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    tx: mpsc::Sender<io::Result<TlsConnection>>,
) {
    let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    let peers = Peers::default();
    loop {
        let accepted = tokio::select! {
            permit = handshakes.clone().acquire_owned() => match permit {
                Ok(permit) => tokio::select! {
                    accepted = listener.accept() => accepted.map(|a| (a, permit)),
                    () = tx.closed() => return,
                },
                Err(_) => return,
            },
            () = tx.closed() => return,
        };
        let ((stream, peer), permit) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors and the like: wait rather than spin.
                warn!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Some(slot) = peers.admit(peer.ip()) else {
            // Dropping the stream closes it: this peer has its share of the slots already.
            debug!(%peer, "closed: {PEER_HANDSHAKES} connections from this peer await their TLS handshake");
            continue;
        };
        configure(&stream);
        let (acceptor, tx) = (acceptor.clone(), tx.clone());
        tokio::spawn(async move {
            let handshake = async {
                let _turn = slot.turn().await;
                handshake(acceptor, stream).await
            };
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
                Ok(Ok(connection)) => {
                    drop((slot, permit));
                    let _ = tx.send(Ok(connection)).await;
                }
                // Debug only: anyone can connect and fail; the client sees its own error.
                Ok(Err(e)) => debug!(%peer, "TLS handshake failed: {e}"),
                Err(_) => debug!(%peer, "TLS handshake not finished within 10 s"),
            }
        });
    }
}

/// The connections awaiting their handshake, counted per peer.
#[derive(Clone, Default)]
struct Peers(Arc<Mutex<HashMap<IpAddr, Peer>>>);

struct Peer {
    pending: usize,
    turns: Arc<Semaphore>,
}

/// A connection's place among its peer's pending ones, given back when dropped.
struct PeerSlot {
    peers: Peers,
    key: IpAddr,
    turns: Arc<Semaphore>,
}

impl Peers {
    /// A slot for a connection from `ip`, unless its peer has [`PEER_HANDSHAKES`] already.
    fn admit(&self, ip: IpAddr) -> Option<PeerSlot> {
        let key = peer_key(ip);
        let mut peers = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let peer = peers.entry(key).or_insert_with(|| Peer {
            pending: 0,
            turns: Arc::new(Semaphore::new(PEER_HANDSHAKES_AT_ONCE)),
        });
        if peer.pending >= PEER_HANDSHAKES {
            return None;
        }
        peer.pending += 1;
        Some(PeerSlot { peers: self.clone(), key, turns: peer.turns.clone() })
    }
}

impl PeerSlot {
    /// Waits until this peer has fewer than [`PEER_HANDSHAKES_AT_ONCE`] handshakes running.
    async fn turn(&self) -> Option<tokio::sync::SemaphorePermit<'_>> {
        // The semaphore is never closed; were it, the handshake would just not wait.
        self.turns.acquire().await.ok()
    }
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut peers = self.peers.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(peer) = peers.get_mut(&self.key) {
            peer.pending -= 1;
            if peer.pending == 0 {
                peers.remove(&self.key);
            }
        }
    }
}

/// Who counts as one peer: an IPv4 address, or an IPv6 /64 (the least one host is given, so
/// a peer cannot take more shares by changing the low bits of its address).
fn peer_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from(v6.to_bits() & !u128::from(u64::MAX))),
        },
    }
}

/// A TLS handshake, or for a client speaking clear text (its first byte does not open a TLS
/// handshake record) an HTTP/1.1 answer saying to use `https://`, as curl users would hope.
async fn handshake(acceptor: TlsAcceptor, mut stream: TcpStream) -> io::Result<TlsConnection> {
    const TLS_HANDSHAKE_RECORD: u8 = 0x16;
    let mut first = [0u8; 1];
    if stream.peek(&mut first).await? == 1 && first[0] != TLS_HANDSHAKE_RECORD {
        let body = "this head serves TLS: connect with https://\n";
        let answer = format!(
            "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(answer.as_bytes()).await?;
        let _ = stream.shutdown().await;
        return Err(io::Error::new(io::ErrorKind::InvalidData, "clear text on the TLS port"));
    }
    acceptor.accept(stream).await
}

/// The socket options tonic's own listener would set: without TCP_NODELAY every small
/// response waits for the peer's delayed ACK (~40 ms); keepalive finds vanished peers.
fn configure(stream: &TcpStream) {
    let _ = stream.set_nodelay(true);
    let keepalive = socket2::TcpKeepalive::new().with_time(Duration::from_secs(30));
    let _ = socket2::SockRef::from(stream).set_tcp_keepalive(&keepalive);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("an address")
    }

    #[test]
    fn a_peer_is_an_ipv4_address_or_an_ipv6_slash_64() {
        assert_eq!(peer_key(ip("10.1.2.3")), ip("10.1.2.3"));
        assert_ne!(peer_key(ip("10.1.2.3")), peer_key(ip("10.1.2.4")));
        assert_eq!(peer_key(ip("::ffff:10.1.2.3")), ip("10.1.2.3"));
        assert_eq!(peer_key(ip("2001:db8:1:2:aaaa::1")), peer_key(ip("2001:db8:1:2:bbbb::2")));
        assert_eq!(peer_key(ip("2001:db8:1:2:aaaa::1")), ip("2001:db8:1:2::"));
        assert_ne!(peer_key(ip("2001:db8:1:2::1")), peer_key(ip("2001:db8:1:3::1")));
    }

    #[test]
    fn a_peer_gets_its_share_of_the_slots_and_others_theirs() {
        let peers = Peers::default();
        let mut held: Vec<PeerSlot> =
            (0..PEER_HANDSHAKES).map(|_| peers.admit(ip("10.0.0.1")).expect("room")).collect();
        assert!(peers.admit(ip("10.0.0.1")).is_none(), "past its share");
        assert!(peers.admit(ip("10.0.0.2")).is_some(), "another peer is not held up");
        held.pop();
        assert!(peers.admit(ip("10.0.0.1")).is_some(), "a slot given back is free again");
        drop(held);
        assert!(
            peers.0.lock().expect("lock").is_empty(),
            "peers with nothing pending are forgotten"
        );
    }

    #[tokio::test]
    async fn a_peer_handshakes_a_few_at_a_time() {
        let peers = Peers::default();
        let slots: Vec<PeerSlot> = (0..=PEER_HANDSHAKES_AT_ONCE)
            .map(|_| peers.admit(ip("10.0.0.1")).expect("room"))
            .collect();
        let mut turns = Vec::new();
        for slot in &slots[..PEER_HANDSHAKES_AT_ONCE] {
            turns.push(slot.turn().await);
        }
        let last = &slots[PEER_HANDSHAKES_AT_ONCE];
        let waited = tokio::time::timeout(Duration::from_millis(50), last.turn()).await;
        assert!(waited.is_err(), "a turn past the bound was given");
        turns.pop();
        assert!(last.turn().await.is_some(), "a turn given back goes to the next");
    }
}
