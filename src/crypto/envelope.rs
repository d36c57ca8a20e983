//! The secrets envelope: a JSON document whose header says how to derive the
//! key and decrypt, and whose every header field is authenticated.
//!
//! Version 1 holds a JSON object of names to string values (the `env` and
//! `file` sources). Version 2 is the same envelope with one more header field,
//! `content`, naming a richer document inside: `"secret-manager"` is a Secret
//! Manager backup (secrets with their metadata and versions, see
//! `crate::secret_manager::document`). A map is still written as version 1, so
//! releases that only know version 1 keep reading env and file backups, and a
//! version 2 file is refused by them as "unsupported version" rather than
//! misread.
//!
//! ```json
//! {"format": "keshless-secrets", "version": 1,
//!  "kdf": {"alg": "argon2id", "m": 65536, "t": 3, "p": 4, "salt": "<base64, 16 bytes>"},
//!  "cipher": "AES-256-GCM", "nonce": "<base64, 12 bytes>",
//!  "key_fingerprint": "<base64, 32 bytes>", "created_at": "2026-11-29T04:00:00Z",
//!  "ciphertext": "<base64: AES-256-GCM(JSON object of secrets) || 16-byte tag>"}
//! ```
//!
//! Key schedule, from the passphrase (`SECRETS_ENCRYPTION_KEY`) and the file's
//! random salt:
//!
//! ```text
//! master          = Argon2id(passphrase, salt, m, t, p) -> 32 bytes
//! encryption_key  = SHA-256("keshless-secrets/v1/encryption-key\0" || master)
//! key_fingerprint = SHA-256("keshless-secrets/v1/key-fingerprint\0" || master)
//! ```
//!
//! Why the fingerprint is built this way: a fingerprint computed with a fast
//! hash of the passphrase (SHA-256(key), or a fixed-salt hash) would let anyone
//! holding a backup test passphrase guesses at hash speed, and with a fixed
//! salt test them against every file at once. Deriving it from the Argon2id
//! output of the *per-file* salt means each guess costs one full Argon2id run
//! for one file — exactly what guessing against the ciphertext already costs
//! (derive, then try the GCM tag), so the fingerprint gives an attacker nothing
//! the ciphertext did not. The distinct labels make the fingerprint and the
//! encryption key independent outputs of SHA-256 over a 256-bit secret: one
//! reveals nothing about the other. The trade-offs: the fingerprint differs per
//! file, so files cannot be grouped by key without the key; and since the salt
//! and KDF parameters feed the fingerprint, a file whose `kdf` fields were
//! altered reads as "wrong key" (the message says so) rather than "tampered".
//!
//! Why recovery can tell the two failures apart: with the right passphrase the
//! fingerprint matches, so a GCM failure after that means the bytes changed;
//! with the wrong passphrase the fingerprint differs before decryption starts.
//!
//! Key material (Argon2 output, the AES key) and plaintext buffers are
//! `Zeroizing`, wiped when dropped.

use std::fmt;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use chrono::{DateTime, SecondsFormat, Utc};
use rand::RngCore;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use super::secret_map::SecretMap;

/// The `format` field.
pub const FORMAT: &str = "keshless-secrets";
/// The version a secret map is written with (and the only one before Secret Manager backups).
pub const VERSION: u32 = 1;
/// The version of envelopes whose header names their `content`.
pub const VERSION_WITH_CONTENT: u32 = 2;
/// The `content` of a Secret Manager backup document (version 2).
pub const CONTENT_SECRET_MANAGER: &str = "secret-manager";
/// The `kdf.alg` field.
pub const KDF_ALGORITHM: &str = "argon2id";
/// The `cipher` field.
pub const CIPHER: &str = "AES-256-GCM";

const SALT_BYTES: usize = 16;
const NONCE_BYTES: usize = 12;
const TAG_BYTES: usize = 16;
const KEY_BYTES: usize = 32;
const FINGERPRINT_BYTES: usize = 32;
const ENCRYPTION_KEY_LABEL: &[u8] = b"keshless-secrets/v1/encryption-key\0";
const FINGERPRINT_LABEL: &[u8] = b"keshless-secrets/v1/key-fingerprint\0";
const AAD_LABEL: &[u8] = b"keshless-secrets/v1/header\0";

