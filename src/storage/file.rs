//! Local filesystem backend (`file:///path`), the development default.
//!
//! Writes go to a temporary file under `<root>/.keshless-tmp/` and are then
//! linked (create-only: `link(2)` fails if the name exists, atomically) or
//! renamed (overwrite) into place, so a half-written object never appears
//! under its final name. The temporary directory is on the same filesystem as
//! the objects, which is what makes the final step atomic.
//!
//! A hold is a marker `<root>/.keshless-holds/<key>.json` (the hold as JSON):
//! this store refuses to delete or replace an object while its marker exists,
//! as Cloud Storage does for a temporary hold.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use tokio::io::AsyncWriteExt;

use super::hashing::{HashingStream, StreamEnd};
use super::key::checked;
use super::{
    stream_from_reader, BlobStore, ByteStream, ErrorClass, Hold, ListOptions, ObjectInfo, PutReport, StorageError,
    StoreLocation, WriteMode,
};

const TEMPORARY_DIRECTORY: &str = ".keshless-tmp";
const HOLDS_DIRECTORY: &str = ".keshless-holds";

/// A directory used as an object store.
#[derive(Debug, Clone)]
pub struct FileStore {
    location: StoreLocation,
    root: PathBuf,
    /// `None`: the filesystem stamps modification times itself. `Some`:
    /// every object written is stamped with this clock's time instead, so
    /// the store's notion of time (what retention and the store-clock check
    /// read) follows a simulated clock.
    clock: Option<crate::clock::Clock>,
}

/// A temporary file that is removed when dropped unless it was published;
/// this is what keeps a failed or cancelled upload from leaving debris.
struct TemporaryFile {
    path: PathBuf,
    published: bool,
}

