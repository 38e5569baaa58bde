//! The services under test: start every replica as a child process with its templated command
//! and environment, learn its address, wait for readiness, capture its output to
//! `services/<service>-<replica>.log`, watch for it dying mid-run, and always stop it.
//!
//! "Always" means: on a normal end and on error (via [`Services::stop`]), on Ctrl-C (the CLI
//! calls `stop` from its signal handler path), and when reprod itself is killed — every child
//! runs in its own process group with a parent-death signal, and is killed on drop.

#![deny(missing_docs)]

pub mod logs;
mod sys;

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use std::sync::atomic::{AtomicU64, Ordering};

use reprod_history::{Event, Recorder, RunClock, ServiceEventRecord, ServiceLogRecord};
use reprod_scenario::{Reset, Scenario, ServiceKind, Template, Var, host_of, is_loopback};
use tokio::io::AsyncWriteExt;
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, oneshot, watch};

/// Lines of each replica's output kept in memory for error messages.
const TAIL_LINES: usize = 20;
/// How long a replica gets to exit after SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// How long the output of a replica that exited is still read.
const PUMP_DRAIN: Duration = Duration::from_secs(1);

/// Values the service templates may use, besides the per-replica ones.
#[derive(Clone, Debug, Default)]
pub struct Bindings {
    /// `{run_dir}`.
    pub run_dir: PathBuf,
    /// `{database.url}`.
    pub database_url: Option<String>,
    /// `database_url` is reprod's database proxy: each replica's URL names it
    /// (`application_name=<service>/<replica>`), so its statements do.
    pub database_proxied: bool,
    /// `{dependency.NAME.url}`.
    pub dependency_urls: BTreeMap<String, String>,
    /// `{sink.NAME.url}`.
    pub sink_urls: BTreeMap<String, String>,
    /// reprod's OTLP/HTTP receiver (`http://127.0.0.1:PORT`), when a service uses
    /// `{otlp.url}`; each replica gets its own path under it, so what it sends names it.
    pub otlp_url: Option<String>,
}

/// One replica as started: where it listens and what it is.
#[derive(Clone, Debug)]
pub struct Replica {
    /// Base URL, no trailing slash.
    pub url: String,
    /// `service/index`, as recorded on attempts.
    pub instance: String,
    /// Version label.
    pub version: String,
}

/// Why services could not be started or kept running.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// A template could not be filled.
    #[error("service {service}: cannot fill {var} in its command or env")]
    Template {
        /// Service.
        service: String,
        /// The placeholder.
        var: String,
    },
    /// The process could not be spawned.
    #[error("service {service} replica {replica}: cannot start {program:?}: {source}")]
    Spawn {
        /// Service.
        service: String,
        /// Replica.
        replica: u32,
        /// Program.
        program: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// It did not become ready in time, or exited first.
    #[error(
        "service {service} replica {replica} did not become ready: {reason}\n--- last lines of {log} ---\n{tail}"
    )]
    NotReady {
        /// Service.
        service: String,
        /// Replica.
        replica: u32,
        /// What happened.
        reason: String,
        /// Its log file.
        log: String,
        /// Its last output lines.
        tail: String,
    },
    /// It said it listens somewhere reprod may not send load.
    #[error(
        "service {service} replica {replica} listens at {url}, which is not loopback; list the host in allow_hosts to permit it"
    )]
    NotLoopback {
        /// Service.
        service: String,
        /// Replica.
        replica: u32,
        /// The URL.
        url: String,
    },
    /// The service's `prepare` or `reset` command failed.
    #[error(
        "service {service}: its {what} command failed: {reason}\n--- last lines of {log} ---\n{tail}"
    )]
    Prepare {
        /// `prepare` or `reset`.
        what: &'static str,
        /// Service.
        service: String,
        /// What happened.
        reason: String,
        /// Its log file.
        log: String,
        /// Its last output lines.
        tail: String,
    },
    /// The log file could not be created.
    #[error("cannot write service log {path}: {source}")]
    Log {
        /// The file.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
}

/// A replica that exited while the run still needed it.
#[derive(Clone, Debug)]
pub struct Death {
    /// Service.
    pub service: String,
    /// Replica.
    pub replica: u32,
    /// Exit status as text.
    pub status: String,
    /// Its log file.
    pub log: String,
    /// Its last output lines.
    pub tail: String,
}

impl std::fmt::Display for Death {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "service {} replica {} exited during the run ({})\n--- last lines of {} ---\n{}",
            self.service, self.replica, self.status, self.log, self.tail
        )
    }
}

