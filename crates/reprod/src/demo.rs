//! `reprod demo [NAME | --gallery]`: a reference bug, naive and fixed, under the same
//! production-shaped load, with no setup — the seed's invoice system by default, or the
//! gallery's scenarios (one per production condition). The naive run should violate the demo's
//! invariant and the fixed one hold; the demo says plainly when that is not what happened.

use std::path::Path;

use serde_json::json;

use reprod_run::{Finished, Interrupt, perform};

use crate::progress::Console;
use crate::run::exit_code;
use crate::{DemoArgs, exit};

/// A built-in demo: a shipped scenario (built in, so the demo works from any directory) with a
/// `variant` parameter, and the invariant its naive variant must break.
pub(crate) struct Demo {
    /// What `reprod demo NAME` calls it.
    pub(crate) name: &'static str,
    /// The heading of its output.
    title: &'static str,
    /// The scenario as shipped, and where.
    path: &'static str,
    text: &'static str,
    /// The invariant (or threshold) the naive variant violates.
    invariant: &'static str,
    /// What "as expected" means, in words.
    expected: &'static str,
    /// Whether it belongs to the gallery (`--gallery`).
    gallery: bool,
}

/// Every built-in demo; the first is the default.
pub(crate) const DEMOS: &[Demo] = &[
    Demo {
        name: "invoices",
        title: "The seed's invoice service under production-shaped load",
        path: "scenarios/invoices.toml",
        text: include_str!("../../../scenarios/invoices.toml"),
        invariant: "one invoice per account and period",
        expected: "the naive handler duplicated invoices under overlap, the fixed one held",
        gallery: false,
    },
    Demo {
        name: "lost-update",
        title: "Gallery: overlapping updates — concurrent credits on one balance",
        path: "scenarios/gallery/lost-update.toml",
        text: include_str!("../../../scenarios/gallery/lost-update.toml"),
        invariant: "every confirmed credit is in the balance",
        expected: "the naive read-modify-write lost credits, the atomic add kept every one",
        gallery: true,
    },
    Demo {
        name: "stale-cache",
        title: "Gallery: cache divergence — plan caches on two replicas",
        path: "scenarios/gallery/stale-cache.toml",
        text: include_str!("../../../scenarios/gallery/stale-cache.toml"),
        invariant: "charges use the plan in force",
        expected: "the naive per-replica cache billed old prices after a change through the other replica, the versioned cache did not",
        gallery: true,
    },
    Demo {
        name: "stale-send",
        title: "Gallery: queue delay changing state — send jobs that outlive a void",
        path: "scenarios/gallery/stale-send.toml",
        text: include_str!("../../../scenarios/gallery/stale-send.toml"),
        invariant: "no document is sent after it was voided",
        expected: "the naive consumer emailed documents voided while their jobs waited, the stale-work check skipped them",
        gallery: true,
    },
    Demo {
        name: "mixed-rollout",
        title: "Gallery: mixed deployment state — two releases, two formats",
        path: "scenarios/gallery/mixed-rollout.toml",
        text: include_str!("../../../scenarios/gallery/mixed-rollout.toml"),
        invariant: "a refund returns what was charged",
        expected: "the naive rollout refunded wrong amounts across releases, the expand-migrate-contract rollout refunded each in full",
        gallery: true,
    },
    Demo {
        name: "pool-pressure",
        title: "Gallery: resource contention — a connection held across a slow call",
        path: "scenarios/gallery/pool-pressure.toml",
        text: include_str!("../../../scenarios/gallery/pool-pressure.toml"),
        invariant: "one receipt per request",
        expected: "the naive handler queued for connections until clients retried into duplicate receipts, the short critical section never made them wait",
        gallery: true,
    },
    Demo {
        name: "retry-storm",
        title: "Gallery: retries multiplying work — a half-second slowdown that never ends",
        path: "scenarios/gallery/retry-storm.toml",
        text: include_str!("../../../scenarios/gallery/retry-storm.toml"),
        invariant: "min_goodput_rps",
        expected: "after the slowdown the naive service's goodput collapsed under retries and abandoned work, the fixed one recovered at once",
        gallery: true,
    },
];