/// Argon2id cost parameters, named as in the envelope.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct KdfParams {
    /// Memory in KiB.
    pub m: u32,
    /// Passes over memory.
    pub t: u32,
    /// Lanes.
    pub p: u32,
}

impl KdfParams {
    /// What production writes, and the floor a reader accepts: RFC 9106's
    /// second recommended option (64 MiB, 3 passes, 4 lanes).
    pub const STANDARD: KdfParams = KdfParams {
        m: 64 * 1024,
        t: 3,
        p: 4,
    };

    /// Upper bounds a reader accepts, so a hostile header cannot make a
    /// restore allocate gigabytes or spin for hours.
    pub const MAXIMUM: KdfParams = KdfParams {
        m: 1024 * 1024,
        t: 64,
        p: 64,
    };

    /// Cheap parameters for tests only: never accepted by [`EnvelopeCodec::standard`].
    pub const INSECURE_FOR_TESTS: KdfParams = KdfParams { m: 64, t: 1, p: 1 };

    /// Whether `self` is at least as costly as `minimum` in memory and passes.
    /// Lanes are not a strength parameter (total memory is `m` whatever `p` is),
    /// so `p` is only bounded, not compared.
    fn problems(&self, minimum: &KdfParams) -> Option<String> {
        let mut problems = Vec::new();
        if self.m < minimum.m {
            problems.push(format!("m={} KiB is below the minimum {}", self.m, minimum.m));
        }
        if self.t < minimum.t {
            problems.push(format!("t={} is below the minimum {}", self.t, minimum.t));
        }
        if self.p == 0 {
            problems.push("p=0 is invalid".to_owned());
        }
        if self.m > Self::MAXIMUM.m || self.t > Self::MAXIMUM.t || self.p > Self::MAXIMUM.p {
            problems.push(format!(
                "m={}, t={}, p={} exceed the maximum m={}, t={}, p={}",
                self.m,
                self.t,
                self.p,
                Self::MAXIMUM.m,
                Self::MAXIMUM.t,
                Self::MAXIMUM.p
            ));
        }
        (!problems.is_empty()).then(|| problems.join("; "))
    }
}

/// Why an envelope could not be written or read. Each case has its own
/// message; none contains key material or plaintext.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    #[error("not a readable secrets envelope: the file is truncated or not valid JSON ({0})")]
    Truncated(String),
    #[error("not a secrets envelope: \"format\" is {0:?}, expected \"keshless-secrets\"")]
    UnknownFormat(String),
    #[error(
        "unsupported secrets envelope version {0}: this build of keshless-ops reads versions 1 and 2; \
         restore with the release that wrote it"
    )]
    UnsupportedVersion(String),
    #[error("unsupported content {0:?} in a version 2 secrets envelope (supported: \"secret-manager\")")]
    UnsupportedContent(String),
    #[error(
        "this secrets backup holds a Secret Manager backup (secrets with metadata and versions), not a list of \
         names and values: restore it with `restore secrets --to-secret-manager` (or `--format json`)"
    )]
    NotAMap,
    #[error("unsupported {field} {found:?} in secrets envelope (supported: {supported})")]
    UnsupportedAlgorithm {
        field: &'static str,
        found: String,
        supported: &'static str,
    },
    #[error("secrets envelope has weakened key-derivation parameters, refusing it: {0}")]
    WeakKdf(String),
    #[error("malformed secrets envelope: {0}")]
    Malformed(String),
    #[error(
        "wrong key: the key fingerprint does not match SECRETS_ENCRYPTION_KEY, so this backup was encrypted \
         with a different key (or its kdf salt/parameters were altered)"
    )]
    WrongKey,
    #[error(
        "the secrets backup is corrupted or was tampered with: the key is right (fingerprint matches) but \
         authentication of the header and ciphertext failed"
    )]
    Tampered,
    #[error("secrets envelope decrypted but its content is unusable: {0}")]
    BadPayload(String),
    #[error("key derivation failed: {0}")]
    Kdf(String),
}

/// The envelope as stored. Binary fields stay as their base64 text so that the
/// authenticated header is exactly what the file says.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Envelope {
    format: String,
    version: u32,
    /// Version 2 only; absent (and not serialised) in version 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    content: Option<String>,
    kdf: KdfHeader,
    cipher: String,
    nonce: String,
    key_fingerprint: String,
    created_at: String,
    ciphertext: String,
}

#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KdfHeader {
    alg: String,
    m: u32,
    t: u32,
    p: u32,
    salt: String,
}