/// Every running replica of every service.
#[derive(Debug)]
pub struct Services {
    output: Arc<OutputCounts>,
    logs: Vec<Arc<LogCounts>>,
    replicas: Vec<Vec<Replica>>,
    supervisors: Vec<(watch::Sender<bool>, oneshot::Receiver<()>)>,
    deaths: mpsc::Receiver<Death>,
}

type Tail = Arc<Mutex<VecDeque<String>>>;

impl Services {
    /// Starts every service of `scenario` and waits until each replica is ready.
    pub async fn start(
        scenario: &Scenario,
        bindings: &Bindings,
        clock: RunClock,
        recorder: &Recorder,
    ) -> Result<Services, ServiceError> {
        let (death_tx, deaths) = mpsc::channel(64);
        let mut services = Services {
            output: Arc::new(OutputCounts::default()),
            logs: Vec::new(),
            replicas: Vec::new(),
            supervisors: Vec::new(),
            deaths,
        };
        let log_dir = bindings.run_dir.join("services");
        std::fs::create_dir_all(&log_dir).map_err(|source| ServiceError::Log {
            path: log_dir.display().to_string(),
            source,
        })?;
        // Ports handed out in this run: a replica that has not bound its port yet still has it.
        let taken = std::sync::Mutex::new(Vec::new());
        for service in &scenario.services {
            let mut targets = Vec::new();
            match &service.kind {
                ServiceKind::External { url } => {
                    // A service reprod does not start gets its state reset before each run.
                    if let Some(Reset::Command { argv, cwd }) = &service.reset {
                        let spec =
                            ReplicaSpec::one_shot(service, argv, Some(cwd), &[], &taken, scenario);
                        let step = OneShot::Reset;
                        if let Err(e) =
                            run_once(&spec, step, bindings, &log_dir, clock, recorder).await
                        {
                            services.stop().await;
                            return Err(e);
                        }
                    }
                    targets.push(Replica {
                        url: url.clone(),
                        instance: format!("{}/0", service.name),
                        version: service.versions[0].clone(),
                    })
                }
                ServiceKind::Command { command, env } => {
                    let log_counts = service.logs.as_ref().map(|spec| {
                        let counts = Arc::new(LogCounts {
                            service: service.name.clone(),
                            max_lines: spec.max_lines,
                            ..LogCounts::default()
                        });
                        services.logs.push(Arc::clone(&counts));
                        (Arc::new(logs::LogReader::new(spec)), counts)
                    });
                    if let Some(prepare) = &service.prepare {
                        let cwd = service.cwd.as_deref();
                        let spec =
                            ReplicaSpec::one_shot(service, prepare, cwd, env, &taken, scenario);
                        if let Err(e) =
                            run_once(&spec, OneShot::Prepare, bindings, &log_dir, clock, recorder)
                                .await
                        {
                            services.stop().await;
                            return Err(e);
                        }
                    }
                    for replica in 0..service.replicas {
                        let version =
                            service.versions[replica as usize % service.versions.len()].clone();
                        let spec = ReplicaSpec {
                            ports: service.ports,
                            taken: &taken,
                            service: &service.name,
                            cwd: service.cwd.as_deref(),
                            replica,
                            version: &version,
                            command,
                            env,
                            pressure_args: &service.pressure_args,
                            pressure_env: &service.pressure_env,
                            stdout_prefix: service.stdout_prefix.as_deref(),
                            stdout_regex: service.stdout_regex.as_deref(),
                            ready_path: service.ready_path.as_deref(),
                            ready_timeout: service.ready_timeout,
                            allow_hosts: &scenario.allow_hosts,
                            logs: log_counts.as_ref(),
                        };
                        // On error the replicas started so far are stopped by Drop (kill_on_drop
                        // in their supervisors); stop them properly first.
                        match start_replica(
                            &spec,
                            bindings,
                            &log_dir,
                            clock,
                            recorder,
                            death_tx.clone(),
                            &services.output,
                        )
                        .await
                        {
                            Ok((target, supervisor)) => {
                                targets.push(target);
                                services.supervisors.push(supervisor);
                            }
                            Err(e) => {
                                services.stop().await;
                                return Err(e);
                            }
                        }
                    }
                }
            }
            services.replicas.push(targets);
        }
        Ok(services)
    }

    /// What reading the replicas' output came to (lines cut, invalid UTF-8).
    pub fn output(&self) -> &OutputCounts {
        &self.output
    }

