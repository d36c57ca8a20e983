//! Encryption of secrets backups: the versioned envelope format (SPEC section 7)
//! and the in-memory secret map it protects. Nothing here touches storage or
//! the environment; jobs and the CLI hand in bytes and a passphrase.

mod envelope;
mod secret_map;

pub use envelope::{
    Contents, DerivedKey, Envelope, EnvelopeCodec, EnvelopeError, KdfParams, CIPHER, CONTENT_SECRET_MANAGER, FORMAT,
    KDF_ALGORITHM, VERSION, VERSION_WITH_CONTENT,
};
pub use secret_map::{is_env_name, SecretMap, SecretMapError};
