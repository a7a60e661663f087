//! Throwaway servers for tests (feature `testing`): a real etcd and Node antietcd 1.3.1.
//!
//! Each server listens on free loopback ports, keeps its data in a fresh temporary
//! directory, is ready when `start` returns, and is killed (and its directory removed)
//! when dropped. Both support [`kill`](EtcdServer::kill) and
//! [`restart`](EtcdServer::restart) on the same ports, for reconnect tests.
//!
//! ```no_run
//! # async fn demo() {
//! use etcd_json::testing::EtcdServer;
//! use etcd_json::{Client, ClientOptions};
//! let etcd = EtcdServer::start();
//! let client = Client::connect([etcd.endpoint()], ClientOptions::new()).await.unwrap();
//! client.put("k", "v", None).await.unwrap();
//! # }
//! ```
//!
//! Binaries: etcd comes from `$ETCD_BIN` or `etcd` on `PATH` (Debian: `apt-get install
//! etcd-server`); antietcd from `$ANTIETCD_NODE_DIR/node_modules/.bin/antietcd`, where the
//! directory defaults to `<workspace>/.cache/node` (`npm install --prefix .cache/node
//! antietcd@1.3.1`). A missing binary panics with the install command.
//!
//! `start` blocks the calling thread for up to 30 s while the server boots; calling it
//! from an async test is fine.
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// How long a server gets to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// A fresh, unique temporary directory.
fn temp_dir(prefix: &str) -> PathBuf {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let dir = std::env::temp_dir().join(format!(
        "{prefix}-{}-{}-{nanos}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A free port on 127.0.0.1 for a server a test starts later; see [`free_port_on`].
pub fn free_port() -> u16 {
    free_port_on("127.0.0.1")
}

/// A free port on the loopback address `ip` for a server a test starts later.
///
/// The port is probed (bound, then released), so another socket could take it before the server binds
/// it. Asking the kernel for port 0 makes that likely: it hands the released port to the next port-0
/// bind, such as an in-process server of a parallel test, while the child process is still booting, and
/// the test then talks to the wrong server. So the ports come from below the kernel's ephemeral range
/// (which port-0 binds and outgoing connections use), from a counter that never repeats one within a
/// process, starting at an offset taken from the process id so that test binaries running at the same
/// time rarely meet.
pub fn free_port_on(ip: &str) -> u16 {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let (low, high) = unassigned_ports();
    let span = usize::from(high - low);
    let start = (std::process::id() as usize).wrapping_mul(7919);
    for _ in 0..span {
        let port = low + (start.wrapping_add(NEXT.fetch_add(1, Ordering::Relaxed)) % span) as u16;
        if TcpListener::bind((ip, port)).is_ok() {
            return port;
        }
    }
    panic!("no free port on {ip} in {low}..{high}");
}

/// A port range the kernel does not hand out by itself: the 16 Ki ports below the ephemeral range.
fn unassigned_ports() -> (u16, u16) {
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|low| low.parse::<u16>().ok()))
        .unwrap_or(32768);
    let high = ephemeral_low.max(2048);
    (high.saturating_sub(16384).max(1024), high)
}

/// Finds a program on `PATH`.
fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join(program)).find(|p| p.is_file())
}

/// etcd's member list, which names the members.
const MEMBER_LIST: &str = "POST /v3/cluster/member/list HTTP/1.0\r\nHost: localhost\r\n\
    Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{}";

/// Sends one raw HTTP/1.0 request; returns the status code and body.
fn http_probe(addr: SocketAddr, request: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    stream.write_all(request.as_bytes()).ok()?;
    let mut reply = String::new();
    stream.read_to_string(&mut reply).ok()?;
    let status = reply.split_whitespace().nth(1)?.parse().ok()?;
    let body = reply.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    Some((status, body))
}

