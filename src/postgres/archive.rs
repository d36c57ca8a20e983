//! How a `pg_dump` archive is stored, and read back: the dump pipeline's
//! stages.
//!
//! ```text
//! backup:  pg_dump -Fc -Z0 ─▶ SHA-256 of the archive ─▶ zstd (multithreaded) ─▶ age (X25519) ─▶ store
//! restore: store ─▶ age ─▶ zstd ─▶ SHA-256 of the archive, tail held back until it matches ─▶ pg_restore
//! ```
//!
//! Each stage is optional (`BACKUP_COMPRESSION=gzip` leaves compression to
//! pg_dump itself, `none` to nobody; without recipients nothing is
//! encrypted), and the formats are the plain ones, so `age -d -i KEY | zstd
//! -d | pg_restore` restores a dump by hand. The stages run on one blocking
//! thread (zstd adds its own workers) between two bounded channels: memory
//! stays constant whatever the database's size.
//!
//! Reading back fails closed: the decoded stream yields its last
//! [`HOLDBACK_BYTES`] only once the whole stored stream was read, every age
//! chunk authenticated (the last one included) and the archive's size and
//! SHA-256 match the manifest. A `pg_restore --single-transaction` fed from it
//! therefore never sees the end of an archive that failed, and cannot commit.

use std::collections::VecDeque;
use std::fmt;
use std::io::{self, Read, Write};
use std::path::PathBuf;
use std::str::FromStr;

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use tokio::sync::{mpsc, oneshot};

use crate::storage::{ByteStream, STREAM_CHUNK_BYTES};

/// The first bytes of every age file.
pub const AGE_MAGIC: &[u8] = b"age-encryption.org/v1\n";
/// The first bytes of a zstd frame.
pub const ZSTD_MAGIC: &[u8] = &[0x28, 0xB5, 0x2F, 0xFD];
/// The first bytes of a `pg_dump --format=custom` archive.
pub const PGDMP_MAGIC: &[u8] = b"PGDMP";
/// The encryption scheme manifests record.
pub const AGE_X25519: &str = "age-x25519";
/// The default `BACKUP_COMPRESSION=zstd` level.
pub const DEFAULT_ZSTD_LEVEL: i32 = 3;
/// The decoded archive's tail, held back until the stream is proven.
pub const HOLDBACK_BYTES: usize = 1024 * 1024;
/// zstd's unit of multithreaded work; see [`compress`].
const ZSTD_JOB_BYTES: u32 = 1024 * 1024;
/// Chunks in flight between the stages and the async side, each way.
const CHANNEL_CHUNKS: usize = 8;

/// Who compressed the archive.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Compression {
    /// pg_dump's own (zlib) compression inside the archive: every backup made
    /// before manifest version 3.
    #[default]
    PgDumpGzip,
    /// A zstd stream around an uncompressed archive.
    Zstd,
    /// Neither.
    None,
}

/// `BACKUP_COMPRESSION`: `zstd[:LEVEL]` (default `zstd:3`), `gzip` or `none`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompressionSetting {
    pub compression: Compression,
    /// The zstd level (1 to 19).
    pub level: Option<i32>,
}

impl Default for CompressionSetting {
    fn default() -> Self {
        CompressionSetting {
            compression: Compression::Zstd,
            level: Some(DEFAULT_ZSTD_LEVEL),
        }
    }
}

impl CompressionSetting {
    pub const ACCEPTED: &'static str =
        "zstd (level 3), zstd:LEVEL with LEVEL 1 to 19, gzip (pg_dump's own compression) or none";

    /// The `--compress` argument pg_dump gets: none for its own gzip.
    pub fn pg_dump_argument(&self) -> Option<&'static str> {
        match self.compression {
            Compression::PgDumpGzip => None,
            Compression::Zstd | Compression::None => Some("--compress=0"),
        }
    }
}

impl FromStr for CompressionSetting {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let refuse = || format!("{text:?} is not a compression: expected {}", Self::ACCEPTED);
        match text.trim().to_ascii_lowercase().as_str() {
            "zstd" => Ok(CompressionSetting::default()),
            "gzip" => Ok(CompressionSetting {
                compression: Compression::PgDumpGzip,
                level: None,
            }),
            "none" => Ok(CompressionSetting {
                compression: Compression::None,
                level: None,
            }),
            other => {
                let level = other.strip_prefix("zstd:").ok_or_else(refuse)?;
                match level.parse::<i32>() {
                    Ok(level) if (1..=19).contains(&level) => Ok(CompressionSetting {
                        compression: Compression::Zstd,
                        level: Some(level),
                    }),
                    _ => Err(refuse()),
                }
            }
        }
    }
}