impl fmt::Debug for Envelope {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("Envelope")
            .field("version", &self.version)
            .field("kdf", &self.kdf_params())
            .field("created_at", &self.created_at)
            .field("ciphertext_bytes", &(self.ciphertext.len() / 4 * 3))
            .finish_non_exhaustive()
    }
}

impl Envelope {
    /// Parses and checks everything that can be checked without the key:
    /// format, version, algorithms, field sizes, and KDF parameters against
    /// `minimum` (and [`KdfParams::MAXIMUM`]).
    pub fn parse(bytes: &[u8], minimum: &KdfParams) -> Result<Envelope, EnvelopeError> {
        // Two steps so that a future version's new fields give "unsupported
        // version", not "unknown field".
        let value: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|error| EnvelopeError::Truncated(error.to_string()))?;
        let object = value
            .as_object()
            .ok_or_else(|| EnvelopeError::Malformed("the document is not a JSON object".into()))?;
        match object.get("format") {
            Some(serde_json::Value::String(format)) if format == FORMAT => {}
            Some(other) => {
                let shown = other.as_str().map(str::to_owned).unwrap_or_else(|| other.to_string());
                return Err(EnvelopeError::UnknownFormat(shown));
            }
            None => return Err(EnvelopeError::UnknownFormat("(missing)".into())),
        }
        match object.get("version") {
            Some(version)
                if version.as_u64() == Some(u64::from(VERSION))
                    || version.as_u64() == Some(u64::from(VERSION_WITH_CONTENT)) => {}
            Some(version) => return Err(EnvelopeError::UnsupportedVersion(version.to_string())),
            None => return Err(EnvelopeError::UnsupportedVersion("(missing)".into())),
        }
        let envelope: Envelope =
            serde_json::from_value(value).map_err(|error| EnvelopeError::Malformed(error.to_string()))?;
        match (envelope.version, envelope.content.as_deref()) {
            (VERSION, None) => {}
            (VERSION, Some(_)) => {
                return Err(EnvelopeError::Malformed(
                    "a version 1 envelope has no \"content\" field".into(),
                ))
            }
            (_, Some(CONTENT_SECRET_MANAGER)) => {}
            (_, Some(other)) => return Err(EnvelopeError::UnsupportedContent(other.to_owned())),
            (_, None) => {
                return Err(EnvelopeError::Malformed(
                    "a version 2 envelope needs a \"content\" field".into(),
                ))
            }
        }
        if envelope.kdf.alg != KDF_ALGORITHM {
            return Err(EnvelopeError::UnsupportedAlgorithm {
                field: "kdf.alg",
                found: envelope.kdf.alg.clone(),
                supported: KDF_ALGORITHM,
            });
        }
        if envelope.cipher != CIPHER {
            return Err(EnvelopeError::UnsupportedAlgorithm {
                field: "cipher",
                found: envelope.cipher.clone(),
                supported: CIPHER,
            });
        }
        if let Some(problem) = envelope.kdf_params().problems(minimum) {
            return Err(EnvelopeError::WeakKdf(problem));
        }
        let salt = decode("kdf.salt", &envelope.kdf.salt)?;
        if salt.len() < SALT_BYTES {
            return Err(EnvelopeError::Malformed(format!(
                "kdf.salt is {} bytes, expected at least {SALT_BYTES}",
                salt.len()
            )));
        }
        expect_length("nonce", &decode("nonce", &envelope.nonce)?, NONCE_BYTES)?;
        expect_length(
            "key_fingerprint",
            &decode("key_fingerprint", &envelope.key_fingerprint)?,
            FINGERPRINT_BYTES,
        )?;
        if decode("ciphertext", &envelope.ciphertext)?.len() < TAG_BYTES {
            return Err(EnvelopeError::Malformed(
                "ciphertext is shorter than the authentication tag".into(),
            ));
        }
        DateTime::parse_from_rfc3339(&envelope.created_at)
            .map_err(|error| EnvelopeError::Malformed(format!("created_at is not an RFC 3339 time: {error}")))?;
        Ok(envelope)
    }

    /// The stored JSON document.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut bytes = serde_json::to_vec_pretty(self).expect("an envelope always serialises");
        bytes.push(b'\n');
        bytes
    }

    pub fn kdf_params(&self) -> KdfParams {
        KdfParams {
            m: self.kdf.m,
            t: self.kdf.t,
            p: self.kdf.p,
        }
    }

    /// When the backup was encrypted, as written in the header.
    pub fn created_at(&self) -> &str {
        &self.created_at
    }

    /// The nonce as stored (base64), for uniqueness checks.
    pub fn nonce(&self) -> &str {
        &self.nonce
    }

    /// What the envelope holds, as its header says: `None` for a secret map (version 1).
    pub fn content(&self) -> Option<&str> {
        self.content.as_deref()
    }

    /// Decrypts a secret map (version 1); a Secret Manager backup is [`EnvelopeError::NotAMap`].
    pub fn decrypt(&self, key: &DerivedKey) -> Result<SecretMap, EnvelopeError> {
        match self.decrypt_contents(key)? {
            Contents::Map(map) => Ok(map),
            Contents::SecretManager(_) => Err(EnvelopeError::NotAMap),
        }
    }

    /// Decrypts with a key derived for this envelope ([`DerivedKey::for_envelope`]).
    pub fn decrypt_contents(&self, key: &DerivedKey) -> Result<Contents, EnvelopeError> {
        let salt = decode("kdf.salt", &self.kdf.salt)?;
        if salt != key.salt || self.kdf_params() != key.params {
            return Err(EnvelopeError::Kdf(
                "the key was derived for another envelope's salt or parameters".into(),
            ));
        }
        let stored = decode("key_fingerprint", &self.key_fingerprint)?;
        if !bool::from(stored.as_slice().ct_eq(key.fingerprint.as_slice())) {
            return Err(EnvelopeError::WrongKey);
        }
        let nonce: [u8; NONCE_BYTES] = decode("nonce", &self.nonce)?
            .try_into()
            .map_err(|_| EnvelopeError::Malformed(format!("nonce is not {NONCE_BYTES} bytes")))?;
        let ciphertext = decode("ciphertext", &self.ciphertext)?;
        let cipher = Aes256Gcm::new_from_slice(key.encryption_key.as_slice()).expect("32-byte key");
        let plaintext = Zeroizing::new(
            cipher
                .decrypt(
                    &Nonce::from(nonce),
                    Payload {
                        msg: &ciphertext,
                        aad: &self.associated_data(),
                    },
                )
                .map_err(|_| EnvelopeError::Tampered)?,
        );
        match self.content.as_deref() {
            None => SecretMap::from_json(&plaintext)
                .map(Contents::Map)
                .map_err(|error| EnvelopeError::BadPayload(error.to_string())),
            Some(_) => Ok(Contents::SecretManager(plaintext)),
        }
    }

    /// Every header field, length-prefixed in a fixed order: what GCM
    /// authenticates besides the ciphertext. Built from the stored text, so
    /// any change to any header byte fails authentication.
    fn associated_data(&self) -> Vec<u8> {
        let fields: [(&str, &str); 11] = [
            ("format", &self.format),
            ("version", &self.version.to_string()),
            ("kdf.alg", &self.kdf.alg),
            ("kdf.m", &self.kdf.m.to_string()),
            ("kdf.t", &self.kdf.t.to_string()),
            ("kdf.p", &self.kdf.p.to_string()),
            ("kdf.salt", &self.kdf.salt),
            ("cipher", &self.cipher),
            ("nonce", &self.nonce),
            ("key_fingerprint", &self.key_fingerprint),
            ("created_at", &self.created_at),
        ];
        let mut data = AAD_LABEL.to_vec();
        // Version 1 files keep exactly the fields they were written with.
        let content = self.content.as_deref().map(|content| ("content", content));
        for (name, value) in fields.into_iter().chain(content) {
            for part in [name.as_bytes(), value.as_bytes()] {
                data.extend_from_slice(&(part.len() as u32).to_be_bytes());
                data.extend_from_slice(part);
            }
        }
        data
    }
}