pub fn main(args: DemoArgs) -> u8 {
    let chosen: Vec<&'static Demo> = if args.gallery {
        DEMOS.iter().filter(|d| d.gallery).collect()
    } else {
        let name = args.name.as_deref().unwrap_or(DEMOS[0].name);
        match DEMOS.iter().find(|d| d.name == name) {
            Some(d) => vec![d],
            None => {
                errln!(
                    "reprod demo: no demo called {name:?}; the demos are: {} (or --gallery for every gallery scenario)",
                    DEMOS.iter().map(|d| d.name).collect::<Vec<_>>().join(", ")
                );
                return exit::USAGE;
            }
        }
    };
    crate::run::on_runtime(|interrupt| async move {
        let console = Console::new(args.quiet);
        let stamp = reprod_run::time::compact_now().replace('-', "_");
        let out = args.out.clone().unwrap_or_else(|| {
            std::env::temp_dir().join(format!("reprod-demo-{stamp}-{}", std::process::id()))
        });
        let mut results = Vec::new();
        for d in &chosen {
            match demo(d, &args, &out, &stamp, &console, &interrupt).await {
                Ok(runs) => results.push((*d, runs)),
                Err(code) => return code,
            }
        }
        report(&args, &out, &results)
    })
}

/// Runs `d`'s naive and fixed variants; `Err` carries the exit code when one could not run.
async fn demo(
    d: &Demo,
    args: &DemoArgs,
    out: &Path,
    stamp: &str,
    console: &Console,
    interrupt: &Interrupt,
) -> Result<[Finished; 2], u8> {
    let mut runs: Vec<Finished> = Vec::new();
    for variant in ["naive", "fixed"] {
        let mut sets = vec![("variant".to_string(), variant.to_string())];
        let scratch = match &args.database {
            Some(admin) => {
                let name = format!(
                    "reprod_demo_{stamp}_{}_{}_{variant}",
                    std::process::id(),
                    d.name.replace('-', "_")
                );
                match reprod_check::scratch::create(admin, &name).await {
                    Ok(url) => {
                        sets.push(("database".to_string(), url));
                        Some(name)
                    }
                    Err(e) => {
                        errln!("reprod: {e}");
                        return Err(exit::INCOMPLETE);
                    }
                }
            }
            None => None,
        };
        let scenario = match reprod_scenario::parse(d.path, d.text, &sets) {
            Ok(s) => s,
            Err(e) => {
                errln!("{e}");
                return Err(exit::USAGE);
            }
        };
        errln!("reprod demo: {}, {variant} variant", d.name);
        let finished = perform(&scenario, d.path, out, console, interrupt).await;
        if let (Some(admin), Some(name)) = (&args.database, &scratch)
            && let Err(e) = reprod_check::scratch::drop(admin, name).await
        {
            errln!("reprod: {e}");
        }
        match finished {
            Ok(f) => runs.push(f),
            Err(e) => return Err(crate::run::setup_failed(e)),
        }
    }
    let [naive, fixed]: [Finished; 2] = runs.try_into().map_err(|_| exit::INCOMPLETE)?;
    Ok([naive, fixed])
}

/// Whether the invariant (or threshold) `name` was violated in `f`.
fn violated(f: &Finished, name: &str) -> bool {
    f.summary
        .invariants
        .iter()
        .any(|i| i.name == name && !i.held && i.error.is_none())
        || f.summary
            .thresholds
            .iter()
            .any(|t| t.name == name && !t.held)
}

fn as_expected(d: &Demo, [naive, fixed]: &[Finished; 2]) -> bool {
    exit_code(naive) == exit::VIOLATED
        && violated(naive, d.invariant)
        && exit_code(fixed) == exit::PASS
}

