//! How a command fails: [`Failure`] (a message, diagnostics, and an [`Exit`] code) and the
//! conversions from the library's errors.

use policy_sync::db;
use policy_sync::diagnostics::Problem;
use policy_sync::store::StoreError;

/// The process's exit code when a command fails; the numbers are part of the command line's
/// interface (scripts and the tests check them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Exit {
    /// The command could not be carried out: I/O, Postgres, the service, the runtime.
    Failed = 1,
    /// Bad usage or bad input: a missing setting, an unreadable or malformed file or
    /// argument, a change the store refuses as malformed, a key file that exists already.
    Usage = 2,
    /// Refused because the change or the file is invalid (diagnostics on stderr).
    Invalid = 3,
    /// What the command names does not exist.
    NotFound = 4,
}

impl From<Exit> for std::process::ExitCode {
    fn from(code: Exit) -> Self {
        Self::from(code as u8)
    }
}

/// A failed command: message and exit code.
pub(crate) struct Failure {
    pub(crate) code: Exit,
    pub(crate) message: String,
    pub(crate) problems: Vec<Problem>,
}

impl Failure {
    pub(crate) fn new(code: Exit, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            problems: vec![],
        }
    }
}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Invalid(problems) => Self {
                code: Exit::Invalid,
                message: "refused: the change is invalid; nothing was changed".into(),
                problems,
            },
            StoreError::BadInput(m) => Self::new(Exit::Usage, m),
            StoreError::NotFound(m) => Self::new(Exit::NotFound, format!("{m} not found")),
            StoreError::Db(e) => Self::new(Exit::Failed, e.to_string()),
        }
    }
}

impl From<db::DbError> for Failure {
    fn from(e: db::DbError) -> Self {
        Self::new(Exit::Failed, e.to_string())
    }
}

/// What a command prints on success, or why it failed.
pub(crate) type Outcome = Result<String, Failure>;
