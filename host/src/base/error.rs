//! AMQP errors: a reply code, RabbitMQ's wording, and whether it closes the channel or the
//! whole connection.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyCode {
    ContentTooLarge = 311,
    NoRoute = 312,
    NoConsumers = 313,
    ConnectionForced = 320,
    InvalidPath = 402,
    AccessRefused = 403,
    NotFound = 404,
    ResourceLocked = 405,
    PreconditionFailed = 406,
    FrameError = 501,
    SyntaxError = 502,
    CommandInvalid = 503,
    ChannelError = 504,
    UnexpectedFrame = 505,
    ResourceError = 506,
    NotAllowed = 530,
    NotImplemented = 540,
    InternalError = 541,
}

impl ReplyCode {
    pub fn code(self) -> u16 {
        self as u16
    }

    /// Hard errors close the connection whatever channel they happened on.
    pub fn is_hard(self) -> bool {
        matches!(
            self,
            ReplyCode::ConnectionForced
                | ReplyCode::InvalidPath
                | ReplyCode::FrameError
                | ReplyCode::SyntaxError
                | ReplyCode::CommandInvalid
                | ReplyCode::ChannelError
                | ReplyCode::UnexpectedFrame
                | ReplyCode::ResourceError
                | ReplyCode::NotAllowed
                | ReplyCode::NotImplemented
                | ReplyCode::InternalError
        )
    }
}

/// An error that ends a channel (soft) or the connection (hard), with the method that caused it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AmqpError {
    pub code: ReplyCode,
    pub text: String,
    pub class_id: u16,
    pub method_id: u16,
    /// Forces a connection close even for a soft code (e.g. 403 during connection.open).
    pub connection_level: bool,
    /// The channel a soft error closes.
    pub channel: u16,
}

impl AmqpError {
    pub fn new(code: ReplyCode, text: impl Into<String>) -> Self {
        AmqpError {
            code,
            text: text.into(),
            class_id: 0,
            method_id: 0,
            connection_level: false,
            channel: 0,
        }
    }

    pub fn connection(code: ReplyCode, text: impl Into<String>) -> Self {
        AmqpError {
            connection_level: true,
            ..AmqpError::new(code, text)
        }
    }

    pub fn with_method(mut self, class_id: u16, method_id: u16) -> Self {
        if self.class_id == 0 {
            self.class_id = class_id;
            self.method_id = method_id;
        }
        self
    }

    pub fn on_channel(mut self, channel: u16) -> Self {
        self.channel = channel;
        self
    }

    pub fn closes_connection(&self) -> bool {
        self.connection_level || self.code.is_hard()
    }

    pub fn not_found(text: impl Into<String>) -> Self {
        AmqpError::new(ReplyCode::NotFound, format!("NOT_FOUND - {}", text.into()))
    }

    pub fn precondition(text: impl Into<String>) -> Self {
        AmqpError::new(
            ReplyCode::PreconditionFailed,
            format!("PRECONDITION_FAILED - {}", text.into()),
        )
    }

    pub fn access_refused(text: impl Into<String>) -> Self {
        AmqpError::new(
            ReplyCode::AccessRefused,
            format!("ACCESS_REFUSED - {}", text.into()),
        )
    }

    pub fn resource_locked(text: impl Into<String>) -> Self {
        AmqpError::new(
            ReplyCode::ResourceLocked,
            format!("RESOURCE_LOCKED - {}", text.into()),
        )
    }

    pub fn command_invalid(text: impl Into<String>) -> Self {
        AmqpError::new(
            ReplyCode::CommandInvalid,
            format!("COMMAND_INVALID - {}", text.into()),
        )
    }

    pub fn not_allowed(text: impl Into<String>) -> Self {
        AmqpError::new(
            ReplyCode::NotAllowed,
            format!("NOT_ALLOWED - {}", text.into()),
        )
    }

    pub fn internal(text: impl Into<String>) -> Self {
        AmqpError::new(
            ReplyCode::InternalError,
            format!("INTERNAL_ERROR - {}", text.into()),
        )
    }

    pub fn not_implemented(text: impl Into<String>) -> Self {
        AmqpError::new(
            ReplyCode::NotImplemented,
            format!("NOT_IMPLEMENTED - {}", text.into()),
        )
    }

    pub fn unexpected_frame(text: impl Into<String>) -> Self {
        AmqpError::new(
            ReplyCode::UnexpectedFrame,
            format!("UNEXPECTED_FRAME - {}", text.into()),
        )
    }
}

impl fmt::Display for AmqpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.code.code(), self.text)
    }
}

impl std::error::Error for AmqpError {}

pub type AmqpResult<T> = Result<T, AmqpError>;