impl Drop for TemporaryFile {
    fn drop(&mut self) {
        if !self.published {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

impl FileStore {
    /// Opens (creating if needed) the directory a `file://` location names.
    pub async fn open(location: StoreLocation) -> anyhow::Result<Self> {
        let StoreLocation::File { root } = &location else {
            anyhow::bail!("{location} is not a file:// location");
        };
        let root = root.clone();
        let temporary = root.join(TEMPORARY_DIRECTORY);
        tokio::fs::create_dir_all(&temporary)
            .await
            .map_err(|error| anyhow::anyhow!("cannot create the file store at {}: {error}", root.display()))?;
        remove_stale_temporaries(&temporary).await;
        Ok(FileStore {
            location,
            root,
            clock: None,
        })
    }

    /// Stamps what it writes with `clock`'s time (the year simulation); the
    /// system clock leaves it to the filesystem.
    pub fn with_clock(mut self, clock: crate::clock::Clock) -> FileStore {
        self.clock = (!clock.is_system()).then_some(clock);
        self
    }

    fn path_of(&self, key: &str) -> Result<PathBuf, StorageError> {
        Ok(self.root.join(checked(key)?))
    }

    fn io_error(&self, operation: &'static str, key: &str, error: std::io::Error) -> StorageError {
        let location = self.location.to_string();
        match error.kind() {
            ErrorKind::NotFound => StorageError::NotFound {
                location,
                key: key.to_owned(),
            },
            ErrorKind::AlreadyExists => StorageError::AlreadyExists {
                location,
                key: key.to_owned(),
            },
            kind => StorageError::Backend {
                location,
                operation,
                key: key.to_owned(),
                // A full disk or a permission problem will not fix itself
                // between retries; interrupted or timed-out I/O might.
                class: match kind {
                    ErrorKind::Interrupted | ErrorKind::TimedOut | ErrorKind::WouldBlock => ErrorClass::Transient,
                    _ => ErrorClass::Permanent,
                },
                status: None,
                message: error.to_string(),
            },
        }
    }

    fn hold_path(&self, key: &str) -> PathBuf {
        self.root.join(HOLDS_DIRECTORY).join(format!("{key}.json"))
    }

    /// The hold on `key`, if its marker exists. Blocking: called from the
    /// listing's blocking walk and, through [`FileStore::hold_of`], elsewhere.
    fn read_hold(root: &Path, key: &str) -> std::io::Result<Option<Hold>> {
        let path = root.join(HOLDS_DIRECTORY).join(format!("{key}.json"));
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|error| std::io::Error::other(format!("{}: not a hold marker: {error}", path.display()))),
            Err(error) if error.kind() == ErrorKind::NotFound => Ok(None),
            Err(error) => Err(error),
        }
    }

    async fn hold_of(&self, key: &str) -> Result<Option<Hold>, StorageError> {
        let root = self.root.clone();
        let owned = key.to_owned();
        tokio::task::spawn_blocking(move || FileStore::read_hold(&root, &owned))
            .await
            .map_err(|error| self.io_error("stat", key, std::io::Error::other(error.to_string())))?
            .map_err(|error| self.io_error("stat", key, error))
    }

    /// Refuses to delete or replace a held object.
    async fn refuse_if_held(&self, key: &str) -> Result<(), StorageError> {
        match self.hold_of(key).await? {
            Some(hold) => Err(StorageError::Held {
                location: self.location.to_string(),
                key: key.to_owned(),
                reason: hold.describe(),
            }),
            None => Ok(()),
        }
    }

    fn info(&self, key: String, metadata: &std::fs::Metadata) -> ObjectInfo {
        let updated = metadata
            .modified()
            .map(chrono::DateTime::<chrono::Utc>::from)
            .unwrap_or_default();
        ObjectInfo {
            key,
            size: metadata.len(),
            generation: None,
            live: true,
            updated,
            created: updated,
            noncurrent_since: None,
            crc32c: None,
            md5: None,
            content_type: None,
            hold: None,
        }
    }

    fn new_temporary(&self) -> TemporaryFile {
        TemporaryFile {
            path: self
                .root
                .join(TEMPORARY_DIRECTORY)
                .join(uuid::Uuid::new_v4().simple().to_string()),
            published: false,
        }
    }

    /// Moves a finished temporary file to its final name.
    async fn publish(
        &self,
        temporary: &mut TemporaryFile,
        key: &str,
        destination: &Path,
        mode: WriteMode,
    ) -> Result<(), StorageError> {
        let operation = "publish";
        if let Some(clock) = &self.clock {
            let modified = std::time::SystemTime::from(clock.now());
            std::fs::File::options()
                .write(true)
                .open(&temporary.path)
                .and_then(|file| file.set_modified(modified))
                .map_err(|error| self.io_error(operation, key, error))?;
        }
        if let Some(parent) = destination.parent() {
            tokio::fs::create_dir_all(parent)
                .await
                .map_err(|error| self.io_error(operation, key, error))?;
        }
        match mode {
            WriteMode::CreateOnly => {
                // link(2) refuses an existing name atomically; the temporary
                // name is then removed by the guard.
                tokio::fs::hard_link(&temporary.path, destination)
                    .await
                    .map_err(|error| self.io_error(operation, key, error))?;
            }
            WriteMode::Overwrite => {
                tokio::fs::rename(&temporary.path, destination)
                    .await
                    .map_err(|error| self.io_error(operation, key, error))?;
                temporary.published = true;
            }
        }
        if let Some(parent) = destination.parent() {
            // Make the new directory entry durable, not just the file's bytes.
            let parent = parent.to_owned();
            let _ =
                tokio::task::spawn_blocking(move || std::fs::File::open(parent).and_then(|dir| dir.sync_all())).await;
        }
        Ok(())
    }

    fn existing_generation_refused(&self) -> StorageError {
        StorageError::Unsupported {
            location: self.location.to_string(),
            operation: "reading or deleting a specific generation",
            detail: "a file store keeps only the live object (use a versioned gs:// bucket for generations)",
        }
    }
}

#[async_trait]
impl BlobStore for FileStore {
    fn location(&self) -> &StoreLocation {
        &self.location
    }

    fn supports_versions(&self) -> bool {
        false
    }

