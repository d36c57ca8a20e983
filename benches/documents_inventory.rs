//! Inventories 20 000 objects (BENCH_DOCUMENTS_OBJECTS) in a versioned
//! fake-gcs-server bucket and prints objects/s and this process's peak RSS
//! for the inventory pass and the mirror pass. Peak RSS must not grow with
//! the object count (listing, gzip and upload all stream). Run with
//! `scripts/bench documents_inventory` (BENCH_DOCUMENTS_MIRROR=0 skips the
//! mirror pass, which copies every object once).

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use futures::StreamExt;
use keshless_ops::documents::inventory::{self, RunInfo};
use keshless_ops::documents::layout;
use keshless_ops::storage::{BlobStore, BlobStoreExt, WriteMode};

fn main() {
    let count: usize = std::env::var("BENCH_DOCUMENTS_OBJECTS")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(20_000);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async move {
        let documents = common::gcs_store(true).await;
        let backups = common::gcs_store(true).await;
        let prefixes = ["kyc/", "selfies/", "vendor-kyc/", "vendor-media/"];
        let started = Instant::now();
        futures::stream::iter(0..count)
            .map(|index| {
                let documents = Arc::clone(&documents);
                async move {
                    let key = format!("{}user-{:06}/document-{index}.jpg", prefixes[index % 4], index / 3);
                    let body = Bytes::from(vec![b'k'; 512 + index % 1024]);
                    documents
                        .put_bytes(&key, body, WriteMode::CreateOnly)
                        .await
                        .expect("upload");
                }
            })
            .buffer_unordered(64)
            .collect::<Vec<()>>()
            .await;
        eprintln!("uploaded {count} objects in {:.1} s", started.elapsed().as_secs_f64());

        let rss_before = common::process_status_kib("self", "VmRSS");
        // Reset the peak so it measures the inventory, not the uploads.
        let _ = std::fs::write("/proc/self/clear_refs", "5");
        let run = RunInfo {
            job: "documents-inventory".into(),
            idempotency_key: "bench".into(),
            started_at: chrono::Utc::now(),
            mirror: false,
            clock: keshless_ops::clock::Clock::system(),
        };
        let started = Instant::now();
        let outcome = inventory::run(backups.as_ref(), documents.as_ref(), &run)
            .await
            .expect("inventory");
        let inventory_seconds = started.elapsed().as_secs_f64();
        assert_eq!(outcome.summary.object_count, count as u64);
        let inventory_peak = common::process_status_kib("self", "VmHWM");
        println!(
            "documents_inventory: {count} objects; inventory pass: {:.1} s, {:.0} objects/s, peak RSS {} MiB (RSS before {} MiB)",
            inventory_seconds,
            count as f64 / inventory_seconds,
            inventory_peak / 1024,
            rss_before / 1024
        );
        // BENCH_DOCUMENTS_MIRROR=0: the inventory figure only (the mirror
        // pass copies every object once: minutes on the emulator).
        if std::env::var("BENCH_DOCUMENTS_MIRROR").as_deref() == Ok("0") {
            return;
        }

        let _ = std::fs::write("/proc/self/clear_refs", "5");
        let started = Instant::now();
        let mirror = inventory::mirror(
            backups.as_ref(),
            documents.as_ref(),
            &outcome.summary.inventory,
            Some(outcome.summary.inventory_sha256.clone()),
        )
        .await
        .expect("mirror");
        let mirror_seconds = started.elapsed().as_secs_f64();
        assert_eq!(mirror.copied, count as u64);
        let mirror_peak = common::process_status_kib("self", "VmHWM");

        let started = Instant::now();
        let again = inventory::mirror(backups.as_ref(), documents.as_ref(), &outcome.summary.inventory, None)
            .await
            .expect("second mirror");
        assert_eq!(again.copied, 0);
        let incremental_seconds = started.elapsed().as_secs_f64();

        let compressed = backups
            .stat(&layout::inventory_key(outcome.date))
            .await
            .expect("stat")
            .expect("inventory");
        println!(
            "documents_inventory: {count} objects, inventory {} bytes gzip",
            compressed.size
        );
        println!(
            "  inventory pass: {:.1} s, {:.0} objects/s, peak RSS {} MiB (RSS before {} MiB)",
            inventory_seconds,
            count as f64 / inventory_seconds,
            inventory_peak / 1024,
            rss_before / 1024
        );
        println!(
            "  mirror pass:    {:.1} s, {:.0} objects/s, peak RSS {} MiB",
            mirror_seconds,
            count as f64 / mirror_seconds,
            mirror_peak / 1024
        );
        println!("  incremental mirror (nothing to copy): {incremental_seconds:.1} s");
    });
}
