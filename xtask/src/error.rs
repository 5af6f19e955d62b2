//! The error type shared by all xtask commands.

use std::io;

/// Everything that can stop an xtask command.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The command line could not be understood.
    #[error("{0}\n(run `cargo xtask --help` for usage)")]
    Usage(String),
    /// A file system or process operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// An external command ran but did not succeed.
    #[error("`{command}` failed: {detail}")]
    Command {
        /// The command as it would be typed.
        command: String,
        /// Exit status and where its output went.
        detail: String,
    },
    /// Options of the config fragment that `make olddefconfig` did not keep.
    #[error(
        "kernel config: these options from {fragment} did not survive `make olddefconfig` \
         (missing dependencies?): {options}"
    )]
    ConfigDropped {
        /// The fragment's path.
        fragment: String,
        /// The dropped options, comma separated.
        options: String,
    },
    /// Anything else, described in words.
    #[error("{0}")]
    Other(String),
}

/// Result with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Adds a description to I/O errors.
pub trait IoContext<T> {
    /// Wraps an I/O error with `what` was being done.
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|source| Error::Io {
            context: what(),
            source,
        })
    }
}