impl fmt::Display for CompressionSetting {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.compression, self.level) {
            (Compression::Zstd, Some(level)) => write!(formatter, "zstd:{level}"),
            (Compression::Zstd, None) => write!(formatter, "zstd"),
            (Compression::PgDumpGzip, _) => write!(formatter, "gzip"),
            (Compression::None, _) => write!(formatter, "none"),
        }
    }
}

/// Who the dump was encrypted to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Encryption {
    /// [`AGE_X25519`].
    pub scheme: String,
    /// The recipients' public keys (`age1…`): public, and what `age-keygen
    /// -y KEYFILE` prints for the identity that can decrypt.
    pub recipients: Vec<String>,
}

/// Size and SHA-256 of a byte stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Digest {
    pub size_bytes: u64,
    pub sha256: String,
}

/// How a stored dump was made from the plain archive (manifest version 3;
/// the default describes every backup made before: pg_dump's gzip, not
/// encrypted, the stored dump being the archive itself).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Encoding {
    pub compression: Compression,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub level: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub encryption: Option<Encryption>,
    /// The plain archive pg_restore reads; `None` when it is the stored dump.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub archive: Option<Digest>,
}

impl Encoding {
    /// What the object's name ends with: `.dump`, `.dump.zst`, `.dump.age`
    /// or `.dump.zst.age`.
    pub fn dump_suffix(&self) -> &'static str {
        match (self.compression == Compression::Zstd, self.encryption.is_some()) {
            (false, false) => ".dump",
            (true, false) => ".dump.zst",
            (false, true) => ".dump.age",
            (true, true) => ".dump.zst.age",
        }
    }

    pub fn is_encrypted(&self) -> bool {
        self.encryption.is_some()
    }

    /// One line for operators: `zstd:3, age to 2 recipients`.
    pub fn describe(&self) -> String {
        let compression = match (self.compression, self.level) {
            (Compression::Zstd, Some(level)) => format!("zstd:{level}"),
            (Compression::Zstd, None) => "zstd".to_owned(),
            (Compression::PgDumpGzip, _) => "pg_dump gzip".to_owned(),
            (Compression::None, _) => "uncompressed".to_owned(),
        };
        match &self.encryption {
            Some(encryption) => format!(
                "{compression}, age to {} recipient{}",
                encryption.recipients.len(),
                if encryption.recipients.len() == 1 { "" } else { "s" }
            ),
            None => format!("{compression}, not encrypted"),
        }
    }

    /// The first bytes the stored object must start with.
    pub fn stored_magic(&self) -> &'static [u8] {
        match (self.encryption.is_some(), self.compression) {
            (true, _) => AGE_MAGIC,
            (false, Compression::Zstd) => ZSTD_MAGIC,
            (false, _) => PGDMP_MAGIC,
        }
    }
}

/// `BACKUP_ENCRYPTION_RECIPIENTS`: the age X25519 public keys every dump is
/// encrypted to.
#[derive(Clone, PartialEq, Eq)]
pub struct Recipients(Vec<age::x25519::Recipient>);

impl Recipients {
    /// Parses comma-separated `age1…` keys; the error names the bad entry's
    /// position (public keys are not secret, but a pasted private key would be).
    pub fn parse(list: &str) -> Result<Recipients, String> {
        let mut keys = Vec::new();
        for (index, entry) in list.split(',').map(str::trim).enumerate() {
            if entry.is_empty() {
                continue;
            }
            if entry.to_ascii_uppercase().starts_with("AGE-SECRET-KEY-") {
                return Err(format!(
                    "entry {} is a private key (AGE-SECRET-KEY-…): the worker needs only public keys (age1…, \
                     what `age-keygen -y KEYFILE` prints); remove it from the variable and rotate it",
                    index + 1
                ));
            }
            match entry.parse::<age::x25519::Recipient>() {
                Ok(key) if !keys.contains(&key) => keys.push(key),
                Ok(_) => {}
                Err(problem) => {
                    return Err(format!(
                        "entry {} ({entry:?}) is not an age X25519 public key ({problem}): expected age1… as \
                         `age-keygen` prints it",
                        index + 1
                    ))
                }
            }
        }
        Ok(Recipients(keys))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn public_keys(&self) -> Vec<String> {
        self.0.iter().map(ToString::to_string).collect()
    }
}

impl fmt::Debug for Recipients {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.debug_list().entries(self.public_keys()).finish()
    }
}

/// Where restore and the drill read the age identities from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdentitySource {
    /// `BACKUP_AGE_IDENTITY_FILE`: a file of `AGE-SECRET-KEY-1…` lines.
    File(PathBuf),
    /// `BACKUP_AGE_IDENTITY_SECRET`: a Secret Manager secret holding such a file.
    Secret {
        /// `projects/P/secrets/S/versions/V`.
        version: String,
        settings: crate::secret_manager::ClientSettings,
    },
}

