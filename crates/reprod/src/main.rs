//! `reprod`: the command line. Parses arguments, wires the library crates together, prints,
//! and picks the exit code. Nothing else in the workspace prints.
//!
//! Exit codes (a contract): 0 every invariant and threshold held; 1 one was violated; 2 the
//! scenario or the command line is wrong (nothing ran); 3 the run could not complete.

/// `eprintln` that never panics: a closed or full stderr must not change a run's exit code.
macro_rules! errln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr().lock(), $($arg)*);
    }};
}

/// `println` that never panics: output to a closed pipe or a full disk is dropped, and the
/// exit code still says how the run went.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($arg)*);
    }};
}

/// `print!` that never panics (see [`outln!`]).
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let mut stdout = std::io::stdout().lock();
        let _ = write!(stdout, $($arg)*);
        let _ = stdout.flush();
    }};
}

mod demo;
mod failure;
mod isolate;
mod progress;
mod run;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use reprod_scenario::{Condition, Scenario};

/// mimalloc instead of glibc's allocator: the engine's worker threads and the history writer
/// allocate and free concurrently, which glibc pays for with arena locks and consolidation
/// (measured when adopted, while records still carried heap text from the engine to the writer:
/// about a tenth of the generator's CPU at full rate; see bench/generators.py).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The version `--version` prints: the package version and the commit it was built from.
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("REPROD_COMMIT"),
    ")"
);

/// Reproduce the production-load conditions that make bugs appear.
#[derive(Debug, Parser)]
#[command(name = "reprod", version = VERSION, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a scenario: start its services, drive load, record the history, check invariants.
    Run(RunArgs),
    /// Validate a scenario without running anything.
    Check(CheckArgs),
    /// Explain a stored run: a violating key's timeline, and what separates violating keys
    /// from clean ones.
    Explain(ExplainArgs),
    /// Run a reference bug end to end, naive and fixed, and show what broke: the seed's invoice
    /// system, or the gallery's scenarios.
    Demo(DemoArgs),
    /// Find which conditions are necessary for the bug: repeated trials with each condition
    /// switched off, reproduction rates with 95% intervals, and a minimal set.
    Isolate(IsolateArgs),
    /// Write a stored run in another tool's format: OTLP traces, or report.html again.
    #[command(subcommand)]
    Export(ExportCommand),
}

#[derive(Debug, Subcommand)]
enum ExportCommand {
    /// The run as OpenTelemetry traces (OTLP/JSON): each operation a trace, each attempt a
    /// client span, dependency calls and sink deliveries as server spans, violations as events.
    Otlp(OtlpArgs),
    /// Draw report.html again from a run directory's summary.json and history.
    Html(HtmlArgs),
}

#[derive(Debug, Args)]
struct OtlpArgs {
    /// A run directory (reprod-runs/<run-id>).
    run_dir: PathBuf,
    /// Send to this OTLP/HTTP endpoint (`/v1/traces` is appended), for example
    /// http://127.0.0.1:4318, instead of writing a file.
    #[arg(long, value_name = "URL")]
    endpoint: Option<String>,
    /// The file to write (default: RUN_DIR/traces.otlp.jsonl), one OTLP/JSON request a line.
    #[arg(long, value_name = "FILE", conflicts_with = "endpoint")]
    out: Option<PathBuf>,
    /// Allow an endpoint that is not on this machine (by default only loopback).
    #[arg(long)]
    allow_remote: bool,
}