    /// Per service with `logs`: the lines kept, dropped and unparsable so far.
    pub fn log_counts(&self) -> &[Arc<LogCounts>] {
        &self.logs
    }

    /// Every service's replicas, in scenario order.
    pub fn replicas(&self) -> &[Vec<Replica>] {
        &self.replicas
    }

    /// Resolves when a replica exits on its own; pending forever while all are alive.
    pub async fn died(&mut self) -> Death {
        match self.deaths.recv().await {
            Some(death) => death,
            None => std::future::pending().await,
        }
    }

    /// SIGTERM to every replica's process group, SIGKILL after a grace period; returns when all
    /// have exited.
    pub async fn stop(&mut self) {
        for (stop, _) in &self.supervisors {
            let _ = stop.send(true);
        }
        for (_, done) in self.supervisors.drain(..) {
            let _ = done.await;
        }
    }
}

struct ReplicaSpec<'a> {
    service: &'a str,
    /// Where `{port}` comes from (see `Service::ports`).
    ports: Option<(u16, u16)>,
    /// Ports handed out in this run: a replica that has not bound its port yet still has it.
    taken: &'a std::sync::Mutex<Vec<u16>>,
    cwd: Option<&'a Path>,
    replica: u32,
    version: &'a str,
    command: &'a [Template],
    env: &'a [(String, Template)],
    pressure_args: &'a [Template],
    pressure_env: &'a [(String, Template)],
    stdout_prefix: Option<&'a str>,
    stdout_regex: Option<&'a str>,
    ready_path: Option<&'a str>,
    ready_timeout: Duration,
    allow_hosts: &'a [String],
    /// How its lines are read into the history, and the service's counts.
    logs: Option<&'a (Arc<logs::LogReader>, Arc<LogCounts>)>,
}

impl<'a> ReplicaSpec<'a> {
    /// A command run once for `service` (its `prepare` or `reset`), as replica 0 of its first
    /// version, with no readiness to wait for: it must exit within `prepare_timeout`.
    fn one_shot(
        service: &'a reprod_scenario::Service,
        command: &'a [Template],
        cwd: Option<&'a Path>,
        env: &'a [(String, Template)],
        taken: &'a std::sync::Mutex<Vec<u16>>,
        scenario: &'a Scenario,
    ) -> ReplicaSpec<'a> {
        ReplicaSpec {
            ports: None,
            taken,
            service: &service.name,
            cwd,
            replica: 0,
            version: &service.versions[0],
            command,
            env,
            pressure_args: &[],
            pressure_env: &[],
            stdout_prefix: None,
            stdout_regex: None,
            ready_path: None,
            ready_timeout: service.prepare_timeout,
            allow_hosts: &scenario.allow_hosts,
            // A one-shot command's output is its log file's, not the history's.
            logs: None,
        }
    }
}

/// A command run once before the load: a `prepare` or a `reset`.
#[derive(Clone, Copy)]
enum OneShot {
    Prepare,
    Reset,
}

impl OneShot {
    fn name(self) -> &'static str {
        match self {
            OneShot::Prepare => "prepare",
            OneShot::Reset => "reset",
        }
    }
}

