//! `reprod demo`: the seed's invoice system, naive and fixed, under the same production-shaped
//! load, with no setup. The naive run should violate both invariants and the fixed one hold;
//! the demo says plainly when that is not what happened.

use std::path::Path;

use serde_json::json;

use reprod_run::{Finished, Interrupt, perform};

use crate::progress::Console;
use crate::run::exit_code;
use crate::{DemoArgs, exit};

/// The shipped scenario, built in so the demo works from any directory.
const SCENARIO: &str = include_str!("../../../scenarios/invoices.toml");
const SCENARIO_NAME: &str = "scenarios/invoices.toml";
const INVARIANT: &str = "one invoice per account and period";

pub fn main(args: DemoArgs) -> u8 {
    crate::run::on_runtime(|interrupt| demo(args, interrupt))
}

async fn demo(args: DemoArgs, interrupt: Interrupt) -> u8 {
    let console = Console::new(args.quiet);
    let stamp = reprod_run::time::compact_now().replace('-', "_");
    let out = args.out.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("reprod-demo-{stamp}-{}", std::process::id()))
    });
    let mut runs: Vec<(&str, Finished)> = Vec::new();
    for variant in ["naive", "fixed"] {
        let mut sets = vec![("variant".to_string(), variant.to_string())];
        let scratch = match &args.database {
            Some(admin) => {
                let name = format!("reprod_demo_{stamp}_{}_{variant}", std::process::id());
                match reprod_check::scratch::create(admin, &name).await {
                    Ok(url) => {
                        sets.push(("database".to_string(), url));
                        Some(name)
                    }
                    Err(e) => {
                        errln!("reprod: {e}");
                        return exit::INCOMPLETE;
                    }
                }
            }
            None => None,
        };
        let scenario = match reprod_scenario::parse(SCENARIO_NAME, SCENARIO, &sets) {
            Ok(s) => s,
            Err(e) => {
                errln!("{e}");
                return exit::USAGE;
            }
        };
        errln!("reprod demo: {variant} variant");
        let finished = perform(&scenario, SCENARIO_NAME, &out, &console, &interrupt).await;
        if let (Some(admin), Some(name)) = (&args.database, &scratch)
            && let Err(e) = reprod_check::scratch::drop(admin, name).await
        {
            errln!("reprod: {e}");
        }
        match finished {
            Ok(f) => runs.push((variant, f)),
            Err(e) => return crate::run::setup_failed(e),
        }
    }
    report(&args, &out, &runs)
}

fn violated(f: &Finished, name: &str) -> bool {
    f.summary
        .invariants
        .iter()
        .any(|i| i.name == name && !i.held && i.error.is_none())
}

fn report(args: &DemoArgs, out: &Path, runs: &[(&str, Finished)]) -> u8 {
    let (naive, fixed) = (&runs[0].1, &runs[1].1);
    let as_expected = exit_code(naive) == exit::VIOLATED
        && violated(naive, INVARIANT)
        && exit_code(fixed) == exit::PASS;
    if args.json {
        outln!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "as_expected": as_expected,
                "naive": naive.summary,
                "fixed": fixed.summary,
            }))
            .unwrap_or_default()
        );
    } else {
        out!("{}", text(naive, fixed, as_expected));
        outln!("run directories: {}", out.display());
    }
    if as_expected {
        exit::PASS
    } else {
        exit::VIOLATED
    }
}

fn text(naive: &Finished, fixed: &Finished, as_expected: bool) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let s = &naive.summary;
    let _ = writeln!(
        out,
        "The seed's invoice service under production-shaped load"
    );
    let _ = writeln!(out, "conditions: {}\n", s.conditions.join(", "));
    let _ = writeln!(out, "{:<38} {:<14} {:<14}", "", "naive", "fixed");
    let row = |name: &str, f: &dyn Fn(&Finished) -> String| {
        format!("{name:<38} {:<14} {:<14}\n", f(naive), f(fixed))
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
        let _ = writeln!(
            out,
            "As expected: the naive handler duplicated invoices under overlap, the fixed one held."
        );
    } else {
        let _ = writeln!(
            out,
            "NOT as expected: the naive run should violate {INVARIANT:?} (exit 1) and the fixed run should hold (exit 0); \
             got naive exit {} and fixed exit {}. See the run directories.",
            exit_code(naive),
            exit_code(fixed)
        );
    }
    out
}
