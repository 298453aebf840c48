//! Warren plugin SDK
