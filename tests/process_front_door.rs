//! What a new user and an operator meet first, on a real `weir server`
//! process: SIGTERM stops it cleanly, two brokers cannot share a data
//! directory, a port that is taken is an error naming it, every documented
//! `WEIR_*` override works, and a closed pipe ends a command quietly.
//!
//! Processes cannot run in the simulator: under `--cfg madsim` this file
//! compiles to no tests.

#![cfg(not(madsim))]
// Starting processes and touching their files is what clippy.toml's seam
// rules keep out of weir's own code; a harness for broker processes must.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use weir::sys::net::{free_loopback_addr, SocketAddr};

/// How long a broker may take to start serving, or to stop.
const START_MAX: Duration = Duration::from_secs(30);
const STOP_MAX: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(50);

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "process_front_door=info".into()),
        )
        .with_test_writer()
        .try_init();
}

/// A temporary directory, removed when the test passes.
struct TempDir(PathBuf);

impl TempDir {
    fn new(test: &str) -> Self {
        let path = std::env::temp_dir().join(format!("weir-front-{test}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).expect("a temporary directory");
        Self(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = fs::remove_dir_all(&self.0);
        }
    }
}

/// A `weir server` process; killed if the test ends with it running.
struct Server {
    child: Option<Child>,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl Server {
    /// Starts `weir server --config <config>` with `env` set, its output in
    /// files next to the config.
    fn start(config: &Path, env: &[(&str, String)], name: &str) -> Self {
        let dir = config.parent().expect("the config sits in a directory");
        let (stdout, stderr) = (dir.join(format!("{name}.out")), dir.join(format!("{name}.err")));
        let mut command = Command::new(env!("CARGO_BIN_EXE_weir"));
        command
            .args(["server", "--config"])
            .arg(config)
            .env("RUST_LOG", "weir=info")
            .env_remove("WEIR_DATA_DIR")
            .env_remove("WEIR_LISTEN")
            .env_remove("WEIR_METRICS_LISTEN")
            .env_remove("WEIR_HTTP_LISTEN")
            .env_remove("WEIR_BROKER_ID")
            .stdin(Stdio::null())
            .stdout(fs::File::create(&stdout).unwrap())
            .stderr(fs::File::create(&stderr).unwrap());
        for (key, value) in env {
            command.env(key, value);
        }
        let child = command.spawn().expect("weir starts");
        Self { child: Some(child), stdout, stderr }
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    fn stdout(&self) -> String {
        fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    fn stderr(&self) -> String {
        fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Waits until the process prints that it serves, or fails with what it
    /// printed.
    fn wait_serving(&mut self) {
        let deadline = Instant::now() + START_MAX;
        while Instant::now() < deadline {
            if self.stdout().contains("serving on") {
                return;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("weir exited ({status}) before serving:\n{}\n{}", self.stdout(), self.stderr());
            }
            std::thread::sleep(POLL);
        }
        panic!("weir did not serve within {START_MAX:?}:\n{}\n{}", self.stdout(), self.stderr());
    }

    /// Waits for the process to exit on its own.
    fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                self.child = None;
                return status;
            }
            std::thread::sleep(POLL);
        }
        panic!("weir did not exit within {within:?}:\n{}\n{}", self.stdout(), self.stderr());
    }

    /// Sends `signal` (by name, e.g. "TERM") and waits for the exit.
    fn signal_and_wait(&mut self, signal: &str) -> ExitStatus {
        let status = Command::new("kill").arg(format!("-{signal}")).arg(self.pid().to_string()).status().unwrap();
        assert!(status.success(), "kill -{signal} failed");
        self.wait_exit(STOP_MAX)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A config file for one broker on loopback, metrics and gateway off
/// unless given.
fn write_config(dir: &Path, name: &str, broker_id: u64, data_dir: &Path, listen: SocketAddr) -> PathBuf {
    let path = dir.join(format!("{name}.toml"));
    let text = format!(
        "broker_id = {broker_id}\ndata_dir = {:?}\nlisten = \"{listen}\"\nmetrics_listen = \"off\"\n",
        data_dir.display().to_string()
    );
    fs::write(&path, text).unwrap();
    path
}

/// Runs `weir <args>` against `broker` to completion.
fn cli(broker: SocketAddr, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(args)
        .env("WEIR_BROKER", broker.to_string())
        .stdin(Stdio::null())
        .output()
        .expect("weir runs")
}

fn produce(broker: SocketAddr, topic: &str, lines: &str) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["produce", topic])
        .env("WEIR_BROKER", broker.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(lines.as_bytes()).unwrap();
    assert!(child.wait().unwrap().success(), "produce to {topic}");
}

/// Before: SIGTERM killed the process outright, and the next start
/// recovered every partition as after a crash.
#[test]
fn sigterm_stops_cleanly_and_the_next_start_is_clean() {
    init_tracing();
    let dir = TempDir::new("sigterm");
    let listen = free_loopback_addr().unwrap();
    let config = write_config(&dir.0, "broker", 1, &dir.0.join("data"), listen);

    tracing::info!("set up: a broker with a topic and three records");
    let mut server = Server::start(&config, &[], "first");
    server.wait_serving();
    assert!(cli(listen, &["topic", "create", "kept", "--partitions", "2"]).status.success());
    produce(listen, "kept", "a\nb\nc\n");

    tracing::info!("act: SIGTERM");
    let status = server.signal_and_wait("TERM");

    tracing::info!("check: a clean exit, and a clean start after it with every record");
    assert!(status.success(), "exit {status}:\n{}", server.stderr());
    assert!(server.stdout().contains("stopped cleanly"), "{}", server.stdout());
    let mut again = Server::start(&config, &[], "second");
    again.wait_serving();
    let consumed = cli(listen, &["consume", "kept", "--from", "beginning", "--max-messages", "3"]);
    let mut values: Vec<String> = String::from_utf8_lossy(&consumed.stdout).lines().map(str::to_owned).collect();
    values.sort();
    assert_eq!(values, ["a", "b", "c"]);
    // Logs go to standard output.
    assert!(
        !again.stdout().contains("unclean shutdown"),
        "the start after SIGTERM recovered as after a crash:\n{}",
        again.stdout()
    );
    // And the words do appear after a real crash: a start after kill -9
    // says "unclean shutdown", so their absence above means something.
    again.signal_and_wait("KILL");
    let mut third = Server::start(&config, &[], "third");
    third.wait_serving();
    assert!(third.stdout().contains("unclean shutdown"), "{}", third.stdout());
    let status = third.signal_and_wait("INT");
    assert!(status.success(), "exit {status}:\n{}\n{}", third.stdout(), third.stderr());
}

/// Before: two brokers with different ids on one data directory both
/// started and opened the same partition and vote files.
#[test]
fn two_brokers_cannot_share_a_data_directory() {
    init_tracing();
    let dir = TempDir::new("datadir");
    let data = dir.0.join("data");
    let first_listen = free_loopback_addr().unwrap();
    let second_listen = free_loopback_addr().unwrap();
    let first_config = write_config(&dir.0, "first", 1, &data, first_listen);
    let second_config = write_config(&dir.0, "second", 2, &data, second_listen);

    tracing::info!("set up: broker 1 runs on the directory");
    let mut first = Server::start(&first_config, &[], "first");
    first.wait_serving();

    tracing::info!("check: broker 2 on the same directory is refused while 1 runs, naming who holds it");
    let mut second = Server::start(&second_config, &[], "second");
    let status = second.wait_exit(START_MAX);
    assert!(!status.success());
    let said = second.stderr();
    assert!(said.contains("is in use by pid") && said.contains("broker 1"), "{said}");
    assert!(!second.stdout().contains("serving on"), "{}", second.stdout());

    tracing::info!("check: and after 1 stops, refused because the directory is broker 1's");
    assert!(first.signal_and_wait("TERM").success());
    let mut second = Server::start(&second_config, &[], "second-again");
    assert!(!second.wait_exit(START_MAX).success());
    let said = second.stderr();
    assert!(said.contains("belongs to broker 1") && said.contains("configured as broker 2"), "{said}");
}

/// Before: a taken gRPC port printed "serving on …" and then exited with
/// only `weir: transport error`; a taken metrics port ran without metrics.
#[test]
fn a_port_that_is_taken_is_an_error_naming_it() {
    init_tracing();
    let dir = TempDir::new("ports");
    let taken = std::net::TcpListener::bind(free_loopback_addr().unwrap()).unwrap();
    let taken_addr = taken.local_addr().unwrap();
    let free = free_loopback_addr().unwrap();
    let cases = [
        ("gRPC", vec![("WEIR_LISTEN", taken_addr.to_string())]),
        ("metrics", vec![("WEIR_LISTEN", free.to_string()), ("WEIR_METRICS_LISTEN", taken_addr.to_string())]),
        ("the HTTP gateway", vec![("WEIR_LISTEN", free.to_string()), ("WEIR_HTTP_LISTEN", taken_addr.to_string())]),
    ];
    for (what, env) in cases {
        let config = write_config(&dir.0, "broker", 1, &dir.0.join("data"), free);
        let mut server = Server::start(&config, &env, "taken");
        let status = server.wait_exit(START_MAX);
        assert!(!status.success(), "{what}: exit {status}");
        let said = server.stderr();
        assert!(said.contains(&format!("cannot listen for {what} on {taken_addr}")), "{what}: {said}");
        assert!(!server.stdout().contains("serving on"), "{what}: announced before binding:\n{}", server.stdout());
    }
}

/// Each override README documents, set alone, changes what the server does.
/// Before: `weir server` ignored `WEIR_METRICS_LISTEN` (and had no way to
/// set the gateway or the broker id from the environment).
#[test]
fn every_documented_override_works() {
    init_tracing();
    let dir = TempDir::new("env");
    let listen = free_loopback_addr().unwrap();
    let config = write_config(&dir.0, "broker", 1, &dir.0.join("data"), listen);
    type Check = Box<dyn Fn(SocketAddr) -> Result<(), String>>;
    let other_listen = free_loopback_addr().unwrap();
    let metrics = free_loopback_addr().unwrap();
    let http = free_loopback_addr().unwrap();
    let other_dir = dir.0.join("elsewhere");
    let data_check = other_dir.clone();
    let cases: Vec<(&str, String, SocketAddr, Check)> = vec![
        ("WEIR_LISTEN", other_listen.to_string(), other_listen, Box::new(|_| Ok(()))),
        (
            "WEIR_METRICS_LISTEN",
            metrics.to_string(),
            listen,
            Box::new(move |_| http_get(metrics, "/metrics").map(|body| assert!(body.contains("weir_produce")))),
        ),
        ("WEIR_HTTP_LISTEN", http.to_string(), listen, Box::new(move |_| http_get(http, "/v1/health").map(|_| ()))),
        (
            "WEIR_DATA_DIR",
            other_dir.display().to_string(),
            listen,
            Box::new(move |_| match data_check.join("broker.toml").exists() {
                true => Ok(()),
                false => Err(format!("no broker.toml in {}", data_check.display())),
            }),
        ),
        (
            "WEIR_BROKER_ID",
            "7".into(),
            listen,
            Box::new(|at| {
                let text = String::from_utf8_lossy(&cli(at, &["cluster", "status"]).stdout).into_owned();
                match text.contains("answered by broker 7") {
                    true => Ok(()),
                    false => Err(format!("broker 7 not in the cluster status:\n{text}")),
                }
            }),
        ),
    ];
    for (variable, value, serving_at, check) in cases {
        tracing::info!(variable, value, "a server with one override");
        // Each case gets a fresh data directory: a broker id is kept in it.
        let _ = fs::remove_dir_all(dir.0.join("data"));
        let _ = fs::remove_dir_all(&other_dir);
        let mut server = Server::start(&config, &[(variable, value.clone())], variable);
        server.wait_serving();
        assert!(server.stdout().contains(&format!("serving on {serving_at}")), "{variable}: {}", server.stdout());
        if let Err(problem) = check(serving_at) {
            panic!("{variable}={value}: {problem}\n{}", server.stderr());
        }
        assert!(server.signal_and_wait("TERM").success());
    }
}

/// Before: `weir topic list | head` (any command that prints, once its
/// reader has gone) panicked on the broken pipe.
#[test]
fn a_reader_that_goes_away_ends_a_command_quietly() {
    init_tracing();
    let dir = TempDir::new("pipe");
    let listen = free_loopback_addr().unwrap();
    let config = write_config(&dir.0, "broker", 1, &dir.0.join("data"), listen);
    let mut server = Server::start(&config, &[], "broker");
    server.wait_serving();
    assert!(cli(listen, &["topic", "create", "piped", "--partitions", "3"]).status.success());

    let mut child = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["topic", "describe", "piped"])
        .env("WEIR_BROKER", listen.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take()); // the reader goes away before anything is printed
    let status = child.wait().unwrap();
    let mut said = String::new();
    child.stderr.take().unwrap().read_to_string(&mut said).unwrap();
    assert!(!said.contains("panicked"), "{said}");
    assert!(status.success(), "exit {status}: {said}");
    assert!(server.signal_and_wait("TERM").success());
}

/// A bounded HTTP/1.1 GET on loopback; the body, or what went wrong.
fn http_get(at: SocketAddr, path: &str) -> Result<String, String> {
    use std::io::Write;
    let mut stream = std::net::TcpStream::connect_timeout(&at, Duration::from_secs(5)).map_err(|e| e.to_string())?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).map_err(|e| e.to_string())?;
    write!(stream, "GET {path} HTTP/1.1\r\nhost: {at}\r\nconnection: close\r\n\r\n").map_err(|e| e.to_string())?;
    let mut response = String::new();
    stream.read_to_string(&mut response).map_err(|e| e.to_string())?;
    match response.starts_with("HTTP/1.1 200") {
        true => Ok(response),
        false => Err(format!("GET {path}: {}", response.lines().next().unwrap_or(""))),
    }
}

/// The fenced block that follows `<!-- readme-test: NAME -->` in README.md.
fn readme_block(name: &str) -> String {
    let readme = fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let marker = format!("<!-- readme-test: {name} -->");
    let after = &readme[readme.find(&marker).unwrap_or_else(|| panic!("README has no {marker}")) + marker.len()..];
    let body = &after[after.find('\n').unwrap() + 1..];
    let body = &body[body.find('\n').unwrap() + 1..]; // past the opening fence
    body[..body.find("\n```").expect("a closing fence")].to_owned()
}

/// Polls `weir cluster health --brokers N` until it passes.
fn wait_healthy(brokers: usize, bootstrap: &str) -> Result<(), String> {
    let mut last = String::new();
    for _ in 0..600 {
        let output = Command::new(env!("CARGO_BIN_EXE_weir"))
            .args(["cluster", "health", "--brokers", &brokers.to_string(), "--broker", bootstrap])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        if output.status.success() {
            return Ok(());
        }
        last = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        std::thread::sleep(Duration::from_millis(200));
    }
    Err(last)
}

/// Before: README had neither a `weir server` config nor the recipe for
/// brokers as separate processes on one host. Both run here as written:
/// the recipe's three brokers form a healthy cluster, and a fourth broker
/// started from the config example (with overrides for this host) joins it.
#[test]
fn the_readme_config_and_process_recipe_run_as_written() {
    init_tracing();
    let dir = TempDir::new("readme");
    if Command::new("etcd").arg("--version").output().is_err() {
        panic!("etcd is not installed (Debian: etcd-server; .ci/setup installs it)");
    }

    tracing::info!("the config example is a valid BrokerConfig");
    let example = readme_block("server-config");
    let config: weir::broker::BrokerConfig = toml::from_str(&example).expect("README's config parses");
    assert_eq!((config.broker_id, config.etcd.len(), config.http_listen), (1, 3, None));

    tracing::info!("the process recipe, run by bash with weir on PATH, in its own process group");
    let bin = dir.0.join("bin");
    fs::create_dir_all(&bin).unwrap();
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_weir"), bin.join("weir")).unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    use std::os::unix::process::CommandExt;
    let mut recipe = Command::new("bash")
        .arg("-c")
        .arg(readme_block("process-cluster"))
        .current_dir(&dir.0)
        .env("PATH", &path)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .unwrap();
    let group = recipe.id();
    let _stop = StopGroup(group);
    let _ = recipe.wait(); // its last command may run before the brokers are up

    let bootstrap = "127.0.0.1:9092,127.0.0.1:9094,127.0.0.1:9096";
    if let Err(problems) = wait_healthy(3, bootstrap) {
        let logs: String = (1..=3)
            .map(|i| fs::read_to_string(dir.0.join(format!("weir-cluster/broker-{i}.log"))).unwrap_or_default())
            .collect();
        panic!("the recipe's cluster never became healthy: {problems}\n{logs}");
    }

    tracing::info!("weir dev --brokers 3 refuses to start its own etcd on the port this one holds");
    // Before: its probe reached this etcd, it printed "etcd serving" while
    // its own etcd had exited, and carried on.
    let dev = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["dev", "--brokers", "3", "--data-dir"])
        .arg(dir.0.join("dev"))
        .args(["--listen", "127.0.0.1:9192", "--metrics-listen", "127.0.0.1:9193", "--http-listen", "127.0.0.1:9180"])
        .env("PATH", &path)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&dev.stderr);
    assert!(!dev.status.success(), "weir dev started beside a running etcd");
    assert!(said.contains("cannot start etcd: 127.0.0.1:2379 is in use"), "{said}");
    assert!(!String::from_utf8_lossy(&dev.stdout).contains("etcd serving"));