/// Whether process `pid` holds a socket listening on TCP `port` (any address). Linux only (`/proc`);
/// elsewhere it answers yes.
fn listens_on(pid: u32, port: u16) -> bool {
    if !cfg!(target_os = "linux") {
        return true;
    }
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { return false };
    let sockets: Vec<String> = fds
        .flatten()
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .filter_map(|target| Some(target.to_str()?.strip_prefix("socket:[")?.strip_suffix(']')?.to_owned()))
        .collect();
    // /proc/net/tcp: `sl local_address rem_address st ... inode`, addresses `HEXIP:HEXPORT`, 0A = LISTEN.
    ["/proc/net/tcp", "/proc/net/tcp6"].iter().filter_map(|table| std::fs::read_to_string(table).ok()).any(
        |table| {
            table.lines().skip(1).any(|line| {
                let cols: Vec<&str> = line.split_whitespace().collect();
                cols.len() > 9
                    && cols[3] == "0A"
                    && cols[1].rsplit(':').next().and_then(|p| u16::from_str_radix(p, 16).ok()) == Some(port)
                    && sockets.iter().any(|inode| inode == cols[9])
            })
        },
    )
}

/// The last lines of a log file, for panic messages.
fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// Configures a server (on ports from [`free_port`]) and boots it; if its ports were taken before it bound
/// them ("address already in use"), drops it (which kills it and removes its directory) and tries again on
/// other ports, up to four times. Panics with the boot error otherwise.
fn boot_on_free_ports<S>(mut configure: impl FnMut() -> S, boot: fn(&mut S) -> Result<(), String>) -> S {
    let mut attempt = 1;
    loop {
        let mut server = configure();
        match boot(&mut server) {
            Ok(()) => return server,
            Err(e) if attempt < 4 && e.contains("address already in use") => attempt += 1,
            Err(e) => panic!("{e}"),
        }
    }
}

/// A child process with its log file and a readiness probe.
#[derive(Debug)]
struct Process {
    program: PathBuf,
    args: Vec<String>,
    log: PathBuf,
    child: Option<Child>,
}

impl Process {
    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).unwrap();
        let child = Command::new(&self.program)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", self.program.display()));
        self.child = Some(child);
    }

    /// Waits until `ready()`; the error (with the log's tail) if the process exits or the wait times out.
    fn try_wait_ready(&mut self, what: &str, ready: impl Fn() -> bool) -> Result<(), String> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if ready() {
                return Ok(());
            }
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    return Err(format!(
                        "{what} exited with {status} while starting; log:\n{}",
                        log_tail(&self.log)
                    ));
                }
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "{what} not ready after {READY_TIMEOUT:?}; log:\n{}",
                    log_tail(&self.log)
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }
}

/// PEM files for a TLS test: a CA, a server certificate for `127.0.0.1`/`localhost` and
/// a client certificate, all signed by the CA.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// The CA certificate.
    pub ca: PathBuf,
    /// The server certificate.
    pub server_cert: PathBuf,
    /// The server's private key.
    pub server_key: PathBuf,
    /// The client certificate.
    pub client_cert: PathBuf,
    /// The client's private key.
    pub client_key: PathBuf,
}

impl TlsFiles {
    /// Generates fresh files in `dir` with the `openssl` command (panics when missing:
    /// `apt-get install openssl`).
    pub fn generate(dir: &Path) -> TlsFiles {
        std::fs::create_dir_all(dir).unwrap();
        let script = r#"set -e
openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 2 -subj /CN=etcd-json-test-ca
printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n' > server.ext
printf 'extendedKeyUsage=clientAuth\n' > client.ext
openssl req -newkey rsa:2048 -nodes -keyout server.key -out server.csr -subj /CN=localhost
openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out server.crt -days 2 -extfile server.ext
openssl req -newkey rsa:2048 -nodes -keyout client.key -out client.csr -subj /CN=root
openssl x509 -req -in client.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out client.crt -days 2 -extfile client.ext
"#;
        let output = Command::new("sh")
            .arg("-c")
            .arg(script)
            .current_dir(dir)
            .output()
            .unwrap_or_else(|e| panic!("cannot run sh: {e}"));
        assert!(
            output.status.success(),
            "generating certificates failed (is openssl installed? apt-get install openssl):\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        TlsFiles {
            ca: dir.join("ca.crt"),
            server_cert: dir.join("server.crt"),
            server_key: dir.join("server.key"),
            client_cert: dir.join("client.crt"),
            client_key: dir.join("client.key"),
        }
    }
}

