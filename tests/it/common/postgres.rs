//! A real PostgreSQL server for the tests: a cluster in a temporary
//! directory on a free loopback port (Unix socket in the same directory),
//! trust authentication for `postgres`, one database per test, stopped on
//! drop. `initdb` runs once per process into a template directory that each
//! cluster copies. PostgreSQL refuses to run as root, so under root the
//! server runs as `nobody` (`runuser`). Missing binaries fail the test:
//! CI installs the `postgresql` package (`.ci/run`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use microgateway::authz_server::store::{PostgresStore, TokenStore};
use microgateway::config::authz::{PgTls, PostgresStore as PgSettings};

/// The user the server runs as when the tests run as root.
const SERVER_USER: &str = "nobody";

/// Longest `pg_ctl` waits for a cluster to start or stop. A start after an
/// immediate stop replays the WAL first; on a 2-core CI machine running
/// several test processes that takes far longer than on an idle one.
const PG_CTL_WAIT_SECS: u32 = 180;

/// Lines of the server's log shown when `pg_ctl` fails.
const LOG_TAIL_LINES: usize = 30;

/// A running cluster; stopped (immediately) on drop.
pub struct Postgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    pub port: u16,
    databases: AtomicUsize,
    /// Server options beyond the common ones (TLS).
    extra: String,
}

