//! The jailer's one error type and its exit codes.

use std::io;

/// Exit code for bad input: a flag, a file or an id the jailer cannot use as given.
pub const EXIT_BAD_INPUT: u8 = 2;
/// Exit code for everything else: the host refused a step of building the jail.
pub const EXIT_FAILURE: u8 = 1;

/// What can stop the jailer before it execs the VMM.
#[derive(Debug, thiserror::Error)]
pub enum JailerError {
    /// The command line could not be parsed (clap's message, on one line).
    #[error("{0}")]
    Usage(String),
    /// A flag's value is unusable.
    #[error("invalid {flag} `{value}`: {why}")]
    InvalidFlag {
        /// The flag, as typed (`--exec-file`).
        flag: &'static str,
        /// The value given.
        value: String,
        /// What is wrong with it, and what to do instead where that helps.
        why: String,
    },
    /// The jail for this id belongs to a VMM that is still running.
    #[error("invalid --id `{id}`: the jail is in use: {why}")]
    InUse {
        /// The instance id.
        id: String,
        /// What shows that it is in use.
        why: String,
    },
    /// A step of building the jail failed.
    #[error("{step}: {source}")]
    Step {
        /// The step, with the path or value it worked on.
        step: String,
        /// The host's answer.
        #[source]
        source: io::Error,
    },
}

impl JailerError {
    /// The process exit code: 2 for bad input, 1 for a step the host refused.
    pub fn exit_code(&self) -> u8 {
        match self {
            JailerError::Usage(_) | JailerError::InvalidFlag { .. } | JailerError::InUse { .. } => {
                EXIT_BAD_INPUT
            }
            JailerError::Step { .. } => EXIT_FAILURE,
        }
    }

    /// A [`JailerError::Step`] for `step` failing with `source`.
    pub fn step(step: impl Into<String>, source: io::Error) -> Self {
        JailerError::Step {
            step: step.into(),
            source,
        }
    }

    /// A [`JailerError::InvalidFlag`].
    pub fn invalid(flag: &'static str, value: impl Into<String>, why: impl Into<String>) -> Self {
        JailerError::InvalidFlag {
            flag,
            value: value.into(),
            why: why.into(),
        }
    }
}

/// Shorthand for results of the jailer's steps.
pub type Result<T> = std::result::Result<T, JailerError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_input_exits_2_and_host_failures_1() {
        let bad = JailerError::invalid("--uid", "x", "not a number");
        assert_eq!(bad.exit_code(), EXIT_BAD_INPUT);
        assert_eq!(bad.to_string(), "invalid --uid `x`: not a number");
        let busy = JailerError::InUse {
            id: "vm1".into(),
            why: "its VMM runs".into(),
        };
        assert_eq!(busy.exit_code(), EXIT_BAD_INPUT);
        let step = JailerError::step("mount", io::Error::from_raw_os_error(libc::EPERM));
        assert_eq!(step.exit_code(), EXIT_FAILURE);
        assert!(step.to_string().starts_with("mount: "), "{step}");
    }
}