/// A throwaway single-node etcd on loopback.
#[derive(Debug)]
pub struct EtcdServer {
    dir: PathBuf,
    /// The member's name, unique to this server: readiness checks that the etcd answering on the port is
    /// this one (a concurrent test's etcd can hold a port picked free here).
    name: String,
    client_addr: SocketAddr,
    tls: bool,
    process: Process,
}

impl EtcdServer {
    /// Starts etcd and waits until `/health` answers.
    pub fn start() -> EtcdServer {
        Self::start_with_args(&[])
    }

    /// Starts etcd with extra command-line flags (e.g.
    /// `--experimental-watch-progress-notify-interval=1s`).
    pub fn start_with_args(extra: &[&str]) -> EtcdServer {
        Self::start_inner(extra, None)
    }

    /// Starts etcd serving clients over HTTPS with these files, requiring client
    /// certificates signed by the CA.
    pub fn start_tls(tls: &TlsFiles) -> EtcdServer {
        Self::start_inner(&[], Some(tls))
    }

    fn start_inner(extra: &[&str], tls: Option<&TlsFiles>) -> EtcdServer {
        boot_on_free_ports(|| Self::configure(extra, tls), Self::try_boot)
    }

    fn configure(extra: &[&str], tls: Option<&TlsFiles>) -> EtcdServer {
        let program = match std::env::var_os("ETCD_BIN") {
            Some(bin) => PathBuf::from(bin),
            None => which("etcd")
                .unwrap_or_else(|| panic!("etcd not found: apt-get install etcd-server (or set ETCD_BIN)")),
        };
        let dir = temp_dir("etcd-json-etcd");
        let name = dir.file_name().map_or_else(|| "test".to_owned(), |n| n.to_string_lossy().into_owned());
        let client_port = free_port();
        let peer_port = free_port();
        let scheme = if tls.is_some() { "https" } else { "http" };
        let client_url = format!("{scheme}://127.0.0.1:{client_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let mut args: Vec<String> = vec![
            format!("--name={name}"),
            format!("--data-dir={}", dir.join("data").display()),
            format!("--listen-client-urls={client_url}"),
            format!("--advertise-client-urls={client_url}"),
            format!("--listen-peer-urls={peer_url}"),
            format!("--initial-advertise-peer-urls={peer_url}"),
            format!("--initial-cluster={name}={peer_url}"),
            "--initial-cluster-state=new".into(),
            "--logger=zap".into(),
            "--log-outputs=stderr".into(),
            "--log-level=warn".into(),
        ];
        if let Some(tls) = tls {
            args.push(format!("--cert-file={}", tls.server_cert.display()));
            args.push(format!("--key-file={}", tls.server_key.display()));
            args.push(format!("--trusted-ca-file={}", tls.ca.display()));
            args.push("--client-cert-auth".into());
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        EtcdServer {
            tls: tls.is_some(),
            process: Process { program, args, log: dir.join("etcd.log"), child: None },
            dir,
            name,
            client_addr: SocketAddr::from(([127, 0, 0, 1], client_port)),
        }
    }

    fn boot(&mut self) {
        if let Err(e) = self.try_boot() {
            panic!("{e}");
        }
    }

    fn try_boot(&mut self) -> Result<(), String> {
        self.process.spawn();
        let addr = self.client_addr;
        let tls = self.tls;
        let name = self.name.clone();
        self.process.try_wait_ready("etcd", || {
            if tls {
                // No TLS probe here: an open client port means etcd is serving.
                return TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok();
            }
            let healthy = matches!(
                http_probe(addr, "GET /health HTTP/1.0\r\nHost: localhost\r\n\r\n"),
                Some((200, body)) if body.contains("true")
            );
            // Healthy, and ours: another test's etcd may serve on this port while ours failed to bind it.
            healthy
                && matches!(
                    http_probe(addr, MEMBER_LIST),
                    Some((200, body)) if body.contains(&format!("\"name\":\"{name}\""))
                )
        })
    }

    /// The client URL, `http://127.0.0.1:<port>` (`https://` for [`EtcdServer::start_tls`]).
    pub fn endpoint(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.client_addr)
    }