/// The newest `/usr/lib/postgresql/VERSION/bin` with `initdb`.
fn bin_dir() -> PathBuf {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    found.sort();
    match found.pop() {
        Some((_, bin)) => bin,
        None => panic!(
            "PostgreSQL server binaries not found (/usr/lib/postgresql/*/bin/initdb): \
             install the Debian `postgresql` package (`.ci/run` does)"
        ),
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// `program` as the server user (`nobody` under root, else ourselves).
fn as_server_user(program: &Path) -> Command {
    if is_root() {
        let mut command = Command::new("runuser");
        command.args(["-u", SERVER_USER, "--"]).arg(program);
        command
    } else {
        Command::new(program)
    }
}

fn chown_to_server_user(path: &Path) {
    if is_root() {
        let status = Command::new("chown")
            .args(["-R", &format!("{SERVER_USER}:")])
            .arg(path)
            .status()
            .expect("chown");
        assert!(status.success(), "chown {}", path.display());
    }
}

fn run(command: &mut Command, what: &str) {
    let output = command.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        output.status.success(),
        "{what} failed: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A fresh `initdb`, made once per PostgreSQL version and user in the
/// temporary directory (built aside, then renamed into place, so racing
/// test processes never see half of one), copied by every cluster.
fn template(bin: &Path) -> &'static Path {
    static TEMPLATE: OnceLock<PathBuf> = OnceLock::new();
    TEMPLATE.get_or_init(|| {
        let version = bin
            .parent()
            .and_then(|v| v.file_name())
            .map(|v| v.to_string_lossy().into_owned())
            .unwrap_or_default();
        let user = if is_root() { SERVER_USER } else { "self" };
        let home = std::env::temp_dir().join(format!("microgateway-pg-template-{version}-{user}"));
        let data = home.join("data");
        if data.join("PG_VERSION").exists() {
            return data;
        }
        let building = tempfile::Builder::new()
            .prefix("microgateway-pg-initdb")
            .tempdir()
            .expect("template dir");
        chown_to_server_user(building.path());
        run(
            as_server_user(&bin.join("initdb"))
                .arg("-D")
                .arg(building.path().join("data"))
                .args(["-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync"])
                .args(["--locale", "C"]),
            "initdb",
        );
        let built = building.keep();
        if std::fs::rename(&built, &home).is_err() {
            // Another process made it first.
            let _ = std::fs::remove_dir_all(&built);
        }
        assert!(
            data.join("PG_VERSION").exists(),
            "template cluster in {}",
            home.display()
        );
        data
    })
}

impl Postgres {
    /// A new cluster of its own (for tests that stop or restart it).
    pub fn start() -> Postgres {
        Postgres::start_with(|_| String::new())
    }

    /// A cluster that accepts TCP connections over TLS only, with this
    /// certificate and key (PEM).
    pub fn start_tls(certificate: &str, key: &str) -> Postgres {
        Postgres::start_with(|data| {
            std::fs::write(data.join("server.crt"), certificate).unwrap();
            std::fs::write(data.join("server.key"), key).unwrap();
            let mut permissions = std::fs::metadata(data.join("server.key"))
                .unwrap()
                .permissions();
            std::os::unix::fs::PermissionsExt::set_mode(&mut permissions, 0o600);
            std::fs::set_permissions(data.join("server.key"), permissions).unwrap();
            std::fs::write(
                data.join("pg_hba.conf"),
                "local all all trust\nhostssl all all 127.0.0.1/32 trust\nhostssl all all ::1/128 trust\n",
            )
            .unwrap();
            "-c ssl=on".to_owned()
        })
    }

    fn start_with(prepare: impl FnOnce(&Path) -> String) -> Postgres {
        let bin = bin_dir();
        let template = template(&bin);
        let dir = tempfile::Builder::new()
            .prefix("mg-pg")
            .tempdir()
            .expect("temp dir");
        run(
            Command::new("cp")
                .arg("-a")
                .arg(template)
                .arg(dir.path().join("data")),
            "copy the template cluster",
        );
        let extra = prepare(&dir.path().join("data"));
        chown_to_server_user(dir.path());
        let postgres = Postgres {
            dir,
            bin,
            port: super::ports::unused(),
            databases: AtomicUsize::new(0),
            extra,
        };
        postgres.resume();
        postgres
    }

    /// The cluster the calling tests share while any of them runs; each
    /// still takes a database of its own.
    pub fn shared() -> Arc<Postgres> {
        static SHARED: Mutex<Weak<Postgres>> = Mutex::new(Weak::new());
        let mut shared = SHARED.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(running) = shared.upgrade() {
            return running;
        }
        let running = Arc::new(Postgres::start());
        *shared = Arc::downgrade(&running);
        running
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Starts (again) on the same port, waiting until it accepts.
    pub fn resume(&self) {
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories={} \
             -c fsync=off -c full_page_writes=off \
             -c max_connections=300 {}",
            self.port,
            self.dir.path().display(),
            self.extra
        );
        self.pg_ctl(
            as_server_user(&self.bin.join("pg_ctl"))
                .arg("-D")
                .arg(self.data())
                .arg("-l")
                .arg(self.log())
                .args(["-w", "-t", &PG_CTL_WAIT_SECS.to_string()])
                .args(["-o", &options, "start"]),
            "start (accept connections)",
        );
    }

    /// Stops at once (connections are cut, as in a crash or failover),
    /// waiting until the server has exited.
    pub fn stop(&self) {
        self.pg_ctl(&mut self.stop_command(), "stop");
    }

    /// Stops every process of the server (`SIGSTOP`): connections stay
    /// open and nothing answers, as a hung database, until the guard is
    /// dropped.
    pub fn freeze(&self) -> Frozen {
        let text = std::fs::read_to_string(self.data().join("postmaster.pid"))
            .expect("postmaster.pid of a running server");
        let postmaster = text.lines().next().expect("the pid line").trim().to_owned();
        let children = Command::new("pgrep")
            .args(["-P", &postmaster])
            .output()
            .expect("pgrep");
        let mut pids = vec![postmaster];
        pids.extend(
            String::from_utf8_lossy(&children.stdout)
                .split_whitespace()
                .map(str::to_owned),
        );
        signal("STOP", &pids);
        Frozen { pids }
    }

    fn stop_command(&self) -> Command {
        let mut command = as_server_user(&self.bin.join("pg_ctl"));
        command
            .arg("-D")
            .arg(self.data())
            .args(["-m", "immediate", "-w", "-t", &PG_CTL_WAIT_SECS.to_string()])
            .arg("stop");
        command
    }

    /// Runs `pg_ctl`; when it fails (it waited [`PG_CTL_WAIT_SECS`] in
    /// vain, or the server exited), says what it was to do, what it
    /// printed and how the server's log ends.
    fn pg_ctl(&self, command: &mut Command, what: &str) {
        let started = std::time::Instant::now();
        let output = command
            .output()
            .unwrap_or_else(|e| panic!("pg_ctl {what}: {e}"));
        if output.status.success() {
            return;
        }
        panic!(
            "pg_ctl {what} on port {} failed after {:.1?} (it waits at most {PG_CTL_WAIT_SECS} s): \
             {}{}\n--- last lines of {} ---\n{}",
            self.port,
            started.elapsed(),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
            self.log().display(),
            self.log_tail(),
        );
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    fn log_tail(&self) -> String {
        match std::fs::read_to_string(self.log()) {
            Ok(text) => {
                let lines: Vec<&str> = text.lines().collect();
                lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
            }
            Err(e) => format!("(unreadable: {e})"),
        }
    }

    /// A new, empty database.
    pub fn create_database(&self) -> String {
        let name = format!("t{}", self.databases.fetch_add(1, Ordering::SeqCst));
        run(
            Command::new(self.bin.join("createdb"))
                .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
                .args(["-U", "postgres", &name]),
            "createdb",
        );
        name
    }

    /// `store:` for the gateway's YAML.
    pub fn url(&self, database: &str) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/{database}?sslmode=disable",
            self.port
        )
    }

    pub fn settings(&self, database: &str) -> PgSettings {
        PgSettings {
            host: "127.0.0.1".into(),
            port: self.port,
            user: "postgres".into(),
            password: None,
            dbname: database.into(),
            tls: PgTls::Disable,
            ca_bundle: None,
            max_connections: 8,
            connect_timeout: Duration::from_secs(5),
        }
    }

    pub fn open_store(&self, database: &str) -> PostgresStore {
        let store = PostgresStore::open(&self.settings(database)).expect("open the store");
        assert!(store.is_ready(), "the store migrated");
        store
    }

    /// A session of the test's own on `database`, as the superuser (its
    /// connection driven on this runtime), for what `psql` cannot hold: a
    /// lock or a transaction kept open while the gateway works.
    pub async fn session(&self, database: &str) -> tokio_postgres::Client {
        let (client, connection) = tokio_postgres::connect(
            &format!(
                "host=127.0.0.1 port={} user=postgres dbname={database}",
                self.port
            ),
            tokio_postgres::NoTls,
        )
        .await
        .expect("a session of the test's own");
        tokio::spawn(connection);
        client
    }

    /// Runs one SQL statement with `psql`, returning its unaligned output.
    pub fn psql(&self, database: &str, sql: &str) -> String {
        let output = Command::new(self.bin.join("psql"))
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-U", "postgres", "-d", database, "-XAtc", sql])
            .output()
            .expect("psql");
        assert!(
            output.status.success(),
            "psql: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }
}

/// A server stopped by [`Postgres::freeze`]; going on again on drop.
pub struct Frozen {
    pids: Vec<String>,
}

impl Drop for Frozen {
    fn drop(&mut self) {
        signal("CONT", &self.pids);
    }
}

fn signal(name: &str, pids: &[String]) {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .args(pids)
        .status()
        .expect("kill");
    assert!(status.success(), "kill -{name} {pids:?}");
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // No panic here: a failed stop ends with the kill below.
        let _ = self.stop_command().output();
        let pid_file = self.data().join("postmaster.pid");
        if let Ok(text) = std::fs::read_to_string(pid_file) {
            if let Some(pid) = text.lines().next() {
                let _ = Command::new("kill").args(["-9", pid.trim()]).status();
            }
        }
    }
}
