//! Why a command was refused, in terms both of its callers need: `warrenctl` turns it into
//! an exit code (sysexits, `../shared/CONVENTIONS.md`), an HTTP API into a status.

use super::protocol::{Response, exit_code};
use crate::meta::MetaError;
use crate::plugins::PluginError;
use crate::quorum::members::MemberError;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// The command is wrong: an unknown verb, a missing or malformed argument.
    #[error("{0}")]
    Usage(String),
    /// What it names does not exist.
    #[error("{0}")]
    NotFound(String),
    /// It cannot be done to the data as it is (exists already, invalid, in use, ...).
    #[error("{0}")]
    Invalid(String),
    /// A node it needs cannot be reached.
    #[error("{0}")]
    Unavailable(String),
    /// Not now (no quorum, starting up): the same command may succeed later.
    #[error("{0}")]
    TryAgain(String),
    /// The node failed to do it.
    #[error("{0}")]
    Internal(String),
}

impl Refused {
    pub fn usage(text: impl Into<String>) -> Refused {
        Refused::Usage(text.into())
    }

    pub fn exit_code(&self) -> i32 {
        match self {
            Refused::Usage(_) => exit_code::USAGE,
            Refused::NotFound(_) | Refused::Invalid(_) => exit_code::DATA_ERR,
            Refused::Unavailable(_) => exit_code::UNAVAILABLE,
            Refused::TryAgain(_) => exit_code::TEMP_FAIL,
            Refused::Internal(_) => exit_code::SOFTWARE,
        }
    }

    pub fn into_response(self) -> Response {
        Response::error(self.exit_code(), self.to_string())
    }
}

impl From<MetaError> for Refused {
    fn from(e: MetaError) -> Refused {
        let text = e.to_string();
        match e {
            MetaError::NotFound(_) => Refused::NotFound(text),
            MetaError::AlreadyExists(_) | MetaError::Precondition(_) | MetaError::Locked(_) => {
                Refused::Invalid(text)
            }
            MetaError::Unavailable(_) => Refused::TryAgain(text),
            MetaError::Storage(_) => Refused::Internal(text),
        }
    }
}

impl From<MemberError> for Refused {
    fn from(e: MemberError) -> Refused {
        match e {
            MemberError::Invalid(t) => Refused::Invalid(t),
            MemberError::Unavailable(t) => Refused::TryAgain(t),
        }
    }
}

impl From<PluginError> for Refused {
    fn from(e: PluginError) -> Refused {
        let text = e.to_string();
        match e.exit_code() {
            exit_code::USAGE => Refused::Usage(text),
            exit_code::DATA_ERR => Refused::Invalid(text),
            _ => Refused::Internal(text),
        }
    }
}