fn decode(field: &str, text: &str) -> Result<Vec<u8>, EnvelopeError> {
    BASE64
        .decode(text)
        .map_err(|error| EnvelopeError::Malformed(format!("{field} is not valid base64: {error}")))
}

fn expect_length(field: &str, bytes: &[u8], expected: usize) -> Result<(), EnvelopeError> {
    if bytes.len() == expected {
        Ok(())
    } else {
        Err(EnvelopeError::Malformed(format!(
            "{field} is {} bytes, expected {expected}",
            bytes.len()
        )))
    }
}

/// The AES key and fingerprint derived from a passphrase for one salt and
/// parameter set. Derive once, then seal or open any number of envelopes that
/// share the salt (tests use this to avoid running Argon2 per envelope).
pub struct DerivedKey {
    salt: Vec<u8>,
    params: KdfParams,
    encryption_key: Zeroizing<[u8; KEY_BYTES]>,
    fingerprint: [u8; FINGERPRINT_BYTES],
}

impl fmt::Debug for DerivedKey {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("DerivedKey")
            .field("params", &self.params)
            .finish_non_exhaustive()
    }
}

impl DerivedKey {
    /// Runs Argon2id (slow by design: run it off the async executor).
    pub fn derive(passphrase: &SecretString, params: KdfParams, salt: &[u8]) -> Result<DerivedKey, EnvelopeError> {
        let argon2_params = argon2::Params::new(params.m, params.t, params.p, Some(KEY_BYTES))
            .map_err(|error| EnvelopeError::Kdf(error.to_string()))?;
        let argon2 = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, argon2_params);
        let mut master = Zeroizing::new([0u8; KEY_BYTES]);
        argon2
            .hash_password_into(passphrase.expose_secret().as_bytes(), salt, master.as_mut_slice())
            .map_err(|error| EnvelopeError::Kdf(error.to_string()))?;
        let mut encryption_key = Zeroizing::new([0u8; KEY_BYTES]);
        let mut hasher = Sha256::new();
        hasher.update(ENCRYPTION_KEY_LABEL);
        hasher.update(master.as_slice());
        encryption_key.copy_from_slice(&hasher.finalize());
        let mut hasher = Sha256::new();
        hasher.update(FINGERPRINT_LABEL);
        hasher.update(master.as_slice());
        let fingerprint: [u8; FINGERPRINT_BYTES] = hasher.finalize().into();
        Ok(DerivedKey {
            salt: salt.to_vec(),
            params,
            encryption_key,
            fingerprint,
        })
    }

    /// Derives with a fresh random salt, for writing a new envelope.
    pub fn derive_with_random_salt(passphrase: &SecretString, params: KdfParams) -> Result<DerivedKey, EnvelopeError> {
        let mut salt = [0u8; SALT_BYTES];
        rand::rngs::OsRng.fill_bytes(&mut salt);
        DerivedKey::derive(passphrase, params, &salt)
    }

    /// Derives the key an existing envelope needs (its salt and parameters).
    pub fn for_envelope(passphrase: &SecretString, envelope: &Envelope) -> Result<DerivedKey, EnvelopeError> {
        let salt = decode("kdf.salt", &envelope.kdf.salt)?;
        DerivedKey::derive(passphrase, envelope.kdf_params(), &salt)
    }

    /// Encrypts `secrets` under a fresh random 96-bit nonce.
    pub fn seal(&self, secrets: &SecretMap, created_at: DateTime<Utc>) -> Result<Envelope, EnvelopeError> {
        let plaintext = secrets.to_json();
        self.seal_plaintext(VERSION, None, &plaintext, created_at)
    }

    /// Encrypts any contents: a map as version 1, a document as version 2.
    pub fn seal_contents(&self, contents: &Contents, created_at: DateTime<Utc>) -> Result<Envelope, EnvelopeError> {
        match contents {
            Contents::Map(secrets) => self.seal(secrets, created_at),
            Contents::SecretManager(document) => {
                self.seal_plaintext(VERSION_WITH_CONTENT, Some(CONTENT_SECRET_MANAGER), document, created_at)
            }
        }
    }

    fn seal_plaintext(
        &self,
        version: u32,
        content: Option<&str>,
        plaintext: &[u8],
        created_at: DateTime<Utc>,
    ) -> Result<Envelope, EnvelopeError> {
        let mut nonce = [0u8; NONCE_BYTES];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let mut envelope = Envelope {
            format: FORMAT.to_owned(),
            version,
            content: content.map(str::to_owned),
            kdf: KdfHeader {
                alg: KDF_ALGORITHM.to_owned(),
                m: self.params.m,
                t: self.params.t,
                p: self.params.p,
                salt: BASE64.encode(&self.salt),
            },
            cipher: CIPHER.to_owned(),
            nonce: BASE64.encode(nonce),
            key_fingerprint: BASE64.encode(self.fingerprint),
            created_at: created_at.to_rfc3339_opts(SecondsFormat::Secs, true),
            ciphertext: String::new(),
        };
        let cipher = Aes256Gcm::new_from_slice(self.encryption_key.as_slice()).expect("32-byte key");
        let ciphertext = cipher
            .encrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: plaintext,
                    aad: &envelope.associated_data(),
                },
            )
            .map_err(|_| EnvelopeError::Kdf("AES-GCM encryption failed".into()))?;
        envelope.ciphertext = BASE64.encode(ciphertext);
        Ok(envelope)
    }
}