#[derive(Debug, Args)]
struct HtmlArgs {
    /// A run directory (reprod-runs/<run-id>).
    run_dir: PathBuf,
    /// The file to write (default: RUN_DIR/report.html).
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct IsolateArgs {
    #[command(flatten)]
    scenario: ScenarioArgs,
    /// Trials per group (baseline, each condition off, staging, each minimal-set step); at
    /// least 1.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=1000))]
    trials: u64,
    /// Swarm trials after the groups: each switches on a seeded random subset of the active
    /// conditions (default: 12 or two per active condition, whichever is more; 0 for none).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(0..=10000))]
    swarm: Option<u64>,
    /// Load per trial (default: the scenario's duration; the scenario's drain still follows).
    #[arg(long, value_parser = parse_duration)]
    duration: Option<std::time::Duration>,
    /// Directory that receives the isolation's trial directories.
    #[arg(long, default_value = "reprod-runs")]
    out: PathBuf,
    /// Print JSON instead of the table.
    #[arg(long)]
    json: bool,
    /// Only problems and the result on stderr: no per-trial lines.
    #[arg(long, short)]
    quiet: bool,
    /// Also write the isolation's JUnit XML here (its directory has junit.xml and
    /// isolate.html).
    #[arg(long, value_name = "FILE")]
    junit: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct ExplainArgs {
    /// A run directory (reprod-runs/<run-id>).
    run_dir: PathBuf,
    /// The key whose timeline to show (default: the violating key with the fewest operations).
    #[arg(long)]
    key: Option<String>,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Debug, Args)]
struct DemoArgs {
    /// Which demo: invoices (the default, the seed's invoice service) or a gallery scenario
    /// (lost-update, stale-cache, stale-send, mixed-rollout, pool-pressure, retry-storm); see
    /// docs/gallery.md.
    #[arg(value_name = "NAME", conflicts_with = "gallery")]
    name: Option<String>,
    /// Run every gallery scenario, naive and fixed, one after another.
    #[arg(long)]
    gallery: bool,
    /// Run on PostgreSQL: reprod creates a scratch database per run on this server and drops it
    /// afterwards (default: SQLite files in the run directories).
    #[arg(long, value_name = "URL")]
    database: Option<String>,
    /// Where the run directories go (default: a new directory under the system's temp dir).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
    /// No phase notes or progress on stderr, only problems.
    #[arg(long, short)]
    quiet: bool,
}

/// Options shared by commands that load a scenario.
#[derive(Clone, Debug, Args)]
struct ScenarioArgs {
    /// The scenario file (TOML).
    scenario: PathBuf,
    /// Override a parameter from [params]; repeatable.
    #[arg(long = "set", value_name = "NAME=VALUE", value_parser = reprod_scenario::parse_set)]
    sets: Vec<(String, String)>,
}

#[derive(Clone, Debug, Args)]
struct RunArgs {
    #[command(flatten)]
    scenario: ScenarioArgs,
    /// Seed of the schedule, keys, bodies and fault decisions (default: the scenario's).
    #[arg(long)]
    seed: Option<u64>,
    /// How long to generate load, such as 30s (default: the scenario's).
    #[arg(long, value_parser = parse_duration)]
    duration: Option<std::time::Duration>,
    /// Directory that receives the run directory.
    #[arg(long, default_value = "reprod-runs")]
    out: PathBuf,
    /// Print summary.json on stdout instead of the text report.
    #[arg(long)]
    json: bool,
    /// Switch every condition to its neutral (staging) value.
    #[arg(long, conflicts_with_all = ["only", "without"])]
    staging: bool,
    /// Keep only these conditions switched on (each must be active in the scenario):
    /// overlap, slow_dependency, dependency_faults, retries, hot_keys, queue_delay, instances,
    /// mixed_versions, pool_pressure.
    #[arg(long, value_delimiter = ',', value_parser = parse_condition, conflicts_with = "without")]
    only: Vec<Condition>,
    /// Switch these conditions off (each must be active in the scenario); names as for --only.
    #[arg(long, value_delimiter = ',', value_parser = parse_condition)]
    without: Vec<Condition>,
    /// Stop the load at the first violation a mid-run check finds (a SQL invariant with
    /// `every`): a faster answer to "does it reproduce", without the per-key rate of a full
    /// run.
    #[arg(long)]
    stop_at_violation: bool,
    /// No phase notes or progress on stderr, only problems.
    #[arg(long, short)]
    quiet: bool,
    /// Also write the JUnit XML (one test case per invariant and threshold) here; every run
    /// directory has it as junit.xml.
    #[arg(long, value_name = "FILE")]
    junit: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct CheckArgs {
    #[command(flatten)]
    scenario: ScenarioArgs,
}

/// A `--duration`: the same unit syntax and the same one limit as a scenario's `duration`.
fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let duration = reprod_scenario::parse_duration(text)?;
    reprod_scenario::check_load_duration(duration)?;
    Ok(duration)
}

fn parse_condition(text: &str) -> Result<Condition, String> {
    text.parse()
}

/// Exit codes.
pub mod exit {
    /// Every invariant and threshold held.
    pub const PASS: u8 = 0;
    /// An invariant or threshold was violated.
    pub const VIOLATED: u8 = 1;
    /// The scenario or the command line is wrong; nothing ran.
    pub const USAGE: u8 = 2;
    /// The run could not complete.
    pub const INCOMPLETE: u8 = 3;
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() {
                exit::USAGE
            } else {
                exit::PASS
            });
        }
    };
    ExitCode::from(match cli.command {
        Command::Check(args) => check(&args),
        Command::Run(args) => run::main(args),
        Command::Explain(args) => explain(&args),
        Command::Demo(args) => demo::main(args),
        Command::Isolate(args) => isolate::main(args),
        Command::Export(ExportCommand::Otlp(args)) => export_otlp(args),
        Command::Export(ExportCommand::Html(args)) => export_html(&args),
    })
}

