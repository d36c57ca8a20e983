//! A fault-injecting HTTP proxy for the fault suite: sits between the worker
//! and fake-gcs-server and, per request, answers 503 or 429, resets the
//! connection (before the response or in the middle of an upload), stalls,
//! or holds uploads half-sent until the test lets them go.
//!
//! It works on bytes, not on a parsed HTTP model, so that what the worker's
//! HTTP client meets is what a real network does to it: it reads the request
//! head, decides, and then pipes. Every request is forced onto its own
//! connection (`Connection: close` upstream and back), which keeps "one
//! connection = one request" and so a fault hits exactly one request.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::{Rng as _, SeedableRng as _};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// One fault the proxy can inject into a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// `503 Service Unavailable` without forwarding.
    Unavailable,
    /// `429 Too Many Requests` without forwarding.
    TooManyRequests,
    /// TCP reset before any response.
    Reset,
    /// Forward the head and part of the body, then reset (uploads only;
    /// other requests get [`Fault::Reset`]).
    ResetMidUpload,
    /// Wait this long, then forward normally.
    Stall(Duration),
}

/// What happens to requests; the test may change it while the proxy runs.
#[derive(Debug, Clone)]
pub struct FaultPlan {
    /// Fraction (0..=1) of requests that get a fault.
    pub fraction: f64,
    /// Faults to draw from (uniformly) for a faulty request.
    pub faults: Vec<Fault>,
    /// The same for uploads (`POST .../upload/...`), which are rarer and
    /// where the interesting failures are.
    pub upload_fraction: f64,
    pub upload_faults: Vec<Fault>,
    /// Faults injected exactly once each, in order, before any random one:
    /// `(uploads only, fault)`. Makes sure every kind is exercised.
    pub queued: Vec<(bool, Fault)>,
}

impl FaultPlan {
    pub fn none() -> FaultPlan {
        FaultPlan {
            fraction: 0.0,
            faults: Vec::new(),
            upload_fraction: 0.0,
            upload_faults: Vec::new(),
            queued: Vec::new(),
        }
    }

    /// The same faults at the same rate for every request.
    pub fn uniform(fraction: f64, faults: Vec<Fault>) -> FaultPlan {
        FaultPlan {
            fraction,
            faults: faults.clone(),
            upload_fraction: fraction,
            upload_faults: faults,
            queued: Vec::new(),
        }
    }
}

/// What the proxy did, for assertions and the suite's summary.
#[derive(Debug, Default)]
pub struct FaultCounts {
    pub requests: AtomicU64,
    pub uploads: AtomicU64,
    pub unavailable: AtomicU64,
    pub too_many_requests: AtomicU64,
    pub resets: AtomicU64,
    pub mid_upload_resets: AtomicU64,
    pub stalls: AtomicU64,
    /// Upload body bytes forwarded while uploads are being held.
    pub held_upload_bytes: AtomicU64,
}

impl FaultCounts {
    pub fn injected(&self) -> u64 {
        [
            &self.unavailable,
            &self.too_many_requests,
            &self.resets,
            &self.mid_upload_resets,
            &self.stalls,
        ]
        .iter()
        .map(|counter| counter.load(Ordering::SeqCst))
        .sum()
    }

    pub fn summary(&self) -> String {
        let load = |counter: &AtomicU64| counter.load(Ordering::SeqCst);
        format!(
            "{} requests ({} uploads): {} faults injected = {} x 503, {} x 429, {} resets, \
             {} mid-upload resets, {} stalls",
            load(&self.requests),
            load(&self.uploads),
            self.injected(),
            load(&self.unavailable),
            load(&self.too_many_requests),
            load(&self.resets),
            load(&self.mid_upload_resets),
            load(&self.stalls),
        )
    }
}

struct Shared {
    upstream: SocketAddr,
    plan: Mutex<(FaultPlan, rand::rngs::StdRng)>,
    counts: FaultCounts,
    /// While `true`, upload bodies stop after [`HELD_UPLOAD_BYTES`].
    hold_uploads: watch::Sender<bool>,
}