/// One demo's output in JSON (the shape `reprod demo --json` has always printed).
fn demo_json(d: &Demo, runs: &[Finished; 2]) -> serde_json::Value {
    json!({
        "name": d.name,
        "scenario": d.path,
        "as_expected": as_expected(d, runs),
        "naive": runs[0].summary,
        "fixed": runs[1].summary,
    })
}

fn report(args: &DemoArgs, out: &Path, results: &[(&Demo, [Finished; 2])]) -> u8 {
    let all = results.iter().all(|(d, runs)| as_expected(d, runs));
    if args.json {
        let value = match results {
            [(d, runs)] if !args.gallery => demo_json(d, runs),
            _ => json!({
                "as_expected": all,
                "demos": results.iter().map(|(d, runs)| demo_json(d, runs)).collect::<Vec<_>>(),
            }),
        };
        outln!(
            "{}",
            serde_json::to_string_pretty(&value).unwrap_or_default()
        );
    } else {
        for (d, runs) in results {
            out!("{}", text(d, runs));
        }
        if results.len() > 1 {
            outln!("gallery:");
            for (d, runs) in results {
                outln!(
                    "  {:<14} {}",
                    d.name,
                    if as_expected(d, runs) {
                        "as expected"
                    } else {
                        "NOT as expected"
                    }
                );
            }
        }
        outln!("run directories: {}", out.display());
    }
    if all { exit::PASS } else { exit::VIOLATED }
}

fn text(d: &Demo, runs: &[Finished; 2]) -> String {
    use std::fmt::Write as _;
    let [naive, fixed] = runs;
    let as_expected = as_expected(d, runs);
    let mut out = String::new();
    let s = &naive.summary;
    let _ = writeln!(out, "{}", d.title);
    let _ = writeln!(out, "scenario: {}", d.path);
    let _ = writeln!(out, "conditions: {}\n", s.conditions.join(", "));
    let width = s
        .invariants
        .iter()
        .map(|i| i.name.chars().count())
        .fold(38, usize::max);
    let _ = writeln!(out, "{:<width$} {:<14} {:<14}", "", "naive", "fixed");
    let row = |name: &str, f: &dyn Fn(&Finished) -> String| {
        format!("{name:<width$} {:<14} {:<14}\n", f(naive), f(fixed))
    };
    out.push_str(&row("operations (ok / failed / ambiguous)", &|f| {
        let o = &f.summary.ops;
        format!("{} / {} / {}", o.ok, o.failed, o.ambiguous)
    }));
    out.push_str(&row("latency p99", &|f| {
        format!("{:.0} ms", f.summary.latency_ms.p99)
    }));
    for inv in &s.invariants {
        out.push_str(&row(&inv.name, &|f| match f
            .summary
            .invariants
            .iter()
            .find(|i| i.name == inv.name)
        {
            Some(i) if i.error.is_some() => "not checked".to_string(),
            Some(i) if i.held => "held".to_string(),
            Some(i) => format!("{} violations", i.violations),
            None => "-".to_string(),
        }));
    }
    out.push_str(&row("verdict", &|f| {
        f.summary.verdict.as_str().to_uppercase()
    }));
    if let Some(e) = &naive.explanation {
        let _ = writeln!(out, "\nWhy the naive variant broke");
        out.push_str(&e.to_text());
    }
    let _ = writeln!(out);
    if as_expected {
        let _ = writeln!(out, "As expected: {}.\n", d.expected);
    } else {
        let _ = writeln!(
            out,
            "NOT as expected: the naive run should violate {:?} (exit 1) and the fixed run should hold (exit 0); \
             got naive exit {} and fixed exit {}. See the run directories.\n",
            d.invariant,
            exit_code(naive),
            exit_code(fixed)
        );
    }
    out
}
