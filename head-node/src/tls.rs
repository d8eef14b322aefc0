//! TLS on the head's one port (`--tls-cert`, `--tls-key`): gRPC and HTTP both, through
//! rustls. ALPN offers `h2` and `http/1.1`, so gRPC clients and plain HTTP/1.1 clients
//! (curl, httpx, the A2A SDKs) each get the protocol they speak after the handshake.
//!
//! Handshakes run beside the accept loop, at most [`MAX_HANDSHAKES`] at once and each within
//! [`HANDSHAKE_TIMEOUT`], so a client that connects and stays silent holds nothing up.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
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

/// Handshakes in progress at most; further connections wait in the kernel's backlog.
pub const MAX_HANDSHAKES: usize = 256;
/// A client that has not finished its handshake by then is dropped.
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
        configure(&stream);
        let (acceptor, tx) = (acceptor.clone(), tx.clone());
        tokio::spawn(async move {
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake(acceptor, stream)).await {
                Ok(Ok(connection)) => {
                    drop(permit);
                    let _ = tx.send(Ok(connection)).await;
                }
                // Debug only: anyone can connect and fail; the client sees its own error.
                Ok(Err(e)) => debug!(%peer, "TLS handshake failed: {e}"),
                Err(_) => debug!(%peer, "TLS handshake not finished within 10 s"),
            }
        });
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