/// Bytes of an upload's body forwarded before a hold (enough to be "mid-upload").
const HELD_UPLOAD_BYTES: u64 = 4096;
const MAX_HEAD_BYTES: usize = 64 * 1024;

/// A running proxy; stops accepting when dropped.
pub struct FaultProxy {
    address: SocketAddr,
    shared: Arc<Shared>,
    accept_task: tokio::task::JoinHandle<()>,
}

impl FaultProxy {
    /// Listens on a free local port and forwards to `upstream` (`host:port`).
    pub async fn start(upstream: &str, plan: FaultPlan, seed: u64) -> FaultProxy {
        let upstream: SocketAddr = tokio::net::lookup_host(upstream)
            .await
            .expect("resolve the upstream")
            .next()
            .expect("an upstream address");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the proxy");
        let address = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            upstream,
            plan: Mutex::new((plan, rand::rngs::StdRng::seed_from_u64(seed))),
            counts: FaultCounts::default(),
            hold_uploads: watch::Sender::new(false),
        });
        let accept_task = tokio::spawn({
            let shared = shared.clone();
            async move {
                while let Ok((client, _)) = listener.accept().await {
                    tokio::spawn(handle(shared.clone(), client));
                }
            }
        });
        FaultProxy {
            address,
            shared,
            accept_task,
        }
    }

    /// `host:port` to give the worker as `STORAGE_EMULATOR_HOST`.
    pub fn host(&self) -> String {
        self.address.to_string()
    }

    pub fn set_plan(&self, plan: FaultPlan) {
        self.shared.plan.lock().unwrap().0 = plan;
    }

    /// Holds (or releases) every upload after its first few KiB of body.
    pub fn hold_uploads(&self, hold: bool) {
        self.shared.hold_uploads.send_replace(hold);
    }

    pub fn counts(&self) -> &FaultCounts {
        &self.shared.counts
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.accept_task.abort();
    }
}

/// Reads until the end of the request head; returns it and any body bytes after it.
async fn read_head(client: &mut TcpStream) -> Option<(Vec<u8>, Vec<u8>)> {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        if let Some(end) = buffer.windows(4).position(|window| window == b"\r\n\r\n") {
            let rest = buffer.split_off(end + 4);
            return Some((buffer, rest));
        }
        if buffer.len() > MAX_HEAD_BYTES {
            return None;
        }
        let read = client.read(&mut chunk).await.ok()?;
        if read == 0 {
            return None;
        }
        buffer.extend_from_slice(&chunk[..read]);
    }
}

/// The head with `Connection: close` instead of whatever the client asked.
fn closing_head(head: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(head);
    let mut lines: Vec<&str> = text
        .split("\r\n")
        .filter(|line| !line.is_empty())
        .filter(|line| !line.to_ascii_lowercase().starts_with("connection:"))
        .collect();
    lines.push("Connection: close");
    format!("{}\r\n\r\n", lines.join("\r\n")).into_bytes()
}

fn reset(stream: TcpStream) {
    // Linger 0 makes close send RST rather than FIN: a connection reset.
    let _ = stream.set_zero_linger();
    drop(stream);
}

async fn respond(mut client: TcpStream, status: &str) {
    let body = format!(
        r#"{{"error":{{"code":{0},"message":"injected {status}"}}}}"#,
        &status[..3]
    );
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = client.write_all(response.as_bytes()).await;
    let _ = client.shutdown().await;
}