impl fmt::Display for IdentitySource {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IdentitySource::File(path) => write!(formatter, "BACKUP_AGE_IDENTITY_FILE {}", path.display()),
            IdentitySource::Secret { version, .. } => write!(formatter, "BACKUP_AGE_IDENTITY_SECRET {version}"),
        }
    }
}

/// The private keys that decrypt backups, read from an [`IdentitySource`].
/// Never printed: only their public keys are.
pub struct Identities {
    keys: Vec<age::x25519::Identity>,
    /// Where they came from, for messages.
    source: String,
}

impl fmt::Debug for Identities {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("Identities")
            .field("source", &self.source)
            .field("public_keys", &self.public_keys())
            .finish()
    }
}

impl Identities {
    /// Parses an age identity file: `AGE-SECRET-KEY-1…` lines, `#` comments
    /// and blank lines (what `age-keygen` writes). Errors name the line,
    /// never its text.
    pub fn parse(text: &str, source: &str) -> Result<Identities, String> {
        let mut keys = Vec::new();
        for (number, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            match line.parse::<age::x25519::Identity>() {
                Ok(key) => keys.push(key),
                Err(_) => {
                    return Err(format!(
                        "{source}: line {} is not an age X25519 identity (expected AGE-SECRET-KEY-1… as \
                         `age-keygen` writes it)",
                        number + 1
                    ))
                }
            }
        }
        if keys.is_empty() {
            return Err(format!(
                "{source} holds no age identity (expected AGE-SECRET-KEY-1… lines as `age-keygen` writes them)"
            ));
        }
        Ok(Identities {
            keys,
            source: source.to_owned(),
        })
    }

    /// Reads them from where the configuration says.
    pub async fn load(source: &IdentitySource) -> anyhow::Result<Identities> {
        let name = source.to_string();
        match source {
            IdentitySource::File(path) => {
                let text = tokio::fs::read_to_string(path)
                    .await
                    .map_err(|error| anyhow::anyhow!("cannot read {name}: {error}"))?;
                let text = zeroize::Zeroizing::new(text);
                Identities::parse(&text, &name).map_err(anyhow::Error::msg)
            }
            IdentitySource::Secret { version, settings } => {
                let client = crate::secret_manager::SecretManagerClient::connect(settings.clone())
                    .await
                    .map_err(|error| anyhow::anyhow!("cannot reach Secret Manager for {name}: {error}"))?;
                let data = client
                    .access(version)
                    .await
                    .map_err(|error| anyhow::anyhow!("cannot read {name}: {error}"))?;
                let text = zeroize::Zeroizing::new(String::from_utf8_lossy(data.expose()).into_owned());
                Identities::parse(&text, &name).map_err(anyhow::Error::msg)
            }
        }
    }

    pub fn public_keys(&self) -> Vec<String> {
        self.keys.iter().map(|key| key.to_public().to_string()).collect()
    }

    /// Refuses, before anything is downloaded, when none of these keys is
    /// one the backup was encrypted to.
    pub fn check_can_decrypt(&self, id: &str, encryption: &Encryption) -> Result<(), String> {
        let ours = self.public_keys();
        if encryption.recipients.iter().any(|recipient| ours.contains(recipient)) {
            return Ok(());
        }
        Err(format!(
            "{id} cannot be decrypted with {}: it was encrypted to {}, and the identities there are for {} \
             (compare with `age-keygen -y KEYFILE`); use the identity of one of its recipients, such as the \
             offline break-glass key",
            self.source,
            encryption.recipients.join(", "),
            ours.join(", ")
        ))
    }
}

/// Refuses an encrypted backup when no identity was configured, naming who
/// can decrypt it.
pub fn require_identities<'a>(
    id: &str,
    encoding: &Encoding,
    identities: Option<&'a Identities>,
) -> Result<Option<&'a Identities>, String> {
    let Some(encryption) = &encoding.encryption else {
        return Ok(None);
    };
    if encryption.scheme != AGE_X25519 {
        return Err(format!(
            "{id} is encrypted with {:?}; this build decrypts {AGE_X25519} only",
            encryption.scheme
        ));
    }
    let identities = identities.ok_or_else(|| {
        format!(
            "{id} is encrypted (age) to {}: set BACKUP_AGE_IDENTITY_FILE to a file holding one of their identities \
             (AGE-SECRET-KEY-1…), or BACKUP_AGE_IDENTITY_SECRET to the Secret Manager secret that holds it",
            encryption.recipients.join(", ")
        )
    })?;
    identities.check_can_decrypt(id, encryption)?;
    Ok(Some(identities))
}

/// What the worker does to an archive before storing it.
#[derive(Debug, Clone, Default)]
pub struct EncodeSettings {
    pub compression: CompressionSetting,
    /// `None` or empty: not encrypted.
    pub recipients: Option<Recipients>,
    /// zstd worker threads (0: compress on the pipeline's own thread).
    pub threads: u32,
}

