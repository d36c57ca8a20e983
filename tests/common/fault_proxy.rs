//! A fault-injecting HTTP proxy for tests (filled in below).