    /// The member's name (unique to this server).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The client address.
    pub fn addr(&self) -> SocketAddr {
        self.client_addr
    }

    /// The temporary directory (data in `data/`, log in `etcd.log`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Kills the server (SIGKILL); the data stays for [`EtcdServer::restart`].
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// Kills the server if it runs, starts it again on the same ports and data, and waits
    /// until it is ready.
    pub fn restart(&mut self) {
        self.process.kill();
        self.boot();
    }

    /// Whether the server process is running.
    pub fn is_running(&mut self) -> bool {
        self.process.is_running()
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        self.process.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A throwaway Node antietcd 1.3.1 (in memory) on loopback.
#[derive(Debug)]
pub struct NodeAntietcd {
    dir: PathBuf,
    addr: SocketAddr,
    process: Process,
}

impl NodeAntietcd {
    /// Starts antietcd and waits until `/v3/maintenance/status` answers.
    pub fn start() -> NodeAntietcd {
        Self::start_with_args(&[])
    }

    /// Starts antietcd with extra command-line options (e.g. `--compact_revisions`, `5`).
    pub fn start_with_args(extra: &[&str]) -> NodeAntietcd {
        boot_on_free_ports(|| Self::configure(extra), Self::try_boot)
    }

    fn configure(extra: &[&str]) -> NodeAntietcd {
        let node_dir = match std::env::var_os("ANTIETCD_NODE_DIR") {
            Some(dir) => PathBuf::from(dir),
            None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.cache/node"),
        };
        let program = node_dir.join("node_modules/.bin/antietcd");
        if !program.is_file() {
            panic!(
                "antietcd not found at {}: run: npm install --prefix .cache/node antietcd@1.3.1 \
                 (in the workspace root, or set ANTIETCD_NODE_DIR)",
                program.display()
            );
        }
        let dir = temp_dir("etcd-json-antietcd");
        let port = free_port();
        let mut args: Vec<String> =
            vec!["--port".into(), port.to_string(), "--ip".into(), "127.0.0.1".into()];
        args.extend(extra.iter().map(|s| s.to_string()));
        NodeAntietcd {
            process: Process { program, args, log: dir.join("antietcd.log"), child: None },
            dir,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        }
    }

    fn boot(&mut self) {
        if let Err(e) = self.try_boot() {
            panic!("{e}");
        }
    }

    fn try_boot(&mut self) -> Result<(), String> {
        self.process.spawn();
        let addr = self.addr;
        let pid = self.process.child.as_ref().map(Child::id);
        self.process.try_wait_ready("antietcd", || {
            let request = "POST /v3/maintenance/status HTTP/1.0\r\nHost: localhost\r\n\
                           Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{}";
            // Answering, and ours: another test's server may answer on this port while ours failed to
            // bind it (antietcd has no name to ask for, so ask the kernel who listens).
            matches!(http_probe(addr, request), Some((200, _)))
                && pid.is_none_or(|pid| listens_on(pid, addr.port()))
        })
    }

    /// The client URL, `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Kills the server. Its data (in memory) is lost.
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// Kills the server if it runs and starts it again on the same port (empty).
    pub fn restart(&mut self) {
        self.process.kill();
        self.boot();
    }
}

impl Drop for NodeAntietcd {
    fn drop(&mut self) {
        self.process.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The readiness check tells our child's listener from anyone else's on the same port.
    #[test]
    fn listens_on_names_the_process_that_listens() {
        let listener = TcpListener::bind(("127.0.0.1", free_port())).unwrap();
        let port = listener.local_addr().unwrap().port();
        assert!(listens_on(std::process::id(), port), "this process listens on {port}");
        let mut other = Command::new("sleep").arg("5").spawn().unwrap();
        if cfg!(target_os = "linux") {
            assert!(!listens_on(other.id(), port), "sleep does not listen on {port}");
            drop(listener);
            assert!(!listens_on(std::process::id(), port), "closed");
        }
        let _ = other.kill();
        let _ = other.wait();
    }
}