/// Seals and opens whole envelopes from a passphrase, with the KDF parameters
/// it writes and the floor it accepts when reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EnvelopeCodec {
    write: KdfParams,
    minimum: KdfParams,
}

impl Default for EnvelopeCodec {
    fn default() -> Self {
        EnvelopeCodec::standard()
    }
}

impl EnvelopeCodec {
    /// Production: writes [`KdfParams::STANDARD`] and refuses anything weaker.
    pub fn standard() -> EnvelopeCodec {
        EnvelopeCodec {
            write: KdfParams::STANDARD,
            minimum: KdfParams::STANDARD,
        }
    }

    /// Other parameters, for tests that cannot afford Argon2 at full cost.
    pub fn with_params(write: KdfParams, minimum: KdfParams) -> EnvelopeCodec {
        EnvelopeCodec { write, minimum }
    }

    pub fn write_params(&self) -> KdfParams {
        self.write
    }

    pub fn minimum_params(&self) -> KdfParams {
        self.minimum
    }

    /// Encrypts with a fresh salt and nonce; returns the stored bytes.
    pub fn seal(
        &self,
        passphrase: &SecretString,
        secrets: &SecretMap,
        created_at: DateTime<Utc>,
    ) -> Result<Vec<u8>, EnvelopeError> {
        let key = DerivedKey::derive_with_random_salt(passphrase, self.write)?;
        Ok(key.seal(secrets, created_at)?.to_bytes())
    }

