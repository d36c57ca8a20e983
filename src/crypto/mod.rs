//! Encryption of secrets backups: the versioned envelope format (SPEC section 7)
//! and the in-memory secret map it protects. Nothing here touches storage or
//! the environment; jobs and the CLI hand in bytes and a passphrase.

mod envelope;
mod secret_map;

pub use envelope::{
    DerivedKey, Envelope, EnvelopeCodec, EnvelopeError, KdfParams, CIPHER, FORMAT, KDF_ALGORITHM, VERSION,
};
pub use secret_map::{is_env_name, SecretMap, SecretMapError};
