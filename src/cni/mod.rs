//! The CNI protocol: environment, configuration, results per version, errors.

pub mod config;
pub mod env;
pub mod error;
pub mod result;
pub mod skel;
pub mod version;

pub use error::{Error, Kind, Result};
