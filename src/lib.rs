//! keshless-ops: the backup and disaster-recovery worker of the Keshless
//! payments platform. The binary in `main.rs` is a thin shell over this library
//! so that integration tests drive exactly the code production runs.

pub mod backups;
pub mod cli;
pub mod clock;
pub mod config;
pub mod crypto;
pub mod documents;
pub mod emulator;
pub mod jobs;
pub mod postgres;
pub mod recovery;
pub mod retention;
pub mod runtime;
pub mod schedule;
pub mod secret_manager;
pub mod status;
pub mod storage;
pub mod telemetry;
