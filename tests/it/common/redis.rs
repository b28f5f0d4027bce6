//! A real `redis-server` on a free loopback port with its own temporary
//! directory (no persistence), killed on drop. A test can stop it and
//! start it again on the same port. [`Redis::start_tls`] serves TLS only,
//! with a certificate for `localhost` and 127.0.0.1 from a CA of its own.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Redis {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
    password: Option<String>,
    /// TLS only: the CA's certificate (PEM) in `dir`.
    tls_ca: Option<std::path::PathBuf>,
}

impl Redis {
    pub async fn start() -> Redis {
        Redis::start_inner(None).await
    }

    /// A server that refuses clients without `password` (`requirepass`).
    pub async fn start_with_password(password: &str) -> Redis {
        Redis::start_inner(Some(password.to_owned())).await
    }

    async fn start_inner(password: Option<String>) -> Redis {
        let port = super::ports::unused();
        let mut redis = Redis {
            port,
            dir: tempfile::tempdir().expect("temp dir"),
            child: None,
            password,
            tls_ca: None,
        };
        redis.restart().await;
        redis
    }

    /// A server that speaks TLS only (`rediss://`), its certificate from a
    /// CA of its own ([`Redis::ca_file`]); clients need none.
    pub async fn start_tls() -> Redis {
        let dir = tempfile::tempdir().expect("temp dir");
        let ca_key = rcgen::KeyPair::generate().expect("CA key");
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(rcgen::DnType::CommonName, "microgateway Redis test CA");
        let ca_cert = ca.self_signed(&ca_key).expect("CA certificate");
        let issuer = rcgen::Issuer::new(ca, ca_key);
        let key = rcgen::KeyPair::generate().expect("server key");
        let names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
        let cert = rcgen::CertificateParams::new(names)
            .expect("server params")
            .signed_by(&key, &issuer)
            .expect("server certificate");
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, ca_cert.pem()).expect("write CA");
        std::fs::write(dir.path().join("server.pem"), cert.pem()).expect("write certificate");
        std::fs::write(dir.path().join("server.key"), key.serialize_pem()).expect("write key");
        let mut redis = Redis {
            port: super::ports::unused(),
            dir,
            child: None,
            password: None,
            tls_ca: Some(ca_file),
        };
        redis.restart().await;
        redis
    }

    /// The CA (PEM file) a TLS server's certificate chains to.
    pub fn ca_file(&self) -> &std::path::Path {
        self.tls_ca.as_deref().expect("a TLS server")
    }

    pub fn url(&self) -> String {
        let scheme = if self.tls_ca.is_some() {
            "rediss"
        } else {
            "redis"
        };
        format!("{scheme}://127.0.0.1:{}/0", self.port)
    }

    /// Starts the server (again) on its port and waits until it answers.
    pub async fn restart(&mut self) {
        assert!(self.child.is_none(), "redis-server already runs");
        let mut command = Command::new("redis-server");
        if self.tls_ca.is_some() {
            let file = |name: &str| self.dir.path().join(name);
            command
                .args(["--port", "0", "--tls-port", &self.port.to_string()])
                .arg("--tls-cert-file")
                .arg(file("server.pem"))
                .arg("--tls-key-file")
                .arg(file("server.key"))
                .arg("--tls-ca-cert-file")
                .arg(file("ca.pem"))
                .args(["--tls-auth-clients", "no"]);
        } else {
            command.args(["--port", &self.port.to_string()]);
        }
        command
            .args(["--bind", "127.0.0.1"])
            .arg("--dir")
            .arg(self.dir.path())
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"]);
        if let Some(password) = &self.password {
            command.args(["--requirepass", password]);
        }
        let child = command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed (apt-get install redis-server)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.answers().await {
            assert!(Instant::now() < deadline, "redis-server did not answer");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Kills the server and waits until it has exited.
    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = tokio::task::spawn_blocking(move || child.wait()).await;
        }
    }

    /// Freezes the server (SIGSTOP): connections stay open, nothing answers.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Lets a paused server go on (SIGCONT).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let child = self.child.as_ref().expect("redis-server runs");
        let status = Command::new("kill")
            .args([signal, &child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill {signal} failed");
    }

    /// Whether `PING` gets `+PONG` (a TLS server: whether it accepts
    /// connections, which it does once it serves).
    async fn answers(&self) -> bool {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let Ok(mut stream) = tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await else {
            return false;
        };
        if self.tls_ca.is_some() {
            return true;
        }
        if let Some(password) = &self.password {
            let auth = format!("AUTH {password}\r\n");
            let mut ok = [0u8; 5];
            if stream.write_all(auth.as_bytes()).await.is_err()
                || stream.read_exact(&mut ok).await.is_err()
            {
                return false;
            }
        }
        if stream.write_all(b"PING\r\n").await.is_err() {
            return false;
        }
        let mut answer = [0u8; 7];
        let read = tokio::time::timeout(Duration::from_secs(2), stream.read_exact(&mut answer));
        matches!(read.await, Ok(Ok(_))) && &answer == b"+PONG\r\n"
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // A paused server would not die of SIGKILL before it goes on.
            let _ = Command::new("kill")
                .args(["-CONT", &child.id().to_string()])
                .status();
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