    tracing::info!("a fourth broker from the config example, overridden for this host, joins");
    let config_path = dir.0.join("weir.toml");
    fs::write(&config_path, &example).unwrap();
    let listen = "127.0.0.1:9098".to_owned();
    let env = [
        ("WEIR_BROKER_ID", "4".to_owned()),
        ("WEIR_DATA_DIR", dir.0.join("broker-4").display().to_string()),
        ("WEIR_LISTEN", listen.clone()),
        ("WEIR_ADVERTISE", listen.clone()),
        ("WEIR_METRICS_LISTEN", "127.0.0.1:9099".to_owned()),
        ("WEIR_ETCD", "127.0.0.1:2379".to_owned()),
    ];
    let mut fourth = Server::start(&config_path, &env, "fourth");
    fourth.wait_serving();
    if let Err(problems) = wait_healthy(4, bootstrap) {
        panic!("the fourth broker did not join: {problems}\n{}", fourth.stderr());
    }
    assert!(fourth.signal_and_wait("TERM").success());
}

/// Kills, by PID, every process left in a process group when dropped: what
/// a recipe started in the background stops with the test.
struct StopGroup(u32);

impl Drop for StopGroup {
    fn drop(&mut self) {
        assert!(self.0 > 1, "a process group of our own");
        let Ok(listed) = Command::new("pgrep").arg("-g").arg(self.0.to_string()).output() else { return };
        for pid in String::from_utf8_lossy(&listed.stdout).split_whitespace() {
            if pid.parse::<u32>().is_ok_and(|pid| pid > 1 && pid != std::process::id()) {
                let _ = Command::new("kill").arg("-9").arg(pid).status();
            }
        }
    }
}
