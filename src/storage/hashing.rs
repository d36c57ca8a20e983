//! A stream adapter that computes SHA-256, CRC32C and the byte count of a body
//! while it is being uploaded, so checksums cost no second pass and no buffer.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::Stream;
use sha2::{Digest, Sha256};

use super::ByteStream;

/// Checksums of a fully consumed stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Digests {
    pub sha256_hex: String,
    pub crc32c: u32,
    pub bytes: u64,
}

impl Digests {
    /// CRC32C as GCS reports it: base64 of the big-endian value.
    pub fn crc32c_base64(&self) -> String {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(self.crc32c.to_be_bytes())
    }
}

/// How the stream ended, as seen by whoever consumed it.
#[derive(Debug)]
pub enum StreamEnd {
    /// Every byte was read and the stream reported its end.
    Complete(Digests),
    /// The source failed; the upload must not be trusted.
    Failed(std::io::Error),
    /// The consumer stopped early (request aborted): the object is incomplete.
    Unfinished { bytes: u64 },
}

#[derive(Default)]
struct Progress {
    sha256: Sha256,
    crc32c: u32,
    bytes: u64,
    finished: bool,
    error: Option<std::io::Error>,
    /// When the consumer last received a chunk (or the end): a consumer that
    /// does not come back for the next one is stuck on its own side.
    last_handed_out: Option<Instant>,
    /// The consumer asked and the source has nothing yet: the wait is the
    /// source's (a pg_dump waiting on a lock), not the consumer's.
    waiting_on_source: bool,
}

/// Wraps a [`ByteStream`]; read the outcome through [`HashingStream::observer`]
/// after the consumer is done.
pub struct HashingStream {
    inner: ByteStream,
    progress: Arc<Mutex<Progress>>,
}

/// The consumer-independent view of a [`HashingStream`]'s outcome.
#[derive(Clone)]
pub struct HashObserver {
    progress: Arc<Mutex<Progress>>,
}

impl HashingStream {
    pub fn new(inner: ByteStream) -> Self {
        HashingStream {
            inner,
            progress: Arc::new(Mutex::new(Progress {
                // Until the consumer takes a first chunk, count from now.
                last_handed_out: Some(Instant::now()),
                ..Progress::default()
            })),
        }
    }

    pub fn observer(&self) -> HashObserver {
        HashObserver {
            progress: Arc::clone(&self.progress),
        }
    }
}

impl HashObserver {
    /// How long the consumer has gone without taking a chunk (or the end)
    /// when the delay is its own: `None` while the source is the one being
    /// waited for. Counted from the stream's creation until the first chunk.
    pub fn consumer_idle(&self) -> Option<Duration> {
        let progress = self.progress.lock().expect("hash progress lock poisoned");
        if progress.waiting_on_source || progress.error.is_some() {
            return None;
        }
        progress.last_handed_out.map(|at| at.elapsed())
    }

    /// Whether the consumer has seen the end of the stream.
    pub fn finished(&self) -> bool {
        self.progress.lock().expect("hash progress lock poisoned").finished
    }

    /// Takes the outcome; call once, after the consumer has finished.
    pub fn take(&self) -> StreamEnd {
        let mut progress = self.progress.lock().expect("hash progress lock poisoned");
        if let Some(error) = progress.error.take() {
            return StreamEnd::Failed(error);
        }
        if !progress.finished {
            return StreamEnd::Unfinished { bytes: progress.bytes };
        }
        let sha256 = std::mem::take(&mut progress.sha256);
        StreamEnd::Complete(Digests {
            sha256_hex: hex::encode(sha256.finalize()),
            crc32c: progress.crc32c,
            bytes: progress.bytes,
        })
    }
}

impl Stream for HashingStream {
    type Item = std::io::Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let polled = self.inner.as_mut().poll_next(context);
        let mut progress = self.progress.lock().expect("hash progress lock poisoned");
        progress.waiting_on_source = polled.is_pending();
        if polled.is_ready() {
            progress.last_handed_out = Some(Instant::now());
        }
        match &polled {
            Poll::Ready(Some(Ok(chunk))) => {
                progress.sha256.update(chunk);
                progress.crc32c = crc32c::crc32c_append(progress.crc32c, chunk);
                progress.bytes += chunk.len() as u64;
            }
            Poll::Ready(Some(Err(error))) => {
                // Keep our own copy: the consumer (an HTTP client) may swallow or
                // rewrap the error, and the caller must learn the real cause.
                progress.error = Some(std::io::Error::new(error.kind(), error.to_string()));
            }
            Poll::Ready(None) => progress.finished = true,
            Poll::Pending => {}
        }
        polled
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    #[tokio::test]
    async fn digests_match_known_values() {
        let chunks: Vec<std::io::Result<Bytes>> =
            vec![Ok(Bytes::from_static(b"hello ")), Ok(Bytes::from_static(b"world"))];
        let stream = HashingStream::new(futures::stream::iter(chunks).boxed());
        let observer = stream.observer();
        let collected: Vec<_> = stream.collect().await;
        assert_eq!(collected.len(), 2);
        let StreamEnd::Complete(digests) = observer.take() else {
            panic!("stream should be complete")
        };
        assert_eq!(
            digests.sha256_hex,
            "b94d27b9934d3e08a52e52d7da7dabfac484efe37a5380ee9088f7ace2efcde9"
        );
        assert_eq!(digests.bytes, 11);
        assert_eq!(digests.crc32c, crc32c::crc32c(b"hello world"));
    }

    #[tokio::test]
    async fn a_failed_source_is_remembered() {
        let chunks: Vec<std::io::Result<Bytes>> = vec![
            Ok(Bytes::from_static(b"partial")),
            Err(std::io::Error::new(std::io::ErrorKind::BrokenPipe, "pg_dump died")),
        ];
        let stream = HashingStream::new(futures::stream::iter(chunks).boxed());
        let observer = stream.observer();
        let _: Vec<_> = stream.collect().await;
        match observer.take() {
            StreamEnd::Failed(error) => assert!(error.to_string().contains("pg_dump died")),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[tokio::test]
    async fn an_abandoned_stream_is_unfinished() {
        let chunks: Vec<std::io::Result<Bytes>> = vec![Ok(Bytes::from_static(b"a")), Ok(Bytes::from_static(b"b"))];
        let mut stream = HashingStream::new(futures::stream::iter(chunks).boxed());
        let observer = stream.observer();
        let _ = stream.next().await;
        drop(stream);
        assert!(matches!(observer.take(), StreamEnd::Unfinished { bytes: 1 }));
    }
}
