//! A raw upstream that never answers: it records the bytes of each
//! connection until the gateway closes it, so a test can see exactly how
//! much of a request reached the upstream.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, Mutex};

pub struct RecordingUpstream {
    pub addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    ended: Mutex<mpsc::UnboundedReceiver<Vec<u8>>>,
    task: tokio::task::JoinHandle<()>,
}

impl RecordingUpstream {
    pub async fn start() -> RecordingUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let accepted = Arc::new(AtomicUsize::new(0));
        let (tx, rx) = mpsc::unbounded_channel();
        let counted = accepted.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                let tx = tx.clone();
                tokio::spawn(async move {
                    let mut bytes = Vec::new();
                    let read = stream.read_to_end(&mut bytes);
                    let _ = tokio::time::timeout(Duration::from_secs(30), read).await;
                    let _ = tx.send(bytes);
                });
            }
        });
        RecordingUpstream {
            addr,
            accepted,
            ended: Mutex::new(rx),
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}/api", self.addr)
    }

    /// Connections the upstream accepted.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// What the next connection to end carried (waits at most 10 s).
    pub async fn ended(&self) -> Vec<u8> {
        let mut ended = self.ended.lock().await;
        tokio::time::timeout(Duration::from_secs(10), ended.recv())
            .await
            .expect("the gateway closed its upstream connection")
            .expect("the upstream runs")
    }
}

impl Drop for RecordingUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}