/// Runs a service's `prepare` command (migrations, seeds) once, before any replica starts, with
/// the service's env and cwd — or the `reset` of a service at a url, in the scenario's
/// directory — its output in `services/<service>-prepare.log` (or `-reset.log`), within its
/// deadline. It must exit 0.
async fn run_once(
    spec: &ReplicaSpec<'_>,
    step: OneShot,
    bindings: &Bindings,
    log_dir: &Path,
    clock: RunClock,
    recorder: &Recorder,
) -> Result<(), ServiceError> {
    let argv: Vec<String> = spec
        .command
        .iter()
        .map(|t| render(t, spec, bindings, 0))
        .collect::<Result<_, _>>()?;
    let program = resolve_program(&argv[0]);
    let program = match spec.cwd {
        Some(dir) if program.is_relative() && program.components().count() > 1 => {
            dir.join(&program)
        }
        _ => program,
    };
    let log_path = log_dir.join(format!("{}-{}.log", spec.service, step.name()));
    let log_error = |source| ServiceError::Log {
        path: log_path.display().to_string(),
        source,
    };
    let log = std::fs::File::create(&log_path).map_err(log_error)?;
    let mut cmd = Command::new(&program);
    cmd.args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(log.try_clone().map_err(log_error)?)
        .stderr(log)
        .kill_on_drop(true)
        .process_group(0);
    if let Some(dir) = spec.cwd {
        cmd.current_dir(dir);
    }
    for (name, t) in spec.env {
        cmd.env(name, render(t, spec, bindings, 0)?);
    }
    #[allow(unsafe_code)]
    // SAFETY: the closure runs between fork and exec and only makes the async-signal-safe calls
    // in `sys::die_with_parent`.
    unsafe {
        cmd.pre_exec(sys::die_with_parent);
    }
    let failed = |reason: String| ServiceError::Prepare {
        what: step.name(),
        service: spec.service.to_string(),
        reason,
        log: log_path.display().to_string(),
        tail: last_lines(&log_path),
    };
    let mut child = cmd.spawn().map_err(|source| ServiceError::Spawn {
        service: spec.service.to_string(),
        replica: 0,
        program: program.display().to_string(),
        source,
    })?;
    let pid = child.id().unwrap_or(0);
    let started = clock.now_us();
    let event = |event: &str, detail: String| {
        Event::Service(Box::new(ServiceEventRecord {
            service: spec.service.to_string(),
            replica: -1,
            version: spec.version.to_string(),
            at_us: clock.now_us(),
            event: event.to_string(),
            detail,
        }))
    };
    recorder
        .record(event(&format!("{}_started", step.name()), argv.join(" ")))
        .await;
    match tokio::time::timeout(spec.ready_timeout, child.wait()).await {
        Ok(Ok(status)) if status.success() => {
            recorder
                .record(event(
                    match step {
                        OneShot::Prepare => "prepared",
                        OneShot::Reset => "reset_done",
                    },
                    format!("in {} ms", (clock.now_us() - started) / 1000),
                ))
                .await;
            Ok(())
        }
        Ok(Ok(status)) => Err(failed(format!("it exited {status}"))),
        Ok(Err(e)) => Err(failed(format!("waiting for it failed: {e}"))),
        Err(_) => {
            sys::signal_group(pid, sys::SIGKILL);
            let _ = child.wait().await;
            Err(failed(format!(
                "it did not finish within {:?} (prepare_timeout), and was killed",
                spec.ready_timeout
            )))
        }
    }
}

/// The last lines of a log file, for an error message.
fn last_lines(path: &Path) -> String {
    let text = std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(TAIL_LINES)..].join("\n");
    if tail.is_empty() {
        "(no output)".to_string()
    } else {
        tail
    }
}

fn free_port(range: Option<(u16, u16)>, taken: &mut Vec<u16>) -> std::io::Result<u16> {
    // Bind-then-release: the port may in principle be taken again before the child binds it;
    // scenarios that can, use `ready.stdout` with port 0 instead.
    let port = match range {
        None => std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port(),
        Some((lo, hi)) => (lo..=hi)
            .filter(|p| !taken.contains(p))
            .find(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok())
            .ok_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::AddrInUse,
                    format!("no free port left in ports = \"{lo}-{hi}\"; widen the range"),
                )
            })?,
    };
    taken.push(port);
    Ok(port)
}

fn render(
    t: &Template,
    spec: &ReplicaSpec<'_>,
    bindings: &Bindings,
    port: u16,
) -> Result<String, ServiceError> {
    t.render(|var, out| {
        match var {
            Var::Port => out.push_str(&port.to_string()),
            Var::RunDir => out.push_str(&bindings.run_dir.display().to_string()),
            Var::Replica => out.push_str(&spec.replica.to_string()),
            Var::Version => out.push_str(spec.version),
            Var::DatabaseUrl => match &bindings.database_url {
                Some(url) if bindings.database_proxied && !url.contains("application_name=") => {
                    let sep = if url.contains('?') { '&' } else { '?' };
                    let _ = write!(
                        out,
                        "{url}{sep}application_name={}%2F{}",
                        spec.service, spec.replica
                    );
                }
                Some(url) => out.push_str(url),
                None => return false,
            },
            Var::DatabasePart(part) => match bindings.database_url.as_deref().map(|u| part.of(u)) {
                Some(Some(value)) => out.push_str(&value),
                _ => return false,
            },
            Var::DependencyUrl(name) => match bindings.dependency_urls.get(name) {
                Some(url) => out.push_str(url),
                None => return false,
            },
            Var::SinkUrl(name) => match bindings.sink_urls.get(name) {
                Some(url) => out.push_str(url),
                None => return false,
            },
            Var::OtlpUrl => match &bindings.otlp_url {
                Some(url) => {
                    let _ = write!(out, "{url}/r/{}/{}", spec.service, spec.replica);
                }
                None => return false,
            },
            _ => return false,
        }
        true
    })
    .map_err(|var| ServiceError::Template {
        service: spec.service.to_string(),
        var: var.to_string(),
    })
}

