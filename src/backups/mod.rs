//! The on-call engineer's view of the backup store (SPEC section 9): every
//! backup of every class under one kind of id, shown in detail, verified
//! (in full, in slices, or quickly from the store's own checksums), and held
//! past retention by a pin.
//!
//! - [`catalog`]: what the store holds, one [`catalog::Entry`] per backup, and
//!   the ids operators type (an unknown or ambiguous id names the closest);
//! - [`verify`]: re-reads backups and proves them against what was recorded;
//! - [`pins`]: holds every object of a backup, and releases them.
//!
//! The listing is [`crate::retention::listing`]'s, so `backups list` and
//! `cleanup` always agree on what a backup is.

pub mod catalog;
pub mod pins;
pub mod verify;

pub use catalog::{Catalog, Entry, Kind};
