//! The documents bucket (KYC documents, selfies, vendor media, under `kyc/`,
//! `selfies/`, `vendor-kyc/`, `vendor-media/`): its daily inventory and
//! mirror in the backup store, point-in-time restore, the inventory check the
//! DR drill runs, and the bucket hardening check.
//!
//! - [`layout`]: keys in the backup store, entry and summary types, reading back;
//! - [`inventory`]: writing an inventory and mirroring the generations it names;
//! - [`selection`]: the pure decisions (live-at-time, same bytes, what to do);
//! - [`restore`]: plans and executes a restore, one object name at a time;
//! - [`check`]: compares the store with an inventory;
//! - [`hardening`]: versioning / public access prevention / uniform access;
//! - [`signed_url`]: V4 signed URLs for one document (`documents url`).

pub mod check;
pub mod hardening;
pub mod inventory;
pub mod layout;
pub mod restore;
pub mod selection;
pub mod signed_url;

use base64::Engine as _;
use futures::TryStreamExt;

use crate::storage::{BlobStore, ErrorClass, StorageError};

/// Failures of the documents operations, classified like storage errors.
#[derive(Debug, thiserror::Error)]
pub enum DocumentsError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Inventory(#[from] layout::InventoryReadError),
    /// The request cannot work as asked (wrong backend, no such inventory).
    #[error("{0}")]
    Refused(String),
}

impl DocumentsError {
    pub fn class(&self) -> ErrorClass {
        match self {
            DocumentsError::Storage(error) => error.class(),
            DocumentsError::Inventory(layout::InventoryReadError::Storage(error)) => error.class(),
            DocumentsError::Inventory(layout::InventoryReadError::Corrupt { .. }) | DocumentsError::Refused(_) => {
                ErrorClass::Permanent
            }
        }
    }
}

impl From<DocumentsError> for crate::runtime::job::JobError {
    fn from(error: DocumentsError) -> Self {
        match error.class() {
            ErrorClass::Transient => crate::runtime::job::JobError::Transient(error.into()),
            ErrorClass::Permanent => crate::runtime::job::JobError::Permanent(error.into()),
        }
    }
}

/// Base64 CRC32C (the GCS format) of an object's bytes, streamed: for stores
/// that do not report checksums (the file store).
pub async fn crc32c_of(store: &dyn BlobStore, key: &str, generation: Option<i64>) -> Result<String, StorageError> {
    let mut body = store.get(key, generation).await?;
    let mut crc = 0u32;
    while let Some(chunk) = body
        .try_next()
        .await
        .map_err(|error| StorageError::read_interrupted(store.location(), key, &error))?
    {
        crc = crc32c::crc32c_append(crc, &chunk);
    }
    Ok(base64::engine::general_purpose::STANDARD.encode(crc.to_be_bytes()))
}

/// An object's metadata with its CRC32C filled in where the store has none.
pub async fn with_checksum(
    store: &dyn BlobStore,
    mut object: crate::storage::ObjectInfo,
) -> Result<crate::storage::ObjectInfo, StorageError> {
    if object.crc32c.is_none() {
        object.crc32c = Some(crc32c_of(store, &object.key, None).await?);
    }
    Ok(object)
}