/// Loads a scenario, printing every problem; `None` means exit 2.
fn load(args: &ScenarioArgs) -> Option<Scenario> {
    match reprod_scenario::load(&args.scenario, &args.sets) {
        Ok(scenario) => Some(scenario),
        Err(e) => {
            errln!("{e}");
            let n = e.diagnostics.len();
            errln!(
                "reprod: {n} problem{} in the scenario; nothing was run",
                if n == 1 { "" } else { "s" }
            );
            None
        }
    }
}

fn check(args: &CheckArgs) -> u8 {
    let Some(scenario) = load(&args.scenario) else {
        return exit::USAGE;
    };
    let active: Vec<&str> = scenario
        .active_conditions()
        .iter()
        .map(|c| c.name())
        .collect();
    outln!("{}: ok", args.scenario.scenario.display());
    outln!(
        "  {} service(s), {} dependenc{}, {} sink(s), {} caller(s), {} invariant(s)",
        scenario.services.len(),
        scenario.dependencies.len(),
        if scenario.dependencies.len() == 1 {
            "y"
        } else {
            "ies"
        },
        scenario.sinks.len(),
        scenario.callers.len(),
        scenario.invariants.len()
    );
    outln!(
        "  seed {}, duration {:?}, at most {} operations, drain {:?}",
        scenario.seed,
        scenario.duration,
        scenario.max_ops,
        scenario.drain
    );
    outln!(
        "  conditions: {}",
        if active.is_empty() {
            "none".to_string()
        } else {
            active.join(", ")
        }
    );
    exit::PASS
}

fn explain(args: &ExplainArgs) -> u8 {
    match reprod_check::explain::explain(&args.run_dir, args.key.as_deref()) {
        Ok(explanation) => {
            if args.json {
                match serde_json::to_string_pretty(&explanation) {
                    Ok(text) => outln!("{text}"),
                    Err(e) => {
                        errln!("reprod: {e}");
                        return exit::INCOMPLETE;
                    }
                }
            } else {
                out!("{}", explanation.to_text());
            }
            exit::PASS
        }
        Err(e) => failure::Failure::from(e).exit(),
    }
}

fn export_otlp(args: OtlpArgs) -> u8 {
    use reprod_run::export::Destination;
    let to = match &args.endpoint {
        Some(url) => {
            let Some(host) = reprod_scenario::host_of(url) else {
                errln!(
                    "reprod: --endpoint {url:?} is not an http:// URL; write it like http://127.0.0.1:4318"
                );
                return exit::USAGE;
            };
            if !reprod_scenario::is_loopback(host) && !args.allow_remote {
                errln!(
                    "reprod: --endpoint {url} is not on this machine; reprod only sends to loopback unless you add --allow-remote"
                );
                return exit::USAGE;
            }
            Destination::Endpoint(url.clone())
        }
        None => Destination::File(
            args.out
                .clone()
                .unwrap_or_else(|| args.run_dir.join("traces.otlp.jsonl")),
        ),
    };
    run::on_runtime(|_| async move {
        match reprod_run::export::otlp(&args.run_dir, &to).await {
            Ok(done) => {
                let place = match &to {
                    Destination::File(path) => path.display().to_string(),
                    Destination::Endpoint(url) => format!("{url}/v1/traces"),
                };
                outln!(
                    "exported {} traces ({} spans) in {} OTLP request(s) to {place}",
                    done.traces,
                    done.spans,
                    done.requests
                );
                exit::PASS
            }
            Err(e) => failure::Failure::from(e).exit(),
        }
    })
}

fn export_html(args: &HtmlArgs) -> u8 {
    let to = args
        .out
        .clone()
        .unwrap_or_else(|| args.run_dir.join("report.html"));
    match reprod_run::export::html(&args.run_dir, &to) {
        Ok(()) => {
            outln!("{}", to.display());
            exit::PASS
        }
        Err(e) => failure::Failure::from(e).exit(),
    }
}
