//! Uploads 1 GiB through the GCS backend to fake-gcs-server and prints the
//! throughput and this process's peak RSS (target: under 64 MiB, i.e. the
//! upload streams instead of buffering). Run with `scripts/bench gcs_upload`.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::Instant;

use bytes::Bytes;
use futures::StreamExt;
use keshless_ops::storage::{BlobStore, WriteMode};

const MIB: u64 = 1024 * 1024;

fn main() {
    let total_mib: u64 = std::env::var("BENCH_UPLOAD_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async move {
        let store = common::gcs_store(false).await;
        let rss_before = common::process_status_kib("self", "VmRSS");
        // Reset the peak so it measures the upload, not start-up.
        let _ = std::fs::write("/proc/self/clear_refs", "5");

        // Chunks are produced lazily, like pg_dump's stdout: the only way to
        // exceed the target is for the upload path to buffer.
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let body = futures::stream::iter(0..total_mib)
            .map(move |_| {
                let mut chunk = Vec::with_capacity(MIB as usize);
                while chunk.len() < MIB as usize {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    chunk.extend_from_slice(&state.to_le_bytes());
                }
                Ok(Bytes::from(chunk))
            })
            .boxed();
        let started = Instant::now();
        let report = store
            .put("bench/upload.bin", body, WriteMode::CreateOnly)
            .await
            .expect("upload");
        let elapsed = started.elapsed();
        assert_eq!(report.bytes, total_mib * MIB);
        let peak_kib = common::process_status_kib("self", "VmHWM");
        println!(
            "gcs_upload: {total_mib} MiB to fake-gcs-server in {:.2} s",
            elapsed.as_secs_f64()
        );
        println!(
            "gcs_upload: throughput {:.1} MiB/s",
            total_mib as f64 / elapsed.as_secs_f64()
        );
        println!(
            "gcs_upload: RSS before {:.1} MiB, peak during upload {:.1} MiB (target < 64 MiB)",
            rss_before as f64 / 1024.0,
            peak_kib as f64 / 1024.0
        );
        println!("gcs_upload: sha256 {}", report.sha256);
        store.delete("bench/upload.bin", None).await.expect("clean up");
        if peak_kib > 64 * 1024 {
            eprintln!("gcs_upload: FAILED: peak RSS above 64 MiB");
            std::process::exit(1);
        }
    });
}