    async fn put(&self, key: &str, body: ByteStream, mode: WriteMode) -> Result<PutReport, StorageError> {
        let destination = self.path_of(key)?;
        if mode == WriteMode::CreateOnly && tokio::fs::try_exists(&destination).await.unwrap_or(false) {
            // Fail before streaming gigabytes that could never be published.
            return Err(self.io_error("create", key, std::io::Error::from(ErrorKind::AlreadyExists)));
        }
        if mode == WriteMode::Overwrite {
            self.refuse_if_held(key).await?;
        }
        let mut temporary = self.new_temporary();
        let mut file = tokio::fs::File::create(&temporary.path)
            .await
            .map_err(|error| self.io_error("create", key, error))?;
        let mut hashing = HashingStream::new(body);
        let observer = hashing.observer();
        while let Some(chunk) = hashing.next().await {
            let chunk = match chunk {
                Ok(chunk) => chunk,
                Err(_) => break, // reported through the observer below
            };
            file.write_all(&chunk)
                .await
                .map_err(|error| self.io_error("write", key, error))?;
        }
        let digests = match observer.take() {
            StreamEnd::Complete(digests) => digests,
            StreamEnd::Failed(source) => {
                return Err(StorageError::Source {
                    location: self.location.to_string(),
                    key: key.to_owned(),
                    source,
                })
            }
            StreamEnd::Unfinished { .. } => unreachable!("the stream was read to its end"),
        };
        file.sync_all()
            .await
            .map_err(|error| self.io_error("write", key, error))?;
        drop(file);
        self.publish(&mut temporary, key, &destination, mode).await?;
        let metadata = tokio::fs::metadata(&destination)
            .await
            .map_err(|error| self.io_error("stat", key, error))?;
        Ok(PutReport {
            object: self.info(key.to_owned(), &metadata),
            sha256: digests.sha256_hex,
            bytes: digests.bytes,
        })
    }

    async fn get(&self, key: &str, generation: Option<i64>) -> Result<ByteStream, StorageError> {
        if generation.is_some() {
            return Err(self.existing_generation_refused());
        }
        let path = self.path_of(key)?;
        let file = tokio::fs::File::open(&path)
            .await
            .map_err(|error| self.io_error("read", key, error))?;
        Ok(stream_from_reader(file))
    }

    async fn stat(&self, key: &str) -> Result<Option<ObjectInfo>, StorageError> {
        let path = self.path_of(key)?;
        match tokio::fs::metadata(&path).await {
            Ok(metadata) if metadata.is_file() => {
                let mut info = self.info(key.to_owned(), &metadata);
                info.hold = self.hold_of(key).await?;
                Ok(Some(info))
            }
            Ok(_) => Ok(None),
            Err(error) if error.kind() == ErrorKind::NotFound => Ok(None),
            Err(error) => Err(self.io_error("stat", key, error)),
        }
    }

    fn list<'a>(&'a self, prefix: &'a str, _options: ListOptions) -> BoxStream<'a, Result<ObjectInfo, StorageError>> {
        // Walk only the deepest directory the prefix fully names, then filter
        // and sort: GCS lists in byte order of the whole name, which a
        // directory-by-directory walk would not reproduce ("a.txt" < "a/b").
        let directory_part = prefix.rsplit_once('/').map(|(directory, _)| directory).unwrap_or("");
        let start = if directory_part.is_empty() {
            self.root.clone()
        } else {
            self.root.join(directory_part)
        };
        let root = self.root.clone();
        let prefix_owned = prefix.to_owned();
        let store = self.clone();
        let walked = tokio::task::spawn_blocking(move || walk(&root, &start, &prefix_owned));
        futures::stream::once(async move {
            let entries = walked
                .await
                .map_err(|error| std::io::Error::other(error.to_string()))
                .and_then(|result| result)
                .map_err(|error| store.io_error("list", prefix, error))?;
            Ok::<_, StorageError>(futures::stream::iter(entries.into_iter().map(
                move |(key, metadata, hold)| {
                    let mut info = store.info(key, &metadata);
                    info.hold = hold;
                    Ok(info)
                },
            )))
        })
        .try_flatten()
        .boxed()
    }

    async fn copy(
        &self,
        from: &str,
        from_generation: Option<i64>,
        to: &str,
        mode: WriteMode,
    ) -> Result<ObjectInfo, StorageError> {
        if from_generation.is_some() {
            return Err(self.existing_generation_refused());
        }
        let source = self.path_of(from)?;
        let destination = self.path_of(to)?;
        if mode == WriteMode::Overwrite {
            self.refuse_if_held(to).await?;
        }
        let mut temporary = self.new_temporary();
        tokio::fs::copy(&source, &temporary.path)
            .await
            .map_err(|error| self.io_error("copy", from, error))?;
        // The bytes must be durable before the name appears, as in `put`.
        tokio::fs::File::open(&temporary.path)
            .await
            .map_err(|error| self.io_error("copy", to, error))?
            .sync_all()
            .await
            .map_err(|error| self.io_error("copy", to, error))?;
        self.publish(&mut temporary, to, &destination, mode).await?;
        let metadata = tokio::fs::metadata(&destination)
            .await
            .map_err(|error| self.io_error("stat", to, error))?;
        Ok(self.info(to.to_owned(), &metadata))
    }