    /// Parses, checks, derives the key and decrypts.
    pub fn open(&self, passphrase: &SecretString, bytes: &[u8]) -> Result<SecretMap, EnvelopeError> {
        let envelope = Envelope::parse(bytes, &self.minimum)?;
        let key = DerivedKey::for_envelope(passphrase, &envelope)?;
        envelope.decrypt(&key)
    }

    /// Encrypts any contents with a fresh salt and nonce; returns the stored bytes.
    pub fn seal_contents(
        &self,
        passphrase: &SecretString,
        contents: &Contents,
        created_at: DateTime<Utc>,
    ) -> Result<Vec<u8>, EnvelopeError> {
        let key = DerivedKey::derive_with_random_salt(passphrase, self.write)?;
        Ok(key.seal_contents(contents, created_at)?.to_bytes())
    }

    /// Parses, checks, derives the key and decrypts whatever the envelope holds.
    pub fn open_contents(&self, passphrase: &SecretString, bytes: &[u8]) -> Result<Contents, EnvelopeError> {
        let envelope = Envelope::parse(bytes, &self.minimum)?;
        let key = DerivedKey::for_envelope(passphrase, &envelope)?;
        envelope.decrypt_contents(&key)
    }

    /// [`EnvelopeCodec::seal_contents`] on a blocking thread.
    pub async fn seal_contents_in_background(
        &self,
        passphrase: &SecretString,
        contents: &Contents,
        created_at: DateTime<Utc>,
    ) -> Result<Vec<u8>, EnvelopeError> {
        let (codec, passphrase, contents) = (*self, passphrase.clone(), contents.clone());
        in_background(move || codec.seal_contents(&passphrase, &contents, created_at)).await
    }

    /// [`EnvelopeCodec::open_contents`] on a blocking thread.
    pub async fn open_contents_in_background(
        &self,
        passphrase: &SecretString,
        bytes: &[u8],
    ) -> Result<Contents, EnvelopeError> {
        let (codec, passphrase, bytes) = (*self, passphrase.clone(), bytes.to_vec());
        in_background(move || codec.open_contents(&passphrase, &bytes)).await
    }

