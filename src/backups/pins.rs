//! Pins (`backups pin ID --reason TEXT` / `backups unpin ID`): a hold on every
//! object of a backup, with the reason recorded next to it (GCS: a temporary
//! hold and the reason in the object's metadata; file store: a marker).
//! Nothing deletes a held object — not retention, not a lifecycle rule, not
//! the worker's own credentials — so a backup needed past its retention
//! during an incident stays until a person unpins it; retention reports it as
//! "pinned: REASON" and fills its floors with the other backups.

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::catalog::Entry;
use crate::storage::{BlobStore, Hold, StorageError};

/// The longest reason accepted: GCS keeps at most 8 KiB of custom metadata.
pub const MAXIMUM_REASON_CHARS: usize = 500;

/// A reason as recorded: trimmed, 1 to [`MAXIMUM_REASON_CHARS`] characters,
/// no control characters (it is shown in tables and logs).
pub fn reason(text: &str) -> Result<String, String> {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err("--reason is empty: say why the backup is kept (an incident, a ticket)".to_owned());
    }
    if trimmed.chars().count() > MAXIMUM_REASON_CHARS {
        return Err(format!("--reason is longer than {MAXIMUM_REASON_CHARS} characters"));
    }
    if trimmed.chars().any(char::is_control) {
        return Err("--reason may not contain control characters (newlines, tabs)".to_owned());
    }
    Ok(trimmed.to_owned())
}

/// What a pin or unpin did.
#[derive(Debug, Clone, Serialize)]
pub struct PinReport {
    pub id: String,
    /// The objects now held (pin) or released (unpin), in order.
    pub objects: Vec<String>,
    /// The hold placed; `None` for an unpin.
    pub hold: Option<Hold>,
    /// The hold an unpin released, if the backup was pinned.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub released: Option<Hold>,
}

/// A pin or unpin that stopped part-way: `done` were changed, `key` failed.
#[derive(Debug, thiserror::Error)]
#[error("{id}: {action} stopped at {key}: {source}; {} of its objects were changed ({}): run the command again", done.len(), if done.is_empty() { "none".to_owned() } else { done.join(", ") })]
pub struct PinError {
    pub id: String,
    pub action: &'static str,
    pub key: String,
    pub done: Vec<String>,
    #[source]
    pub source: StorageError,
}

/// Holds every object of `entry`, recording `reason`, `by` and `now`.
pub async fn pin(
    store: &dyn BlobStore,
    entry: &Entry,
    reason: &str,
    by: Option<String>,
    now: DateTime<Utc>,
) -> Result<PinReport, PinError> {
    let hold = Hold {
        reason: reason.to_owned(),
        since: Some(now),
        by,
    };
    let objects = apply(store, entry, Some(&hold), "pin").await?;
    tracing::info!(backup.id = %entry.id, pin.reason = %hold.reason, pin.by = hold.by.as_deref().unwrap_or("-"), objects = objects.len(), "backup pinned");
    Ok(PinReport {
        id: entry.id.clone(),
        objects,
        hold: Some(hold),
        released: None,
    })
}

/// Releases every object of `entry` (also holds placed outside keshless-ops).
pub async fn unpin(store: &dyn BlobStore, entry: &Entry) -> Result<PinReport, PinError> {
    let objects = apply(store, entry, None, "unpin").await?;
    tracing::info!(backup.id = %entry.id, objects = objects.len(), "backup unpinned");
    Ok(PinReport {
        id: entry.id.clone(),
        objects,
        hold: None,
        released: entry.pinned.clone(),
    })
}

async fn apply(
    store: &dyn BlobStore,
    entry: &Entry,
    hold: Option<&Hold>,
    action: &'static str,
) -> Result<Vec<String>, PinError> {
    let mut done = Vec::with_capacity(entry.objects.len());
    for object in &entry.objects {
        if let Err(source) = store.set_hold(&object.key, hold).await {
            return Err(PinError {
                id: entry.id.clone(),
                action,
                key: object.key.clone(),
                done,
                source,
            });
        }
        done.push(object.key.clone());
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_short_single_lines() {
        assert_eq!(reason("  incident 42 "), Ok("incident 42".to_owned()));
        assert!(reason(" ").unwrap_err().contains("say why"));
        assert!(reason("a\nb").unwrap_err().contains("control characters"));
        assert!(reason(&"x".repeat(501)).unwrap_err().contains("500"));
        assert!(reason(&"é".repeat(500)).is_ok());
    }
}