impl EncodeSettings {
    /// The recipients dumps are encrypted to; `None` when not encrypting.
    pub fn active_recipients(&self) -> Option<&Recipients> {
        self.recipients.as_ref().filter(|keys| !keys.is_empty())
    }

    /// The manifest's description of what [`encode`] makes (without the
    /// archive's digest, known at the end).
    pub fn encoding(&self) -> Encoding {
        Encoding {
            compression: self.compression.compression,
            level: self.compression.level,
            encryption: self.active_recipients().map(|keys| Encryption {
                scheme: AGE_X25519.to_owned(),
                recipients: keys.public_keys(),
            }),
            archive: None,
        }
    }
}

/// The stored bytes of an archive, and (once they ended) the archive's digest.
pub struct Encoded {
    pub body: ByteStream,
    pub archive: oneshot::Receiver<Digest>,
}

/// Compresses and encrypts `archive` as `settings` say. The body fails (so
/// an upload of it is abandoned) if the archive fails or any stage does, and
/// it refuses to begin with anything but what `settings` promise: an age
/// header when encrypting, never a plain `PGDMP` archive.
pub fn encode(archive: ByteStream, settings: &EncodeSettings) -> Encoded {
    let encoding = settings.encoding();
    let (input, chunks) = mpsc::channel::<io::Result<Bytes>>(CHANNEL_CHUNKS);
    let (output, stored) = mpsc::channel::<io::Result<Bytes>>(CHANNEL_CHUNKS);
    let (digest_sender, digest) = oneshot::channel();
    tokio::spawn(forward(archive, input));
    let settings = settings.clone();
    tokio::task::spawn_blocking(move || {
        let mut chunks = chunks;
        let sink = ChunkWriter::new(output.clone());
        match run_encoder(&mut chunks, sink, &settings) {
            Ok(archive) => {
                let _ = digest_sender.send(archive);
            }
            Err(error) => {
                let _ = output.blocking_send(Err(error));
            }
        }
    });
    let body = checked_start(
        tokio_stream::wrappers::ReceiverStream::new(stored).boxed(),
        encoding.stored_magic(),
        encoding.is_encrypted(),
    );
    Encoded { body, archive: digest }
}

/// Feeds a stream into a channel until either side ends.
async fn forward(mut stream: ByteStream, sender: mpsc::Sender<io::Result<Bytes>>) {
    while let Some(item) = stream.next().await {
        let failed = item.is_err();
        if sender.send(item).await.is_err() || failed {
            return;
        }
    }
}

fn run_encoder(
    chunks: &mut mpsc::Receiver<io::Result<Bytes>>,
    sink: ChunkWriter,
    settings: &EncodeSettings,
) -> io::Result<Digest> {
    let recipients = settings.active_recipients();
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    let mut copy = |writer: &mut dyn Write| -> io::Result<()> {
        while let Some(chunk) = chunks.blocking_recv() {
            let chunk = chunk?;
            hasher.update(&chunk);
            size += chunk.len() as u64;
            writer.write_all(&chunk)?;
        }
        Ok(())
    };
    let mut sink = match recipients {
        Some(keys) => {
            let encryptor = age::Encryptor::with_recipients(keys.0.iter().map(|key| key as &dyn age::Recipient))
                .map_err(io::Error::other)?;
            let encrypted = encryptor.wrap_output(sink)?;
            compress(encrypted, settings, &mut copy)?.finish()?
        }
        None => compress(sink, settings, &mut copy)?,
    };
    sink.flush()?;
    Ok(Digest {
        size_bytes: size,
        sha256: hex::encode(hasher.finalize()),
    })
}

/// Runs `copy` into `writer` through zstd when asked, and finishes the frame.
fn compress<W: Write>(
    mut writer: W,
    settings: &EncodeSettings,
    copy: &mut dyn FnMut(&mut dyn Write) -> io::Result<()>,
) -> io::Result<W> {
    match settings.compression.compression {
        Compression::Zstd => {
            let level = settings.compression.level.unwrap_or(DEFAULT_ZSTD_LEVEL);
            let mut encoder = zstd::stream::write::Encoder::new(writer, level)?;
            encoder.include_checksum(true)?;
            if settings.threads > 0 {
                encoder.multithread(settings.threads)?;
                // zstd's default job is 4 windows (8 MiB at level 3), with
                // several such buffers per worker: ~60 MiB resident. 1 MiB
                // jobs keep the pipeline to a few MiB at a cost in ratio the
                // overlap between jobs mostly hides.
                encoder.set_parameter(zstd::zstd_safe::CParameter::JobSize(ZSTD_JOB_BYTES))?;
            }
            copy(&mut encoder)?;
            encoder.finish()
        }
        Compression::PgDumpGzip | Compression::None => {
            copy(&mut writer)?;
            Ok(writer)
        }
    }
}