/// A program name without a slash is looked for next to the reprod executable first (where
/// `cargo build` puts the workspace's binaries), then on `PATH`.
fn resolve_program(program: &str) -> PathBuf {
    if !program.contains('/')
        && let Ok(exe) = std::env::current_exe()
        && let Some(dir) = exe.parent()
    {
        let sibling = dir.join(program);
        if sibling.is_file() {
            return sibling;
        }
    }
    PathBuf::from(program)
}

async fn start_replica(
    spec: &ReplicaSpec<'_>,
    bindings: &Bindings,
    log_dir: &Path,
    clock: RunClock,
    recorder: &Recorder,
    deaths: mpsc::Sender<Death>,
    counts: &Arc<OutputCounts>,
) -> Result<(Replica, (watch::Sender<bool>, oneshot::Receiver<()>)), ServiceError> {
    let uses_port = spec
        .command
        .iter()
        .chain(spec.env.iter().map(|(_, t)| t))
        .any(|t| t.uses(|v| *v == Var::Port));
    let port = if uses_port {
        free_port(
            spec.ports,
            &mut spec.taken.lock().unwrap_or_else(|p| p.into_inner()),
        )
        .map_err(|source| ServiceError::Spawn {
            service: spec.service.to_string(),
            replica: spec.replica,
            program: "(port allocation)".to_string(),
            source,
        })?
    } else {
        0
    };
    let mut argv = Vec::new();
    for t in spec.command.iter().chain(spec.pressure_args) {
        argv.push(render(t, spec, bindings, port)?);
    }
    let program = resolve_program(&argv[0]);
    let log_path = log_dir.join(format!("{}-{}.log", spec.service, spec.replica));
    let log_file =
        tokio::fs::File::create(&log_path)
            .await
            .map_err(|source| ServiceError::Log {
                path: log_path.display().to_string(),
                source,
            })?;
    let log = Arc::new(tokio::sync::Mutex::new(tokio::io::BufWriter::new(log_file)));

    if let Some(dir) = spec.cwd
        && !dir.is_dir()
    {
        return Err(ServiceError::Spawn {
            service: spec.service.to_string(),
            replica: spec.replica,
            program: program.display().to_string(),
            source: std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("its cwd {} is not a directory", dir.display()),
            ),
        });
    }
    // A relative program with a slash (./server.sh) is looked for in the service's cwd.
    let program = match spec.cwd {
        Some(dir) if program.is_relative() && program.components().count() > 1 => {
            dir.join(&program)
        }
        _ => program,
    };
    let mut cmd = Command::new(&program);
    if let Some(dir) = spec.cwd {
        cmd.current_dir(dir);
    }
    cmd.args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .process_group(0);
    for (name, t) in spec.env.iter().chain(spec.pressure_env) {
        cmd.env(name, render(t, spec, bindings, port)?);
    }
    // SAFETY-relevant code lives in `sys`; this closure only calls it.
    #[allow(unsafe_code)]
    // SAFETY: the closure runs between fork and exec and only makes the async-signal-safe calls
    // in `sys::die_with_parent`.
    unsafe {
        cmd.pre_exec(sys::die_with_parent);
    }
    let mut child: Child = cmd.spawn().map_err(|source| ServiceError::Spawn {
        service: spec.service.to_string(),
        replica: spec.replica,
        program: program.display().to_string(),
        source,
    })?;
    let pid = child.id().unwrap_or(0);
    let event = |at_us, event: &str, detail: String| {
        Event::Service(Box::new(ServiceEventRecord {
            service: spec.service.to_string(),
            replica: i64::from(spec.replica),
            version: spec.version.to_string(),
            at_us,
            event: event.to_string(),
            detail,
        }))
    };
    recorder
        .record(event(
            clock.now_us(),
            "started",
            format!("pid {pid}: {}", argv.join(" ")),
        ))
        .await;

    let tail: Tail = Arc::new(Mutex::new(VecDeque::new()));
    let (url_tx, mut url_rx) = mpsc::channel::<String>(1);
    let stdout = child.stdout.take().expect("stdout is piped");
    let stderr = child.stderr.take().expect("stderr is piped");
    let tap = spec.logs.map(|(reader, counts)| {
        Arc::new(LogTap {
            reader: Arc::clone(reader),
            counts: Arc::clone(counts),
            recorder: recorder.clone(),
            clock,
            service: Arc::from(spec.service),
            replica: i64::from(spec.replica),
            version: Arc::from(spec.version),
        })
    });
    let out_pump = tokio::spawn(pump(
        stdout,
        Arc::clone(&log),
        Arc::clone(&tail),
        tap.clone(),
        match (spec.stdout_prefix, spec.stdout_regex) {
            (Some(prefix), _) => Some(LineMatch::Prefix(prefix.to_string())),
            // Validated when the scenario loaded.
            (None, Some(regex)) => regex_lite::Regex::new(regex).ok().map(LineMatch::Regex),
            (None, None) => None,
        },
        Some(url_tx),
        Arc::clone(counts),
    ));
    let err_pump = tokio::spawn(pump(
        stderr,
        Arc::clone(&log),
        Arc::clone(&tail),
        tap,
        None,
        None,
        Arc::clone(counts),
    ));

    let not_ready = |reason: String, tail: &Tail| ServiceError::NotReady {
        service: spec.service.to_string(),
        replica: spec.replica,
        reason,
        log: log_path.display().to_string(),
        tail: tail_text(tail),
    };
    let deadline = Instant::now() + spec.ready_timeout;
    let waits_for_line = spec.stdout_prefix.is_some() || spec.stdout_regex.is_some();
    let line_wanted = match (spec.stdout_prefix, spec.stdout_regex) {
        (Some(prefix), _) => format!("a line starting with {prefix:?}"),
        (None, Some(regex)) => format!("a line matching {regex:?}"),
        (None, None) => String::new(),
    };
    let url = if waits_for_line {
        tokio::select! {
            url = url_rx.recv() => match url {
                // A readiness line without a captured address: the address is `{port}`'s.
                Some(url) if url.trim().is_empty() => format!("http://127.0.0.1:{port}"),
                Some(url) => url.trim().trim_end_matches('/').to_string(),
                None => {
                    let status = child.wait().await.map(|s| s.to_string()).unwrap_or_default();
                    return Err(not_ready(format!("it exited ({status}) before printing its address"), &tail));
                }
            },
            status = child.wait() => {
                let status = status.map(|s| s.to_string()).unwrap_or_default();
                tokio::time::sleep(Duration::from_millis(50)).await;
                return Err(not_ready(format!("it exited ({status})"), &tail));
            }
            _ = tokio::time::sleep_until(deadline.into()) => {
                return Err(not_ready(format!("no {line_wanted} within {:?}", spec.ready_timeout), &tail));
            }
        }
    } else {
        format!("http://127.0.0.1:{port}")
    };
    match host_of(&url) {
        Some(host) if is_loopback(host) || spec.allow_hosts.iter().any(|h| h == host) => {}
        _ => {
            return Err(ServiceError::NotLoopback {
                service: spec.service.to_string(),
                replica: spec.replica,
                url,
            });
        }
    }
    if let Some(path) = spec.ready_path {
        let probe = format!("{url}{path}");
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                tokio::time::sleep(Duration::from_millis(50)).await;
                return Err(not_ready(format!("it exited ({status})"), &tail));
            }
            if probe_ok(&probe).await {
                break;
            }
            if Instant::now() >= deadline {
                return Err(not_ready(
                    format!(
                        "GET {probe} did not answer 2xx within {:?}",
                        spec.ready_timeout
                    ),
                    &tail,
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    recorder
        .record(event(clock.now_us(), "ready", url.clone()))
        .await;

    let (stop_tx, mut stop_rx) = watch::channel(false);
    let (done_tx, done_rx) = oneshot::channel();
    let recorder = recorder.clone();
    let (service, replica, version) = (
        spec.service.to_string(),
        spec.replica,
        spec.version.to_string(),
    );
    let log_shown = log_path.display().to_string();
    let tail_for_death = Arc::clone(&tail);
    tokio::spawn(async move {
        let record = |at_us, event: &str, detail: String| {
            Event::Service(Box::new(ServiceEventRecord {
                service: service.clone(),
                replica: i64::from(replica),
                version: version.clone(),
                at_us,
                event: event.to_string(),
                detail,
            }))
        };
        tokio::select! {
            status = child.wait() => {
                let status = status.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string());
                recorder.record(record(clock.now_us(), "exited", status.clone())).await;
                // Let the pumps drain the last lines before quoting them.
                tokio::time::sleep(Duration::from_millis(100)).await;
                let _ = deaths
                    .send(Death { service: service.clone(), replica, status, log: log_shown, tail: tail_text(&tail_for_death) })
                    .await;
            }
            _ = stop_rx.changed() => {
                sys::signal_group(pid, sys::SIGTERM);
                let status = match tokio::time::timeout(STOP_GRACE, child.wait()).await {
                    Ok(status) => status.map(|s| s.to_string()).unwrap_or_default(),
                    Err(_) => {
                        sys::signal_group(pid, sys::SIGKILL);
                        let _ = child.wait().await;
                        "killed after the grace period".to_string()
                    }
                };
                recorder.record(record(clock.now_us(), "stopped", status)).await;
            }
        }
        // Whatever ended the child, make sure nothing of its group outlives us.
        sys::signal_group(pid, sys::SIGKILL);
        // Its last lines are still in the pipes: read them (into the log file and the
        // history) before saying it stopped. Bounded, in case something else holds a pipe.
        let _ = tokio::time::timeout(PUMP_DRAIN, async {
            let _ = out_pump.await;
            let _ = err_pump.await;
        })
        .await;
        let _ = log.lock().await.flush().await;
        let _ = done_tx.send(());
    });
    Ok((
        Replica {
            url,
            instance: format!("{}/{}", spec.service, spec.replica),
            version: spec.version.to_string(),
        },
        (stop_tx, done_rx),
    ))
}

/// Longest line of a replica's output that reprod reads as a line (its readiness line, the
/// tail quoted in errors); longer lines are cut there and counted. The log file keeps every
/// byte.
pub const MAX_LINE_BYTES: usize = 64 * 1024;
/// Bytes read from a pipe at once.
const PIPE_CHUNK: usize = 64 * 1024;

/// What reading the replicas' output came to.
#[derive(Debug, Default)]
pub struct OutputCounts {
    /// Lines longer than [`MAX_LINE_BYTES`], cut.
    pub cut_lines: std::sync::atomic::AtomicU64,
    /// Lines that were not valid UTF-8 (read with replacement characters).
    pub invalid_utf8_lines: std::sync::atomic::AtomicU64,
}

/// Per service with `logs`: what became of its lines.
#[derive(Debug, Default)]
pub struct LogCounts {
    /// The service.
    pub service: String,
    /// Its `logs.max_lines`.
    pub max_lines: u64,
    /// Lines recorded in `service_logs`.
    pub kept: AtomicU64,
    /// Lines read but not recorded: past `max_lines`, or the history was behind.
    pub dropped: AtomicU64,
    /// Lines not in the format (not a JSON object, no `k=v` pair, no match).
    pub unparsable: AtomicU64,
}

/// Where one replica's lines go when its service has `logs`.
struct LogTap {
    reader: Arc<logs::LogReader>,
    counts: Arc<LogCounts>,
    recorder: Recorder,
    clock: RunClock,
    service: Arc<str>,
    replica: i64,
    version: Arc<str>,
}

impl LogTap {
    /// Reads `text` and records it, never waiting: a full history queue or the run's bound
    /// drops the line (counted) rather than stall the pump, and so the service.
    fn take(&self, text: &str) {
        let received_us = self.clock.now_us();
        let Some(line) = self.reader.read(text) else {
            if !text.trim().is_empty() {
                self.counts.unparsable.fetch_add(1, Ordering::Relaxed);
            }
            return;
        };
        let within = self
            .counts
            .kept
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |kept| {
                (kept < self.counts.max_lines).then_some(kept + 1)
            })
            .is_ok();
        if !within {
            self.counts.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let recorded = self
            .recorder
            .try_record(Event::ServiceLog(Box::new(ServiceLogRecord {
                service: Arc::clone(&self.service),
                replica: self.replica,
                version: Arc::clone(&self.version),
                received_us,
                at_us: line.wall_us.map(|wall| {
                    // The service's time is truncated to its clock's tick (a whole millisecond
                    // for `ts_ms`): the line happened within that tick and before reprod read
                    // it, whichever ends first. Output the service buffered arrives late, and
                    // its own time places it.
                    let tick = if wall % 1_000_000 == 0 {
                        1_000_000
                    } else if wall % 1_000 == 0 {
                        1_000
                    } else {
                        1
                    };
                    (self.clock.from_wall_us(wall) + tick - 1).min(received_us)
                }),
                trace_id: line.trace_id,
                key: line.key,
                level: line.level,
                message: line.message,
                fields: line.fields,
            })));
        if !recorded {
            self.counts.kept.fetch_sub(1, Ordering::Relaxed);
            self.counts.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// How a replica's readiness line is recognised.
enum LineMatch {
    /// The rest of the first line starting with this is the URL.
    Prefix(String),
    /// The first matching line; its first capture group, if any, is the URL.
    Regex(regex_lite::Regex),
}

impl LineMatch {
    /// The URL in `line` (empty when the line signals readiness without one), if it matches.
    fn url_in(&self, line: &str) -> Option<String> {
        match self {
            LineMatch::Prefix(prefix) => line.strip_prefix(prefix.as_str()).map(str::to_string),
            LineMatch::Regex(regex) => regex.captures(line).map(|c| {
                c.get(1)
                    .map_or_else(String::new, |m| m.as_str().to_string())
            }),
        }
    }
}

/// Drains one of a replica's pipes until it closes: every byte goes to the log file, each line
/// (cut at [`MAX_LINE_BYTES`], read as lossy UTF-8) to the tail and the readiness check. Never
/// stops reading early, so a chatty service never blocks on a full pipe.
async fn pump(
    mut stream: impl tokio::io::AsyncRead + Unpin,
    log: Arc<tokio::sync::Mutex<tokio::io::BufWriter<tokio::fs::File>>>,
    tail: Tail,
    tap: Option<Arc<LogTap>>,
    ready_line: Option<LineMatch>,
    url_tx: Option<mpsc::Sender<String>>,
    counts: Arc<OutputCounts>,
) {
    use tokio::io::AsyncReadExt as _;
    let mut url_tx = url_tx;
    let mut buf = vec![0u8; PIPE_CHUNK];
    let mut line: Vec<u8> = Vec::new();
    let mut cut = false;
    let finish = |line: &mut Vec<u8>, cut: &mut bool, url_tx: &mut Option<mpsc::Sender<String>>| {
        if *cut {
            counts
                .cut_lines
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        let text = match std::str::from_utf8(line) {
            Ok(t) => t.to_string(),
            Err(_) => {
                counts
                    .invalid_utf8_lines
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                String::from_utf8_lossy(line).into_owned()
            }
        };
        let text = text.trim_end_matches('\r').to_string();
        match &tap {
            // A cut line is no longer whole JSON (or whole anything).
            Some(tap) if *cut => {
                tap.counts.unparsable.fetch_add(1, Ordering::Relaxed);
            }
            Some(tap) => tap.take(&text),
            None => {}
        }
        if let (Some(matcher), Some(tx)) = (&ready_line, url_tx.as_ref())
            && let Some(url) = matcher.url_in(&text)
        {
            let _ = tx.try_send(url);
            *url_tx = None;
        }
        let mut t = tail.lock().unwrap_or_else(|p| p.into_inner());
        if t.len() == TAIL_LINES {
            t.pop_front();
        }
        t.push_back(if *cut {
            format!("{text} … [line cut at {MAX_LINE_BYTES} bytes]")
        } else {
            text
        });
        line.clear();
        *cut = false;
    };
    loop {
        let n = match stream.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let chunk = &buf[..n];
        {
            let mut w = log.lock().await;
            let _ = w.write_all(chunk).await;
            let _ = w.flush().await;
        }
        for piece in chunk.split_inclusive(|b| *b == b'\n') {
            let (body, ends) = match piece.strip_suffix(b"\n") {
                Some(body) => (body, true),
                None => (piece, false),
            };
            let room = MAX_LINE_BYTES.saturating_sub(line.len());
            if body.len() > room {
                cut = true;
            }
            line.extend_from_slice(&body[..body.len().min(room)]);
            if ends {
                finish(&mut line, &mut cut, &mut url_tx);
            }
        }
    }
    if !line.is_empty() || cut {
        finish(&mut line, &mut cut, &mut url_tx);
    }
}

fn tail_text(tail: &Tail) -> String {
    let t = tail.lock().unwrap_or_else(|p| p.into_inner());
    if t.is_empty() {
        "(no output)".to_string()
    } else {
        t.iter().cloned().collect::<Vec<_>>().join("\n")
    }
}

async fn probe_ok(url: &str) -> bool {
    let Ok(uri) = url.parse::<hyper::Uri>() else {
        return false;
    };
    let client: hyper_util::client::legacy::Client<_, http_body_util::Empty<hyper::body::Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build(hyper_util::client::legacy::connect::HttpConnector::new());
    matches!(
        tokio::time::timeout(Duration::from_secs(2), client.get(uri)).await,
        Ok(Ok(response)) if response.status().is_success()
    )
}
