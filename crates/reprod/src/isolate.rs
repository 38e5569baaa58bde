//! `reprod isolate`: loads the scenario, hands it to [`reprod_run::isolate`], prints the table
//! or the JSON, and picks the exit code: 0 answered, 1 the baseline never reproduced, 2 the
//! scenario cannot be isolated as it is, 3 no baseline trial completed (or Ctrl-C).

use reprod_run::isolate::Options;

use crate::failure::Failure;

use crate::progress::Console;
use crate::{IsolateArgs, exit};

pub fn main(args: IsolateArgs) -> u8 {
    let Some(mut scenario) = crate::load(&args.scenario) else {
        return exit::USAGE;
    };
    if let Some(d) = args.duration {
        scenario.duration = d;
    }
    if let Err(e) = reprod_run::isolate::check_duration(&scenario) {
        return Failure::from(e).exit();
    }
    let options = Options {
        trials: args.trials,
        swarm: args.swarm,
        out: args.out.clone(),
        scenario_path: args.scenario.scenario.display().to_string(),
        sets: args.scenario.sets.clone(),
        secret_params: scenario.secret_params.clone(),
    };
    crate::run::on_runtime(|interrupt| async move {
        let console = Console::new(args.quiet);
        match reprod_run::isolate::isolate(scenario, options, &console, &interrupt).await {
            Ok(result) => {
                if let Some(path) = &args.junit
                    && let Err(e) = reprod_run::session::write_whole(
                        path,
                        &result.render(
                            &args.scenario.scenario.display().to_string(),
                            reprod_report::Format::Junit,
                        ),
                    )
                {
                    errln!(
                        "reprod: cannot write the JUnit XML to {}: {e}",
                        path.display()
                    );
                }
                if args.json {
                    outln!(
                        "{}",
                        serde_json::to_string_pretty(&result).unwrap_or_default()
                    );
                } else {
                    out!("{}", result.to_text());
                }
                if result.baseline_reproduced {
                    exit::PASS
                } else {
                    exit::VIOLATED
                }
            }
            Err(e) => Failure::from(e).exit(),
        }
    })
}