/// Fails the stream unless its first bytes are `magic`, and, when
/// `encrypted`, unless they are not a plain archive: the last line of defence
/// against uploading a dump in the clear.
fn checked_start(stream: ByteStream, magic: &'static [u8], encrypted: bool) -> ByteStream {
    let mut seen: Vec<u8> = Vec::with_capacity(magic.len());
    stream
        .map(move |item| {
            let chunk = item?;
            if seen.len() < magic.len() {
                let wanted = (magic.len() - seen.len()).min(chunk.len());
                seen.extend_from_slice(&chunk[..wanted]);
                if !magic.starts_with(&seen) || (encrypted && seen.starts_with(PGDMP_MAGIC)) {
                    return Err(io::Error::other(format!(
                        "refusing to store the dump: it starts with {:?}, not {:?}{}",
                        String::from_utf8_lossy(&seen),
                        String::from_utf8_lossy(magic),
                        if encrypted { " (encryption is configured)" } else { "" }
                    )));
                }
            }
            Ok(chunk)
        })
        .boxed()
}

/// Why a stored dump could not be read back.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("reading the dump from the store: {0}")]
    Store(io::Error),
    #[error(
        "the encrypted dump failed authentication (a ciphertext chunk was altered, or the object is truncated): \
         {0}; nothing decrypted from it was trusted"
    )]
    Authentication(String),
    #[error("the dump's age header is damaged or was altered ({0})")]
    Header(String),
    #[error("none of the identities can decrypt the dump ({0})")]
    NoIdentity(String),
    #[error("the dump's zstd stream is corrupt: {0}")]
    Zstd(io::Error),
    #[error(
        "the decoded archive has {found_bytes} bytes with SHA-256 {found_sha256}, the manifest says {bytes} bytes \
         with SHA-256 {sha256}"
    )]
    Digest {
        found_bytes: u64,
        found_sha256: String,
        bytes: u64,
        sha256: String,
    },
}

impl DecodeError {
    /// A storage error that came through the readers, as its own.
    fn from_store(error: &io::Error) -> DecodeError {
        DecodeError::Store(io::Error::new(error.kind(), error.to_string()))
    }
}

/// A storage error travelling through the age and zstd readers, told apart
/// from their own errors at the end.
#[derive(Debug)]
struct StoreRead(io::Error);

impl fmt::Display for StoreRead {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(formatter)
    }
}

impl std::error::Error for StoreRead {}

fn store_error(error: &io::Error) -> Option<&StoreRead> {
    error.get_ref().and_then(|inner| inner.downcast_ref::<StoreRead>())
}

