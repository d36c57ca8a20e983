//! A stored PostgreSQL dump as the plain `pg_dump --format=custom` archive
//! it holds: the one place that knows how the stored bytes were encoded, so
//! every reader of an archive (`backups verify`'s structural read, a restore)
//! decodes them the same way.

use anyhow::bail;

use crate::postgres::layout::Manifest;
use crate::storage::ByteStream;

/// The stored bytes of `manifest`'s dump as the plain archive `pg_restore`
/// reads. Manifests of versions 1 and 2 store pg_dump's own archive as it
/// came out (compressed inside by pg_dump, not encrypted), so the stream
/// passes through unchanged; a manifest that records compression or
/// encryption of the stored bytes adds its decoding stages here.
pub fn plain_archive(manifest: &Manifest, stored: ByteStream) -> anyhow::Result<ByteStream> {
    match manifest.version {
        1 | 2 => Ok(stored),
        other => bail!(
            "{}: manifest version {other} stores the dump in a way this build cannot decode",
            manifest.dump
        ),
    }
}