    /// [`EnvelopeCodec::seal`] on a blocking thread: Argon2id at full cost
    /// would stall the async executor. The caller's log subscriber follows.
    pub async fn seal_in_background(
        &self,
        passphrase: &SecretString,
        secrets: &SecretMap,
        created_at: DateTime<Utc>,
    ) -> Result<Vec<u8>, EnvelopeError> {
        let (codec, passphrase, secrets) = (*self, passphrase.clone(), secrets.clone());
        in_background(move || codec.seal(&passphrase, &secrets, created_at)).await
    }

    /// [`EnvelopeCodec::open`] on a blocking thread.
    pub async fn open_in_background(
        &self,
        passphrase: &SecretString,
        bytes: &[u8],
    ) -> Result<SecretMap, EnvelopeError> {
        let (codec, passphrase, bytes) = (*self, passphrase.clone(), bytes.to_vec());
        in_background(move || codec.open(&passphrase, &bytes)).await
    }
}

/// What an envelope holds: a secret map (version 1) or a Secret Manager
/// backup document, kept here as its JSON bytes (version 2, `content:
/// "secret-manager"`); `crate::secret_manager::document` reads those.
#[derive(Clone)]
pub enum Contents {
    Map(SecretMap),
    SecretManager(Zeroizing<Vec<u8>>),
}

impl Contents {
    /// Same kind and same plaintext (a map compared by names and values).
    pub fn same_contents(&self, other: &Contents) -> bool {
        match (self, other) {
            (Contents::Map(left), Contents::Map(right)) => left.same_contents(right),
            (Contents::SecretManager(left), Contents::SecretManager(right)) => {
                bool::from(left.as_slice().ct_eq(right.as_slice()))
            }
            _ => false,
        }
    }
}

impl fmt::Debug for Contents {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Contents::Map(map) => formatter.debug_tuple("Map").field(map).finish(),
            Contents::SecretManager(document) => formatter
                .debug_struct("SecretManager")
                .field("bytes", &document.len())
                .finish_non_exhaustive(),
        }
    }
}