    async fn delete(&self, key: &str, generation: Option<i64>) -> Result<(), StorageError> {
        if generation.is_some() {
            return Err(self.existing_generation_refused());
        }
        let path = self.path_of(key)?;
        self.refuse_if_held(key).await?;
        tokio::fs::remove_file(&path)
            .await
            .map_err(|error| self.io_error("delete", key, error))
    }

    async fn set_hold(&self, key: &str, hold: Option<&Hold>) -> Result<(), StorageError> {
        let path = self.path_of(key)?;
        let marker = self.hold_path(key);
        let Some(hold) = hold else {
            return match tokio::fs::remove_file(&marker).await {
                Ok(()) => Ok(()),
                Err(error) if error.kind() == ErrorKind::NotFound => Ok(()),
                Err(error) => Err(self.io_error("release", key, error)),
            };
        };
        if !tokio::fs::try_exists(&path).await.unwrap_or(false) {
            return Err(self.io_error("hold", key, std::io::Error::from(ErrorKind::NotFound)));
        }
        if let Some(parent) = marker.parent() {
            tokio::fs::create_dir_all(parent)
                .await
                .map_err(|error| self.io_error("hold", key, error))?;
        }
        // Written aside and renamed: a half-written marker never exists.
        let temporary = self.new_temporary();
        let bytes = serde_json::to_vec(hold).expect("a hold serialises");
        tokio::fs::write(&temporary.path, bytes)
            .await
            .map_err(|error| self.io_error("hold", key, error))?;
        tokio::fs::rename(&temporary.path, &marker)
            .await
            .map_err(|error| self.io_error("hold", key, error))
    }
}

/// Temporary files a crash left behind (a process killed mid-upload never
/// runs its cleanup). Only old ones: another process may be writing now.
async fn remove_stale_temporaries(directory: &Path) {
    let Ok(mut entries) = tokio::fs::read_dir(directory).await else {
        return;
    };
    let stale_after = std::time::Duration::from_secs(48 * 3600);
    while let Ok(Some(entry)) = entries.next_entry().await {
        let age = entry
            .metadata()
            .await
            .ok()
            .and_then(|metadata| metadata.modified().ok())
            .and_then(|modified| modified.elapsed().ok());
        if age.is_some_and(|age| age > stale_after) {
            let _ = tokio::fs::remove_file(entry.path()).await;
        }
    }
}

/// Every regular file under `start` whose root-relative key starts with
/// `prefix`, sorted by key, with its hold; the store's own directories
/// (temporary files, hold markers) are never listed.
fn walk(root: &Path, start: &Path, prefix: &str) -> std::io::Result<Vec<(String, std::fs::Metadata, Option<Hold>)>> {
    let mut found = Vec::new();
    let mut pending = vec![start.to_owned()];
    while let Some(directory) = pending.pop() {
        let entries = match std::fs::read_dir(&directory) {
            Ok(entries) => entries,
            // A prefix naming a directory that doesn't exist lists nothing, as in GCS.
            Err(error) if error.kind() == ErrorKind::NotFound => continue,
            Err(error) => return Err(error),
        };
        for entry in entries {
            let entry = entry?;
            let path = entry.path();
            let Ok(relative) = path.strip_prefix(root) else {
                continue;
            };
            let Some(key) = relative.to_str().map(str::to_owned) else {
                continue; // not UTF-8: cannot have been written through this store
            };
            if key.starts_with(".keshless") {
                continue;
            }
            let file_type = entry.file_type()?;
            if file_type.is_dir() {
                pending.push(path);
            } else if file_type.is_file() && key.starts_with(prefix) {
                // Deleted between reading the directory and looking at it:
                // not there, as GCS would not list it either. (A cleanup
                // beside a listing must not fail the listing.)
                let metadata = match entry.metadata() {
                    Ok(metadata) => metadata,
                    Err(error) if error.kind() == ErrorKind::NotFound => continue,
                    Err(error) => return Err(error),
                };
                let hold = FileStore::read_hold(root, &key)?;
                found.push((key, metadata, hold));
            }
        }
    }
    found.sort_by(|left, right| left.0.cmp(&right.0));
    Ok(found)
}
