//! Google Secret Manager as a secrets source and a restore target: the
//! client (quota, retries, CRC32C checks), the backup document, reading a
//! whole project and putting a backup back. The fake this is tested against
//! lives in `crate::emulator::secret_manager`.

pub mod client;
pub mod document;
pub mod read;
pub mod restore;

pub use client::{ClientSettings, RetrySettings, SecretBytes, SecretManagerClient, SecretManagerError};
pub use document::{BackedUpSecret, BackedUpVersion, SecretManagerBackup, VersionState};
pub use read::{read_project, ProjectSelection, ReadError};

/// The variable that points the client at a fake (`127.0.0.1:PORT`).
pub const EMULATOR_HOST_VARIABLE: &str = "SECRET_MANAGER_EMULATOR_HOST";