/// Runs CPU-heavy work off the executor, keeping the caller's tracing dispatcher.
async fn in_background<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    let dispatch = tracing::dispatcher::get_default(|dispatch| dispatch.clone());
    match tokio::task::spawn_blocking(move || tracing::dispatcher::with_default(&dispatch, work)).await {
        Ok(value) => value,
        Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
        Err(error) => panic!("key derivation task was cancelled: {error}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> SecretString {
        SecretString::from("unit-test-passphrase-0123456789abcdef".to_owned())
    }

    #[test]
    fn round_trip_and_distinct_errors() {
        let codec = EnvelopeCodec::with_params(KdfParams::INSECURE_FOR_TESTS, KdfParams::INSECURE_FOR_TESTS);
        let secrets: SecretMap = [("A", "alpha"), ("B", "beta")].into_iter().collect();
        let bytes = codec.seal(&key(), &secrets, Utc::now()).unwrap();
        assert!(codec.open(&key(), &bytes).unwrap().same_contents(&secrets));
        let other = SecretString::from("another-passphrase-0123456789abcdef".to_owned());
        assert_eq!(codec.open(&other, &bytes).unwrap_err(), EnvelopeError::WrongKey);
        assert!(matches!(
            EnvelopeCodec::standard().open(&key(), &bytes).unwrap_err(),
            EnvelopeError::WeakKdf(_)
        ));
    }

    #[test]
    fn version_2_carries_a_document_and_authenticates_its_content_field() {
        let codec = EnvelopeCodec::with_params(KdfParams::INSECURE_FOR_TESTS, KdfParams::INSECURE_FOR_TESTS);
        let document = Contents::SecretManager(Zeroizing::new(br#"{"format":"x"}"#.to_vec()));
        let bytes = codec.seal_contents(&key(), &document, Utc::now()).unwrap();
        let header: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(header["version"], 2);
        assert_eq!(header["content"], CONTENT_SECRET_MANAGER);
        assert!(codec.open_contents(&key(), &bytes).unwrap().same_contents(&document));
        assert_eq!(codec.open(&key(), &bytes).unwrap_err(), EnvelopeError::NotAMap);
        // A map is still written as version 1, without the field.
        let map: SecretMap = [("A", "alpha")].into_iter().collect();
        let bytes = codec.seal_contents(&key(), &Contents::Map(map), Utc::now()).unwrap();
        let header: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(
            (header["version"].clone(), header.get("content")),
            (serde_json::json!(1), None)
        );
        // The field is checked and authenticated.
        let mut edited = header.clone();
        edited["content"] = serde_json::json!(CONTENT_SECRET_MANAGER);
        let edited = serde_json::to_vec(&edited).unwrap();
        assert!(matches!(
            codec.open_contents(&key(), &edited),
            Err(EnvelopeError::Malformed(_))
        ));
        let sealed = codec.seal_contents(&key(), &document, Utc::now()).unwrap();
        let mut other: serde_json::Value = serde_json::from_slice(&sealed).unwrap();
        other["content"] = serde_json::json!("something-else");
        assert_eq!(
            codec
                .open_contents(&key(), &serde_json::to_vec(&other).unwrap())
                .unwrap_err(),
            EnvelopeError::UnsupportedContent("something-else".into())
        );
    }

    // ---- fuzzing: the decoder meets hostile files (bounded for CI) ----

    use proptest::prelude::*;

    fn codec() -> EnvelopeCodec {
        EnvelopeCodec::with_params(KdfParams::INSECURE_FOR_TESTS, KdfParams::INSECURE_FOR_TESTS)
    }

    fn sealed() -> (SecretMap, Vec<u8>) {
        let secrets: SecretMap = [("DATABASE_PASSWORD", "hunter2-db"), ("API_TOKEN", "tok-9f8e")]
            .into_iter()
            .collect();
        let bytes = codec().seal(&key(), &secrets, Utc::now()).unwrap();
        (secrets, bytes)
    }

    /// An open either fails with a clear, non-empty error that does not echo
    /// the secrets, or yields exactly the sealed secrets (a change that does
    /// not alter meaning); never a panic, never other secrets.
    fn assert_opens_honestly(bytes: &[u8], original: &SecretMap) -> Result<(), TestCaseError> {
        match codec().open(&key(), bytes) {
            Ok(opened) => prop_assert!(opened.same_contents(original), "a mutated file opened to other secrets"),
            Err(error) => {
                let message = error.to_string();
                prop_assert!(message.len() > 10, "unclear error {message:?}");
                prop_assert!(
                    !message.contains("hunter2-db") && !message.contains("tok-9f8e"),
                    "{message}"
                );
            }
        }
        Ok(())
    }

    /// JSON values a hostile header may carry; numbers stay out of the
    /// accepted Argon2 range so no case spends seconds deriving a key.
    fn hostile_value() -> impl Strategy<Value = serde_json::Value> {
        use serde_json::{json, Value};
        prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            prop_oneof![
                Just(json!(0)),
                Just(json!(-1)),
                Just(json!(1.5)),
                Just(json!(u64::MAX)),
                Just(json!(1e300))
            ],
            ".{0,40}".prop_map(Value::String),
            Just(json!([])),
            Just(json!({"m": 0})),
            Just(json!("A".repeat(10_000))),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        #[test]
        fn arbitrary_bytes_never_panic_and_fail_clearly(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let (original, _) = sealed();
            assert_opens_honestly(&bytes, &original)?;
            if let Err(error) = Envelope::parse(&bytes, &KdfParams::INSECURE_FOR_TESTS) {
                prop_assert!(!error.to_string().is_empty());
            }
        }

        #[test]
        fn flipped_or_truncated_envelopes_never_open_to_other_secrets(
            position in any::<prop::sample::Index>(),
            flip in 1u8..=255,
            truncate in any::<bool>(),
        ) {
            let (original, mut bytes) = sealed();
            let index = position.index(bytes.len());
            if truncate {
                bytes.truncate(index);
            } else {
                bytes[index] ^= flip;
            }
            assert_opens_honestly(&bytes, &original)?;
        }

        #[test]
        fn envelopes_with_a_hostile_field_never_open_to_other_secrets(
            field in any::<prop::sample::Index>(),
            value in hostile_value(),
            nested in any::<bool>(),
        ) {
            let (original, bytes) = sealed();
            let mut document: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
            // A top-level field, or a field of the KDF header.
            let target = if nested {
                document.get_mut("kdf").and_then(serde_json::Value::as_object_mut)
            } else {
                document.as_object_mut()
            };
            if let Some(object) = target {
                let names: Vec<String> = object.keys().cloned().collect();
                let name = &names[field.index(names.len())];
                object.insert(name.clone(), value);
            }
            assert_opens_honestly(&serde_json::to_vec(&document).unwrap(), &original)?;
        }
    }
}
