//! In-process Pub/Sub emulator (issue #3): being built.