/// Decrypts and decompresses a stored dump into the plain archive, checking
/// it against `expected` (the manifest's archive digest). The archive's last
/// [`HOLDBACK_BYTES`] come only after the whole stored stream was read and
/// proven; a failure ends the stream with a [`DecodeError`] (inside the
/// `io::Error`) instead.
pub fn decode(
    stored: ByteStream,
    encoding: &Encoding,
    identities: Option<std::sync::Arc<Identities>>,
    expected: Digest,
) -> ByteStream {
    let (input, chunks) = mpsc::channel::<io::Result<Bytes>>(CHANNEL_CHUNKS);
    let (output, plain) = mpsc::channel::<io::Result<Bytes>>(CHANNEL_CHUNKS);
    tokio::spawn(forward(stored, input));
    let encoding = encoding.clone();
    tokio::task::spawn_blocking(move || {
        let reader = ChunkReader {
            chunks,
            current: Bytes::new(),
        };
        if let Err(error) = run_decoder(reader, &encoding, identities.as_deref(), &expected, &output) {
            let _ = output.blocking_send(Err(io::Error::other(error)));
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(plain).boxed()
}

fn run_decoder(
    reader: ChunkReader,
    encoding: &Encoding,
    identities: Option<&Identities>,
    expected: &Digest,
    output: &mpsc::Sender<io::Result<Bytes>>,
) -> Result<(), DecodeError> {
    let encrypted = encoding.encryption.is_some();
    let decrypted: Box<dyn Read> = if encrypted {
        let identities = identities.ok_or_else(|| DecodeError::NoIdentity("no identity was configured".to_owned()))?;
        let decryptor = age::Decryptor::new_buffered(io::BufReader::with_capacity(STREAM_CHUNK_BYTES, reader))
            .map_err(|error| age_error(error, identities))?;
        let keys = identities.keys.iter().map(|key| key as &dyn age::Identity);
        Box::new(decryptor.decrypt(keys).map_err(|error| age_error(error, identities))?)
    } else {
        Box::new(reader)
    };
    let zstd = encoding.compression == Compression::Zstd;
    let mut plain: Box<dyn Read> = if zstd {
        Box::new(zstd::stream::read::Decoder::new(decrypted).map_err(DecodeError::Zstd)?)
    } else {
        decrypted
    };
    let classify = |error: io::Error| -> DecodeError {
        if let Some(StoreRead(inner)) = store_error(&error) {
            return DecodeError::from_store(inner);
        }
        // The age reader's own errors come through zstd unchanged: age
        // fails a chunk as InvalidData or UnexpectedEof; zstd's are Other.
        if encrypted && matches!(error.kind(), io::ErrorKind::InvalidData | io::ErrorKind::UnexpectedEof) {
            DecodeError::Authentication(error.to_string())
        } else if zstd {
            DecodeError::Zstd(error)
        } else {
            DecodeError::Store(error)
        }
    };
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    let mut held: VecDeque<Bytes> = VecDeque::new();
    let mut held_bytes = 0usize;
    loop {
        let mut buffer = BytesMut::zeroed(STREAM_CHUNK_BYTES);
        let read = match plain.read(&mut buffer) {
            Ok(read) => read,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(error) => return Err(classify(error)),
        };
        if read == 0 {
            break;
        }
        buffer.truncate(read);
        let chunk = buffer.freeze();
        hasher.update(&chunk);
        size += read as u64;
        held_bytes += chunk.len();
        held.push_back(chunk);
        // Release what is beyond the tail; a closed receiver (pg_restore's
        // feeder gave up) ends the work.
        while held
            .front()
            .is_some_and(|front| held_bytes - front.len() >= HOLDBACK_BYTES)
        {
            let front = held.pop_front().expect("front exists");
            held_bytes -= front.len();
            if output.blocking_send(Ok(front)).is_err() {
                return Ok(());
            }
        }
    }
    let sha256 = hex::encode(hasher.finalize());
    if size != expected.size_bytes || sha256 != expected.sha256 {
        return Err(DecodeError::Digest {
            found_bytes: size,
            found_sha256: sha256,
            bytes: expected.size_bytes,
            sha256: expected.sha256.clone(),
        });
    }
    for chunk in held {
        if output.blocking_send(Ok(chunk)).is_err() {
            break;
        }
    }
    Ok(())
}

fn age_error(error: age::DecryptError, identities: &Identities) -> DecodeError {
    match error {
        age::DecryptError::NoMatchingKeys => DecodeError::NoIdentity(format!(
            "{} holds keys for {}",
            identities.source,
            identities.public_keys().join(", ")
        )),
        age::DecryptError::Io(error) => match store_error(&error) {
            Some(StoreRead(inner)) => DecodeError::from_store(inner),
            None => DecodeError::Header(error.to_string()),
        },
        other => DecodeError::Header(other.to_string()),
    }
}

/// The blocking side of a channel of chunks, as a reader.
struct ChunkReader {
    chunks: mpsc::Receiver<io::Result<Bytes>>,
    current: Bytes,
}

impl Read for ChunkReader {
    fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.chunks.blocking_recv() {
                Some(Ok(chunk)) => self.current = chunk,
                Some(Err(error)) => return Err(io::Error::new(error.kind(), StoreRead(error))),
                None => return Ok(0),
            }
        }
        let count = buffer.len().min(self.current.len());
        buffer[..count].copy_from_slice(&self.current.split_to(count));
        Ok(count)
    }
}

/// The blocking side of a channel of chunks, as a writer that sends
/// [`STREAM_CHUNK_BYTES`] at a time.
struct ChunkWriter {
    chunks: mpsc::Sender<io::Result<Bytes>>,
    buffer: BytesMut,
}

impl ChunkWriter {
    fn new(chunks: mpsc::Sender<io::Result<Bytes>>) -> ChunkWriter {
        ChunkWriter {
            chunks,
            buffer: BytesMut::with_capacity(STREAM_CHUNK_BYTES),
        }
    }

    fn send(&mut self) -> io::Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let chunk = self.buffer.split().freeze();
        self.buffer.reserve(STREAM_CHUNK_BYTES);
        self.chunks
            .blocking_send(Ok(chunk))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the upload was abandoned"))
    }
}

impl Write for ChunkWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buffer.extend_from_slice(data);
        if self.buffer.len() >= STREAM_CHUNK_BYTES {
            self.send()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send()
    }
}

/// Decrypts a small stored file (the globals) whole, with the same errors.
pub fn decrypt_small(
    id: &str,
    key: &str,
    bytes: &[u8],
    identities: &Identities,
) -> Result<zeroize::Zeroizing<Vec<u8>>, String> {
    let fail = |error: DecodeError| format!("{id}: {key}: {error}");
    let decryptor = age::Decryptor::new_buffered(bytes).map_err(|error| fail(age_error(error, identities)))?;
    let keys = identities.keys.iter().map(|key| key as &dyn age::Identity);
    let mut reader = decryptor
        .decrypt(keys)
        .map_err(|error| fail(age_error(error, identities)))?;
    let mut plain = zeroize::Zeroizing::new(Vec::new());
    reader
        .read_to_end(&mut plain)
        .map_err(|error| fail(DecodeError::Authentication(error.to_string())))?;
    Ok(plain)
}

