//! Job files (uploaded inputs, results) kept in JetStream, shared by every node.
//!
//! A file is a run of chunk messages on `orfeas.files.{key}.c.{n}` followed
//! by a small manifest on `orfeas.files.{key}.m` (size and chunk count), all
//! in the replicated stream [`FILES_STREAM`] with one message per subject.
//! A reader asks the stream leader for the manifest and then for each chunk
//! by subject: a few plain requests, no consumer to create, so a read costs
//! the cluster no Raft proposal and stays quick on a loaded machine (the
//! object store's per-read ordered consumer timed out under the fleet test's
//! load on a 3-node 2.9 cluster). The manifest is written last, so a file
//! with a manifest is whole; writing the same name again writes the same
//! subjects, so a second writer replaces chunks with equal ones.

use std::time::Duration;

use async_nats::jetstream::{self, stream};
use serde::{Deserialize, Serialize};

use super::{FleetError, error_chain};

/// The stream that holds every fleet file.
pub const FILES_STREAM: &str = "ORFEAS_FILES";
/// Subject prefix of file chunks and manifests.
pub const FILES_PREFIX: &str = "orfeas.files";
/// Bytes per chunk message (the server's default `max_payload` is 1 MiB).
const CHUNK: usize = 256 * 1024;
/// Files older than this are removed by the server.
pub const FILES_KEEP: Duration = Duration::from_secs(7 * 24 * 3600);

#[derive(Debug, Serialize, Deserialize)]
struct Manifest {
    size: u64,
    chunks: u32,
}

/// The fleet's file store (see the module doc).
#[derive(Clone)]
pub struct FileStore {
    js: jetstream::Context,
    stream: stream::Stream<()>,
}

/// The subject token for `name`: lowercase hex, so any file name is a valid token.
fn key(name: &str) -> String {
    name.bytes().map(|b| format!("{b:02x}")).collect()
}

fn manifest_subject(name: &str) -> String {
    format!("{FILES_PREFIX}.{}.m", key(name))
}

fn chunk_subject(name: &str, n: u32) -> String {
    format!("{FILES_PREFIX}.{}.c.{n}", key(name))
}

fn unavailable(e: impl std::error::Error) -> FleetError {
    FleetError::Unavailable(error_chain(&e))
}

impl FileStore {
    /// Creates the stream when missing and opens it.
    pub(crate) async fn open(
        js: &jetstream::Context,
        replicas: usize,
    ) -> Result<FileStore, async_nats::Error> {
        js.get_or_create_stream(stream::Config {
            name: FILES_STREAM.to_owned(),
            description: Some("ORFEAS fleet inputs and results".to_owned()),
            subjects: vec![format!("{FILES_PREFIX}.>")],
            retention: stream::RetentionPolicy::Limits,
            storage: stream::StorageType::File,
            max_messages_per_subject: 1,
            max_age: FILES_KEEP,
            discard: stream::DiscardPolicy::Old,
            num_replicas: replicas,
            ..Default::default()
        })
        .await?;
        let stream = js.get_stream_no_info(FILES_STREAM).await?;
        Ok(FileStore {
            js: js.clone(),
            stream,
        })
    }

    /// Stores `bytes` as `name`; returns once every message is in the stream.
    pub async fn put(&self, name: &str, bytes: &[u8]) -> Result<(), FleetError> {
        let chunks: Vec<&[u8]> = bytes.chunks(CHUNK).collect();
        let mut acks = Vec::with_capacity(chunks.len());
        for (n, chunk) in chunks.iter().enumerate() {
            let ack = self
                .js
                .publish(
                    chunk_subject(name, n as u32),
                    bytes::Bytes::copy_from_slice(chunk),
                )
                .await
                .map_err(unavailable)?;
            acks.push(ack);
        }
        for ack in acks {
            ack.await.map_err(unavailable)?;
        }
        let manifest = Manifest {
            size: bytes.len() as u64,
            chunks: chunks.len() as u32,
        };
        let body = serde_json::to_vec(&manifest).map_err(unavailable)?;
        self.js
            .publish(manifest_subject(name), body.into())
            .await
            .map_err(unavailable)?
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn manifest(&self, name: &str) -> Result<Option<Manifest>, FleetError> {
        match self
            .stream
            .get_last_raw_message_by_subject(&manifest_subject(name))
            .await
        {
            Ok(message) => serde_json::from_slice(&message.payload)
                .map(Some)
                .map_err(|e| {
                    FleetError::Unavailable(format!("the manifest of {name} is unreadable: {e}"))
                }),
            Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => Ok(None),
            Err(e) => Err(unavailable(e)),
        }
    }

    /// True when `name` is stored whole.
    pub async fn exists(&self, name: &str) -> Result<bool, FleetError> {
        Ok(self.manifest(name).await?.is_some())
    }

    /// The bytes of `name`, or `None` when no whole file has that name.
    pub async fn get(&self, name: &str) -> Result<Option<Vec<u8>>, FleetError> {
        let Some(manifest) = self.manifest(name).await? else {
            return Ok(None);
        };
        let mut out = Vec::with_capacity(manifest.size as usize);
        for n in 0..manifest.chunks {
            let message = self
                .stream
                .get_last_raw_message_by_subject(&chunk_subject(name, n))
                .await
                .map_err(|e| {
                    FleetError::Unavailable(format!(
                        "chunk {n} of {name} is missing: {}",
                        error_chain(&e)
                    ))
                })?;
            out.extend_from_slice(&message.payload);
        }
        if out.len() as u64 != manifest.size {
            return Err(FleetError::Unavailable(format!(
                "{name} has {} bytes where its manifest says {}",
                out.len(),
                manifest.size
            )));
        }
        Ok(Some(out))
    }

    /// Removes `name` (manifest first, so no reader sees a partial file).
    pub async fn delete(&self, name: &str) -> Result<(), FleetError> {
        self.stream
            .purge()
            .filter(manifest_subject(name))
            .await
            .map_err(unavailable)?;
        self.stream
            .purge()
            .filter(format!("{FILES_PREFIX}.{}.c.>", key(name)))
            .await
            .map_err(unavailable)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_file_name_becomes_one_subject_token() {
        for name in ["result/42/model.glb", "input/7", "a b.c*>", "ünï"] {
            let subject = manifest_subject(name);
            let token = subject
                .strip_prefix("orfeas.files.")
                .and_then(|s| s.strip_suffix(".m"))
                .unwrap();
            assert!(
                !token.is_empty() && token.bytes().all(|b| b.is_ascii_hexdigit()),
                "{name} → {subject}"
            );
        }
        assert_ne!(key("result/1/a"), key("result/1/b"));
        assert_eq!(chunk_subject("x", 3), "orfeas.files.78.c.3");
    }
}
