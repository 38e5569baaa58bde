//! Why a command could not give its result, as one enum with its exit code: 2 when the user's
//! input is at fault (nothing ran, or the path is not what it should be), 3 when something else
//! stopped it (a database, a disk, a server). Every library error maps into it here, once.

use reprod_check::explain::ExplainError;
use reprod_run::RunError;
use reprod_run::export::ExportError;
use reprod_run::isolate::IsolateError;

use crate::exit;

/// A command's failure.
#[derive(Debug)]
pub enum Failure {
    /// The command line, the scenario or a path named is wrong: exit 2.
    Usage(String),
    /// The work could not be done or finished: exit 3.
    Incomplete(String),
}

impl Failure {
    /// Says why on stderr and returns the exit code.
    pub fn exit(self) -> u8 {
        match self {
            Failure::Usage(why) => {
                errln!("reprod: {why}");
                exit::USAGE
            }
            Failure::Incomplete(why) => {
                errln!("reprod: {why}");
                exit::INCOMPLETE
            }
        }
    }
}

impl From<RunError> for Failure {
    fn from(e: RunError) -> Failure {
        Failure::Incomplete(e.to_string())
    }
}

impl From<ExplainError> for Failure {
    fn from(e: ExplainError) -> Failure {
        match e {
            ExplainError::NotARun(_) => Failure::Usage(e.to_string()),
            ExplainError::History(_) => Failure::Incomplete(e.to_string()),
        }
    }
}

impl From<ExportError> for Failure {
    fn from(e: ExportError) -> Failure {
        match e {
            ExportError::NotARun(_) => Failure::Usage(e.to_string()),
            _ => Failure::Incomplete(e.to_string()),
        }
    }
}

impl From<IsolateError> for Failure {
    fn from(e: IsolateError) -> Failure {
        match e {
            IsolateError::Unfit(_) => Failure::Usage(e.to_string()),
            _ => Failure::Incomplete(format!("isolate: {e}")),
        }
    }
}
