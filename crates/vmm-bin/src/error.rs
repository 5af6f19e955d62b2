//! The binary's errors: bad flags (named by flag), and the library's errors, whose config
//! fields are shown as the flags that set them.

use petrel_vmm::{EXIT_BAD_INPUT, EXIT_FAILURE};

/// What can go wrong between the command line and the VM's end.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// A flag's value is malformed.
    #[error("invalid {flag} `{value}`: {why}")]
    InvalidFlag {
        /// The flag (`--disk`) or what the value is (`command line`).
        flag: &'static str,
        /// The value given.
        value: String,
        /// What is wrong with it.
        why: String,
    },
    /// The VMM refused the configuration or failed ([`chain`] prints its causes).
    #[error("{}", vmm_message(.0))]
    Vmm(petrel_vmm::Error),
    /// The stop signals could not be routed to the event loop.
    #[error("cannot set up signal handling")]
    Signals(#[source] std::io::Error),
    /// Console input could not be set up.
    #[error("cannot read the console input from stdin")]
    Stdin(#[source] std::io::Error),
    /// The seccomp filters could not be compiled or installed.
    #[error("cannot {what} the seccomp filters")]
    Seccomp {
        /// What failed: `compile`, `install`...
        what: &'static str,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl From<petrel_vmm::Error> for CliError {
    fn from(e: petrel_vmm::Error) -> Self {
        CliError::Vmm(e)
    }
}

impl CliError {
    /// The process exit code: 2 for bad input, 1 for everything else.
    pub fn exit_code(&self) -> i32 {
        match self {
            CliError::InvalidFlag { .. } => EXIT_BAD_INPUT,
            CliError::Vmm(e) => e.exit_code(),
            CliError::Signals(_) | CliError::Stdin(_) | CliError::Seccomp { .. } => EXIT_FAILURE,
        }
    }
}

/// The flag that sets a [`petrel_vmm::VmConfig`] field, for messages.
pub fn flag_for_field(field: &str) -> Option<&'static str> {
    let head = field.split(['.', '[']).next().unwrap_or(field);
    Some(match head {
        "vcpus" => "--vcpus",
        "mem_size" => "--mem",
        "disks" => "--disk",
        "nets" => "--net",
        "vsock" => "--vsock",
        "virtio devices" => "virtio devices",
        _ => return None,
    })
}

/// The library's message, with config fields shown as flags. Its causes follow in the chain.
fn vmm_message(e: &petrel_vmm::Error) -> String {
    match e {
        petrel_vmm::Error::InvalidConfig { field, value, why } => {
            let shown = flag_for_field(field).unwrap_or(field);
            format!("invalid {shown} `{value}`: {why}")
        }
        petrel_vmm::Error::Memory(m) => format!("--mem: {m}"),
        // The library's own message already carries its causes' text where it is transparent;
        // the chain printer adds the rest.
        other => other.to_string(),
    }
}

/// An error and all its causes on one line, `outer: inner: innermost`, as users see them.
pub fn chain(e: &CliError) -> String {
    use std::error::Error as _;
    let (mut s, mut src) = match e {
        CliError::Vmm(v) => (vmm_message(v), v.source()),
        other => (other.to_string(), other.source()),
    };
    while let Some(inner) = src {
        let text = inner.to_string();
        if !s.ends_with(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        src = inner.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_shown_as_flags() {
        assert_eq!(flag_for_field("vcpus"), Some("--vcpus"));
        assert_eq!(flag_for_field("disks[1].path"), Some("--disk"));
        assert_eq!(flag_for_field("nets[0].mac"), Some("--net"));
        assert_eq!(flag_for_field("vsock.uds"), Some("--vsock"));
        assert_eq!(flag_for_field("boot_source"), None);
        let e = CliError::from(petrel_vmm::Error::InvalidConfig {
            field: "disks[0].path".into(),
            value: "/x".into(),
            why: "no such file".into(),
        });
        assert_eq!(chain(&e), "invalid --disk `/x`: no such file");
        assert_eq!(e.exit_code(), EXIT_BAD_INPUT);
    }
}
