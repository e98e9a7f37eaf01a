//! A TCP relay in front of a PostgreSQL server that, once armed, loses the answer to the next write: it
//! lets the server commit an `INSERT` and then drops the connection instead of passing on its
//! `CommandComplete` and what follows up to `ReadyForQuery`. The client sees its connection fail and cannot
//! tell whether the row was written (it was). Every other connection, before and after, is relayed as is.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The relay; it stops when dropped.
pub struct AnswerCutter {
    url: String,
    armed: Arc<AtomicBool>,
    cuts: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl AnswerCutter {
    /// Relays 127.0.0.1:<free port> to the server of `url` (a `postgres://` URL).
    pub async fn start(url: &str) -> AnswerCutter {
        let mut u = url::Url::parse(url).expect("postgres url");
        let host = u.host_str().expect("host").to_owned();
        let server: SocketAddr = tokio::net::lookup_host((host.as_str(), u.port().unwrap_or(5432)))
            .await
            .expect("resolve the server")
            .next()
            .expect("an address");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind relay");
        let addr = listener.local_addr().expect("relay address");
        u.set_host(Some("127.0.0.1")).expect("host");
        u.set_port(Some(addr.port())).expect("port");
        // No TLS: the relay reads the protocol.
        u.query_pairs_mut().append_pair("sslmode", "disable");
        let armed = Arc::new(AtomicBool::new(false));
        let cuts = Arc::new(AtomicUsize::new(0));
        let (a, c) = (armed.clone(), cuts.clone());
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (a, c) = (a.clone(), c.clone());
                tokio::spawn(async move {
                    if let Ok(upstream) = TcpStream::connect(server).await {
                        relay(client, upstream, a, c).await;
                    }
                });
            }
        });
        AnswerCutter {
            url: u.to_string(),
            armed,
            cuts,
            task,
        }
    }

    /// The server's URL, through the relay.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Loses the answer of the next `INSERT` that completes (once).
    pub fn arm(&self) {
        self.armed.store(true, Ordering::SeqCst);
    }

    /// How many answers were lost.
    pub fn cuts(&self) -> usize {
        self.cuts.load(Ordering::SeqCst)
    }
}

impl Drop for AnswerCutter {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn relay(
    client: TcpStream,
    upstream: TcpStream,
    armed: Arc<AtomicBool>,
    cuts: Arc<AtomicUsize>,
) {
    let (mut cr, mut cw) = client.into_split();
    let (mut ur, mut uw) = upstream.into_split();
    // Client to server: bytes as they come.
    let up = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut cr, &mut uw).await;
        let _ = uw.shutdown().await;
    });
    // Server to client: whole messages (a type byte, then a length that counts itself), so that an
    // INSERT's CommandComplete can be held back and the connection dropped at its ReadyForQuery.
    let mut buf: Vec<u8> = Vec::with_capacity(16 * 1024);
    let mut chunk = vec![0u8; 16 * 1024];
    let mut held: Option<Vec<u8>> = None;
    'outer: loop {
        let n = match ur.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        let mut out = Vec::new();
        let mut at = 0;
        while buf.len() - at >= 5 {
            let len = u32::from_be_bytes(buf[at + 1..at + 5].try_into().expect("4 bytes")) as usize;
            if buf.len() - at < 1 + len {
                break;
            }
            let msg = &buf[at..at + 1 + len];
            at += 1 + len;
            match (msg[0], held.as_mut()) {
                (b'C', None) if msg[5..].starts_with(b"INSERT") && armed.load(Ordering::SeqCst) => {
                    held = Some(msg.to_vec());
                }
                // Held until ReadyForQuery (a CloseComplete may come between).
                (b'Z', Some(_)) if armed.swap(false, Ordering::SeqCst) => {
                    // Committed: the server sends ReadyForQuery after the implicit transaction's commit.
                    cuts.fetch_add(1, Ordering::SeqCst);
                    break 'outer;
                }
                // An error means nothing was committed (or another connection took the cut): all passes.
                (b'E' | b'Z', Some(h)) => {
                    out.append(h);
                    out.extend_from_slice(msg);
                    held = None;
                }
                (_, Some(h)) => h.extend_from_slice(msg),
                (_, None) => out.extend_from_slice(msg),
            }
        }
        buf.drain(..at);
        if !out.is_empty() && cw.write_all(&out).await.is_err() {
            break;
        }
    }
    up.abort();
}
