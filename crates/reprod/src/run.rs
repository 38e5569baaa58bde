//! `reprod run`: applies the command line to the scenario, runs it through
//! [`reprod_run::perform`], prints the report or the JSON, and maps the verdict to the exit code.

use std::future::Future;

use reprod_report::{Format, Verdict};
use reprod_run::{Finished, Interrupt, RunError};
use reprod_scenario::Scenario;

use crate::progress::Console;
use crate::{RunArgs, exit};

/// Applies the command line's overrides to the loaded scenario. A condition named in `--only` or
/// `--without` that the scenario does not switch on is an error: running as if it had been
/// would test nothing and say nothing.
fn adjust(scenario: &mut Scenario, args: &RunArgs) -> Result<(), String> {
    let active = scenario.active_conditions();
    for (flag, named) in [("--only", &args.only), ("--without", &args.without)] {
        if let Some(c) = named.iter().find(|c| !active.contains(c)) {
            return Err(format!(
                "{flag} {c}: this scenario does not switch {c} on, so there is nothing to keep or remove; its active conditions are: {}",
                if active.is_empty() {
                    "none".to_string()
                } else {
                    active
                        .iter()
                        .map(|c| c.name())
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            ));
        }
    }
    if let Some(seed) = args.seed {
        scenario.seed = seed;
    }
    if let Some(duration) = args.duration {
        scenario.duration = duration;
    }
    if args.staging {
        scenario.keep_only(&[]);
    } else if !args.only.is_empty() {
        scenario.keep_only(&args.only);
    }
    for c in &args.without {
        scenario.neutralize(*c);
    }
    if args.stop_at_violation {
        if !scenario.checks_mid_run() {
            return Err("--stop-at-violation stops at a violation a check finds while the load runs, and no invariant of this scenario is checked then; give a SQL invariant a period, for example every = \"1s\" under its query".to_string());
        }
        scenario.stop_at_violation = true;
    }
    Ok(())
}

pub fn main(args: RunArgs) -> u8 {
    let Some(mut scenario) = crate::load(&args.scenario) else {
        return exit::USAGE;
    };
    if let Err(e) = adjust(&mut scenario, &args) {
        errln!("reprod: {e}");
        errln!("reprod: nothing was run");
        return exit::USAGE;
    }
    on_runtime(|interrupt| async move {
        let shown = args.scenario.scenario.display().to_string();
        let console = Console::new(args.quiet);
        let finished =
            match reprod_run::perform(&scenario, &shown, &args.out, &console, &interrupt).await {
                Ok(finished) => finished,
                Err(e) => return setup_failed(e),
            };
        if args.json {
            out!("{}", rendered(&finished, Format::Json));
        } else {
            out!("{}", finished.report_text());
            outln!("run directory: {}", finished.run_dir.display());
        }
        if let Some(path) = &args.junit
            && let Err(e) =
                reprod_run::session::write_whole(path, &rendered(&finished, Format::Junit))
        {
            errln!(
                "reprod: cannot write the JUnit XML to {}: {e}",
                path.display()
            );
        }
        step_summary(&finished);
        exit_code(&finished)
    })
}

/// Appends the run's Markdown summary to `$GITHUB_STEP_SUMMARY` when GitHub Actions set it.
pub fn step_summary(finished: &Finished) {
    use std::io::Write as _;
    let Some(path) = std::env::var_os("GITHUB_STEP_SUMMARY").filter(|p| !p.is_empty()) else {
        return;
    };
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .and_then(|mut f| f.write_all(rendered(finished, Format::Markdown).as_bytes()));
    if let Err(e) = written {
        errln!(
            "reprod: cannot append to GITHUB_STEP_SUMMARY ({}): {e}",
            std::path::Path::new(&path).display()
        );
    }
}

/// The run's outcome as `format` (none of these needs the plots).
fn rendered(finished: &Finished, format: Format) -> String {
    reprod_report::render(
        &finished.summary,
        format,
        &reprod_report::html::Page::default(),
    )
}

/// Says why a run could not even be set up; exit 3.
pub fn setup_failed(e: RunError) -> u8 {
    crate::failure::Failure::from(e).exit()
}

/// The exit code a run earns: 0 pass, 1 fail (also for a violation found in a run that did not
/// complete), 3 incomplete.
pub fn exit_code(finished: &Finished) -> u8 {
    match finished.summary.verdict {
        Verdict::Pass => exit::PASS,
        Verdict::Fail => exit::VIOLATED,
        Verdict::Incomplete => exit::INCOMPLETE,
    }
}

/// Runs `work` as one task on a multi-thread runtime and returns its exit code, with Ctrl-C and
/// SIGTERM turned into an [`Interrupt`] every run it starts obeys. One task on the workers
/// rather than a future polled by `block_on` on the main thread: every operation it spawns
/// would otherwise cost a cross-thread wake-up. Background tasks (servers, pumps) end with the
/// runtime.
pub fn on_runtime<F, Fut>(work: F) -> u8
where
    F: FnOnce(Interrupt) -> Fut,
    Fut: Future<Output = u8> + Send + 'static,
{
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            errln!("reprod: cannot start the async runtime: {e}");
            return exit::INCOMPLETE;
        }
    };
    let code = runtime.block_on(async move {
        let (ask, interrupt) = Interrupt::new();
        tokio::spawn(async move {
            signalled().await;
            let _ = ask.send(true);
            // The handle stays alive, so the interrupt stays asked for.
            std::future::pending::<()>().await;
        });
        tokio::spawn(work(interrupt))
            .await
            .unwrap_or(exit::INCOMPLETE)
    });
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    code
}

/// Ctrl-C or SIGTERM.
async fn signalled() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}
