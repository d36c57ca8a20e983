//! The job runtime: messages, delivery decisions, the idempotency ledger,
//! retries and the Pub/Sub loop. It knows nothing about backups; jobs reach it
//! through [`job::Registry`].

pub mod dead_letters;
pub mod delivery;
pub mod http;
pub mod job;
pub mod ledger;
pub mod local;
pub mod message;
pub mod metrics;
pub mod pubsub;
pub mod scheduler;
pub mod worker;