/// Encrypts a small file (the globals) whole to `recipients`.
pub fn encrypt_small(bytes: &[u8], recipients: &Recipients) -> io::Result<Vec<u8>> {
    let encryptor = age::Encryptor::with_recipients(recipients.0.iter().map(|key| key as &dyn age::Recipient))
        .map_err(io::Error::other)?;
    let mut stored = Vec::with_capacity(bytes.len() + 256);
    let mut writer = encryptor.wrap_output(&mut stored)?;
    writer.write_all(bytes)?;
    writer.finish()?;
    Ok(stored)
}

/// A new identity and its public key, for `dev` and tests: the identity file
/// text as `age-keygen` writes it.
pub fn generate_identity() -> (zeroize::Zeroizing<String>, String) {
    use secrecy::ExposeSecret;
    let identity = age::x25519::Identity::generate();
    let public = identity.to_public().to_string();
    let text = format!(
        "# created: {}\n# public key: {public}\n{}\n",
        chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ"),
        identity.to_string().expose_secret()
    );
    (zeroize::Zeroizing::new(text), public)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream_of(bytes: Vec<u8>, chunk: usize) -> ByteStream {
        let chunks: Vec<io::Result<Bytes>> = bytes
            .chunks(chunk)
            .map(|part| Ok(Bytes::copy_from_slice(part)))
            .collect();
        futures::stream::iter(chunks).boxed()
    }

    async fn collect(stream: ByteStream) -> io::Result<Vec<u8>> {
        let mut all = Vec::new();
        let mut stream = stream;
        while let Some(chunk) = stream.next().await {
            all.extend_from_slice(&chunk?);
        }
        Ok(all)
    }

    fn archive(size: usize) -> Vec<u8> {
        let mut bytes = PGDMP_MAGIC.to_vec();
        let mut state = 7u64;
        while bytes.len() < size {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            bytes.extend_from_slice(format!("row {} {}\n", state >> 40, state % 97).as_bytes());
        }
        bytes.truncate(size);
        bytes
    }

    fn digest_of(bytes: &[u8]) -> Digest {
        Digest {
            size_bytes: bytes.len() as u64,
            sha256: hex::encode(Sha256::digest(bytes)),
        }
    }

    #[test]
    fn compression_settings() {
        assert_eq!(
            "zstd".parse::<CompressionSetting>().unwrap(),
            CompressionSetting::default()
        );
        assert_eq!("zstd:19".parse::<CompressionSetting>().unwrap().level, Some(19));
        assert_eq!(
            "gzip".parse::<CompressionSetting>().unwrap().compression,
            Compression::PgDumpGzip
        );
        assert_eq!(
            "NONE".parse::<CompressionSetting>().unwrap().compression,
            Compression::None
        );
        for bad in ["zstd:0", "zstd:20", "zstd:x", "lz4", "", "zstd:"] {
            let error = bad.parse::<CompressionSetting>().unwrap_err();
            assert!(error.contains("zstd:LEVEL with LEVEL 1 to 19"), "{bad}: {error}");
        }
        assert_eq!(CompressionSetting::default().to_string(), "zstd:3");
    }

    #[test]
    fn recipients_parse_and_refuse_private_keys() {
        let (identity, public) = generate_identity();
        let (_, other) = generate_identity();
        let parsed = Recipients::parse(&format!(" {public} ,{other},{public},")).unwrap();
        assert_eq!(parsed.public_keys(), [public.clone(), other]);
        assert!(Recipients::parse(" , ").unwrap().is_empty());
        let secret = identity.lines().last().unwrap();
        let error = Recipients::parse(&format!("{public},{secret}")).unwrap_err();
        assert!(error.contains("entry 2 is a private key"), "{error}");
        assert!(!error.contains(secret), "the private key is not echoed: {error}");
        let error = Recipients::parse("age1nope").unwrap_err();
        assert!(
            error.contains("entry 1 (\"age1nope\") is not an age X25519 public key"),
            "{error}"
        );
    }

    #[test]
    fn identities_parse_without_echoing() {
        let (text, public) = generate_identity();
        let identities = Identities::parse(&text, "test file").unwrap();
        assert_eq!(identities.public_keys(), [public]);
        let bad = "AGE-SECRET-KEY-1NOTAKEY\n";
        let error = Identities::parse(bad, "test file").unwrap_err();
        assert!(
            error.contains("test file: line 1 is not an age X25519 identity"),
            "{error}"
        );
        assert!(!error.contains("NOTAKEY"), "{error}");
        assert!(Identities::parse("# only a comment\n", "f")
            .unwrap_err()
            .contains("holds no age identity"));
        assert!(!format!("{identities:?}").contains("AGE-SECRET-KEY"));
    }

    #[tokio::test]
    async fn every_combination_round_trips_and_starts_as_promised() {
        let plain = archive(3 * HOLDBACK_BYTES + 12345);
        let (text, public) = generate_identity();
        let identities = std::sync::Arc::new(Identities::parse(&text, "test").unwrap());
        for compression in ["zstd:3", "gzip", "none"] {
            for encrypted in [false, true] {
                let settings = EncodeSettings {
                    compression: compression.parse().unwrap(),
                    recipients: encrypted.then(|| Recipients::parse(&public).unwrap()),
                    threads: 2,
                };
                let encoded = encode(stream_of(plain.clone(), 100_000), &settings);
                let stored = collect(encoded.body).await.unwrap();
                let digest = encoded.archive.await.unwrap();
                assert_eq!(digest, digest_of(&plain), "{compression} {encrypted}");
                let encoding = Encoding {
                    archive: Some(digest.clone()),
                    ..settings.encoding()
                };
                assert!(stored.starts_with(encoding.stored_magic()), "{compression} {encrypted}");
                if encrypted {
                    assert!(!stored.windows(PGDMP_MAGIC.len()).any(|window| window == PGDMP_MAGIC));
                }
                if compression == "zstd:3" {
                    assert!(stored.len() < plain.len() / 2, "zstd compresses: {}", stored.len());
                }
                let decoded = decode(
                    stream_of(stored, 70_000),
                    &encoding,
                    encrypted.then(|| identities.clone()),
                    digest,
                );
                assert!(collect(decoded).await.unwrap() == plain, "{compression} {encrypted}");
            }
        }
    }

    #[tokio::test]
    async fn a_plain_archive_is_never_stored_when_encrypting() {
        let checked = checked_start(stream_of(archive(1000), 3), AGE_MAGIC, true);
        let error = collect(checked).await.unwrap_err();
        assert!(
            error.to_string().contains("refusing to store the dump: it starts with"),
            "{error}"
        );
    }

    /// Decodes `stored` and returns what reached the consumer and the error.
    async fn decode_failure(stored: Vec<u8>, encoding: &Encoding, identities: Identities) -> (usize, String) {
        let digest = encoding.archive.clone().unwrap();
        let mut decoded = decode(stream_of(stored, 65_536), encoding, Some(identities.into()), digest);
        let mut delivered = 0;
        while let Some(chunk) = decoded.next().await {
            match chunk {
                Ok(chunk) => delivered += chunk.len(),
                Err(error) => return (delivered, error.to_string()),
            }
        }
        panic!("decoding did not fail")
    }

    #[tokio::test]
    async fn failures_are_named_and_the_tail_is_never_released() {
        let plain = archive(4 * HOLDBACK_BYTES);
        let (text, public) = generate_identity();
        let settings = EncodeSettings {
            compression: "none".parse().unwrap(),
            recipients: Some(Recipients::parse(&public).unwrap()),
            threads: 0,
        };
        let encoded = encode(stream_of(plain.clone(), 100_000), &settings);
        let stored = collect(encoded.body).await.unwrap();
        let encoding = Encoding {
            archive: Some(encoded.archive.await.unwrap()),
            ..settings.encoding()
        };
        let identities = || Identities::parse(&text, "test").unwrap();

        let mut tampered = stored.clone();
        let middle = tampered.len() / 2;
        tampered[middle] ^= 1;
        let (delivered, error) = decode_failure(tampered, &encoding, identities()).await;
        assert!(error.contains("failed authentication"), "{error}");
        assert!(delivered <= plain.len() - HOLDBACK_BYTES);

        // Cut at a chunk boundary: every remaining chunk authenticates.
        let header = stored.len() - (plain.len() / 65536) * (65536 + 16);
        let cut = stored[..header + 40 * (65536 + 16)].to_vec();
        let (delivered, error) = decode_failure(cut, &encoding, identities()).await;
        assert!(error.contains("failed authentication"), "{error}");
        assert!(delivered <= plain.len() - HOLDBACK_BYTES);

        let (other, _) = generate_identity();
        let (_, error) = decode_failure(stored.clone(), &encoding, Identities::parse(&other, "other").unwrap()).await;
        assert!(error.contains("none of the identities can decrypt the dump"), "{error}");

        let mut wrong_digest = encoding.clone();
        wrong_digest.archive.as_mut().unwrap().sha256 = "0".repeat(64);
        let (delivered, error) = decode_failure(stored, &wrong_digest, identities()).await;
        assert!(error.contains("the decoded archive has"), "{error}");
        assert!(delivered <= plain.len() - HOLDBACK_BYTES);
    }
}