async fn handle(shared: Arc<Shared>, mut client: TcpStream) {
    let Some((head, early_body)) = read_head(&mut client).await else {
        return;
    };
    let counts = &shared.counts;
    counts.requests.fetch_add(1, Ordering::SeqCst);
    let request_line =
        String::from_utf8_lossy(&head[..head.iter().position(|b| *b == b'\r').unwrap_or(0)]).into_owned();
    let is_upload = request_line.starts_with("POST ") && request_line.contains("/upload/");
    if is_upload {
        counts.uploads.fetch_add(1, Ordering::SeqCst);
    }
    let fault = {
        let mut guard = shared.plan.lock().unwrap();
        let (plan, random) = &mut *guard;
        let queued = plan
            .queued
            .iter()
            .position(|(uploads_only, _)| is_upload || !uploads_only);
        let (fraction, faults) = if is_upload {
            (plan.upload_fraction, &plan.upload_faults)
        } else {
            (plan.fraction, &plan.faults)
        };
        if let Some(position) = queued {
            Some(plan.queued.remove(position).1)
        } else if !faults.is_empty() && random.gen_bool(fraction.clamp(0.0, 1.0)) {
            Some(faults[random.gen_range(0..faults.len())])
        } else {
            None
        }
    };
    let mut reset_after_body_bytes = None;
    match fault {
        Some(Fault::Unavailable) => {
            counts.unavailable.fetch_add(1, Ordering::SeqCst);
            return respond(client, "503 Service Unavailable").await;
        }
        Some(Fault::TooManyRequests) => {
            counts.too_many_requests.fetch_add(1, Ordering::SeqCst);
            return respond(client, "429 Too Many Requests").await;
        }
        Some(Fault::ResetMidUpload) if is_upload => {
            counts.mid_upload_resets.fetch_add(1, Ordering::SeqCst);
            reset_after_body_bytes = Some(1024);
        }
        Some(Fault::Reset | Fault::ResetMidUpload) => {
            counts.resets.fetch_add(1, Ordering::SeqCst);
            return reset(client);
        }
        Some(Fault::Stall(duration)) => {
            counts.stalls.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(duration).await;
        }
        None => {}
    }

    let Ok(mut upstream) = TcpStream::connect(shared.upstream).await else {
        return reset(client);
    };
    if upstream.write_all(&closing_head(&head)).await.is_err() {
        return reset(client);
    }
    let (mut client_read, mut client_write) = client.into_split();
    let (mut upstream_read, mut upstream_write) = upstream.into_split();
    let mut hold = shared.hold_uploads.subscribe();
    let request_body = async {
        let mut forwarded = 0u64;
        let mut pending = early_body;
        let mut chunk = vec![0u8; 16 * 1024];
        loop {
            if pending.is_empty() {
                let read = client_read.read(&mut chunk).await?;
                if read == 0 {
                    return Ok::<_, std::io::Error>(false);
                }
                pending.extend_from_slice(&chunk[..read]);
            }
            if let Some(limit) = reset_after_body_bytes {
                if forwarded + pending.len() as u64 >= limit {
                    return Ok(true);
                }
            }
            if is_upload && forwarded >= HELD_UPLOAD_BYTES && *hold.borrow() {
                // Park the upload half-sent until released (or the client dies).
                let _ = hold.wait_for(|held| !held).await;
            }
            let take = if is_upload && forwarded < HELD_UPLOAD_BYTES {
                pending.len().min((HELD_UPLOAD_BYTES - forwarded) as usize)
            } else {
                pending.len()
            };
            upstream_write.write_all(&pending[..take]).await?;
            forwarded += take as u64;
            if *hold.borrow() && is_upload {
                counts.held_upload_bytes.fetch_add(take as u64, Ordering::SeqCst);
            }
            pending.drain(..take);
        }
    };
    let response = tokio::io::copy(&mut upstream_read, &mut client_write);
    tokio::select! {
        sent = request_body => {
            if matches!(sent, Ok(true)) {
                // Mid-upload reset: both sides see the connection die.
                let client = client_read.reunite(client_write).expect("same stream");
                let upstream = upstream_read.reunite(upstream_write).expect("same stream");
                reset(client);
                reset(upstream);
            }
            // Otherwise the client is done sending (or gone); the
            // response still has to reach it.
            else {
                let _ = tokio::io::copy(&mut upstream_read, &mut client_write).await;
            }
        }
        _ = response => {}
    }
}
