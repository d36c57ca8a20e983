//! `documents-inventory`: a gzip JSON-lines manifest of every live object in
//! the documents store, `documents/inventory/YYYY-MM-DD.jsonl.gz`, then its
//! summary (which makes it complete), then a mirror of every referenced generation under
//! `documents/objects/` (see [`crate::documents::inventory`] for the rerun rules).

use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::sync::OnceCell;

use crate::documents::inventory::{self, RunInfo};
use crate::runtime::job::{Job, JobError, Outcome, RunContext};
use crate::storage::{BlobStore, StoreLocation};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Params {
    /// Copy referenced generations into the backup store (default true).
    pub mirror: bool,
}

impl Default for Params {
    fn default() -> Self {
        Params { mirror: true }
    }
}

pub struct DocumentsInventory {
    pub backups: Arc<dyn BlobStore>,
    documents: OnceCell<Arc<dyn BlobStore>>,
    documents_location: StoreLocation,
    storage_emulator_host: Option<String>,
    clock: crate::clock::Clock,
}

impl DocumentsInventory {
    /// Another clock (the year simulation).
    pub fn with_clock(mut self, clock: crate::clock::Clock) -> Self {
        self.clock = clock;
        self
    }

    /// Opens the documents store (`DOCUMENTS_STORE`) on first use: the
    /// registry is built synchronously and other jobs must not wait for it.
    pub fn new(backups: Arc<dyn BlobStore>, documents: StoreLocation, storage_emulator_host: Option<String>) -> Self {
        DocumentsInventory {
            backups,
            documents: OnceCell::new(),
            documents_location: documents,
            storage_emulator_host,
            clock: crate::clock::Clock::system(),
        }
    }

    /// With an open documents store (tests, tools).
    pub fn with_store(backups: Arc<dyn BlobStore>, documents: Arc<dyn BlobStore>) -> Self {
        let location = documents.location().clone();
        DocumentsInventory {
            backups,
            documents: OnceCell::new_with(Some(documents)),
            documents_location: location,
            storage_emulator_host: None,
            clock: crate::clock::Clock::system(),
        }
    }

    async fn documents(&self) -> Result<&Arc<dyn BlobStore>, JobError> {
        self.documents
            .get_or_try_init(|| async {
                crate::storage::open(&self.documents_location, self.storage_emulator_host.as_deref())
                    .await
                    .map_err(|error| JobError::transient(error.context("cannot open the documents store")))
            })
            .await
    }
}

#[async_trait]
impl Job for DocumentsInventory {
    const NAME: &'static str = "documents-inventory";
    type Params = Params;

    async fn run(&self, context: &RunContext, params: Params) -> Result<Outcome, JobError> {
        let documents = Arc::clone(self.documents().await?);
        let run = RunInfo {
            job: Self::NAME.to_owned(),
            idempotency_key: context.idempotency_key.clone(),
            started_at: self.clock.now(),
            mirror: params.mirror,
            clock: self.clock.clone(),
        };
        let work = inventory::run(self.backups.as_ref(), documents.as_ref(), &run);
        let outcome = tokio::select! {
            outcome = work => outcome?,
            _ = context.cancel.cancelled() => {
                return Err(JobError::transient(anyhow::anyhow!("cancelled during the documents inventory")))
            }
        };
        let summary = &outcome.summary;
        let mirror_text = outcome
            .mirror
            .as_ref()
            .map(|mirror| {
                format!(
                    ", mirror: {} copied, {} already there",
                    mirror.copied, mirror.already_mirrored
                )
            })
            .unwrap_or_default();
        Ok(Outcome::new(format!(
            "{} ({} objects, {} bytes){}{}",
            summary.inventory,
            summary.object_count,
            summary.total_bytes,
            if outcome.already_complete {
                " (already complete)"
            } else {
                ""
            },
            mirror_text
        ))
        .with_details(serde_json::json!({
            "date": outcome.date,
            "inventory": summary.inventory,
            "objects": summary.object_count,
            "total_bytes": summary.total_bytes,
            "prefixes": summary.prefixes,
            "inventory_sha256": summary.inventory_sha256,
            "already_complete": outcome.already_complete,
            "mirror": outcome.mirror,
        })))
    }
}
