//! The agent's attachment table on disk: what each sandbox interface holds, saved before the
//! plugin hears of it, so an agent that is killed at any moment and started again knows
//! every address it handed out (none doubled) and forgets none (none leaked until its DEL
//! or GC comes).
//!
//! One JSON file, replaced whole: written to a temporary file beside it, synced, and
//! renamed over it, so a reader finds the old table or the new one, never half of one.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use ests_core::cni::{Attachment, AttachmentKey};
use serde::{Deserialize, Serialize};

use crate::handler::Attachments;

/// The version of the file's form.
const FORMAT_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum TableError {
    #[error("reading the attachment table {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the attachment table {path} is not a version-{FORMAT_VERSION} table: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("saving the attachment table {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

#[derive(Serialize, Deserialize)]
struct OnDisk {
    version: u32,
    attachments: Vec<Entry>,
}

#[derive(Serialize, Deserialize)]
struct Entry {
    #[serde(flatten)]
    key: AttachmentKey,
    #[serde(flatten)]
    attachment: Attachment,
}

/// The table's file.
#[derive(Debug, Clone)]
pub struct TableFile {
    path: PathBuf,
}

impl TableFile {
    /// The table in directory `dir` (created if missing, readable by root only).
    pub fn in_dir(dir: &Path) -> Result<Self, TableError> {
        let path = dir.join("attachments.json");
        fs::create_dir_all(dir).map_err(|source| TableError::Write {
            path: dir.to_path_buf(),
            source,
        })?;
        Ok(Self { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The saved table; empty when none was saved yet. A file that does not parse is an
    /// error, never an empty table: starting empty would hand out addresses still held.
    pub fn load(&self) -> Result<Attachments, TableError> {
        let bytes = match fs::read(&self.path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Attachments::new()),
            Err(source) => {
                return Err(TableError::Read {
                    path: self.path.clone(),
                    source,
                });
            }
        };
        let parse = |source| TableError::Parse {
            path: self.path.clone(),
            source,
        };
        let disk: OnDisk = serde_json::from_slice(&bytes).map_err(parse)?;
        if disk.version != FORMAT_VERSION {
            return Err(parse(serde::de::Error::custom(format!(
                "version {}",
                disk.version
            ))));
        }
        Ok(disk
            .attachments
            .into_iter()
            .map(|e| (e.key, e.attachment))
            .collect())
    }

    /// Replaces the saved table with `table`.
    pub fn save(&self, table: &Attachments) -> Result<(), TableError> {
        self.write(&self.encode(table)?)
    }

    /// The table as it is saved: encoded apart from the writing, so that the agent can
    /// write (and fsync) off the async runtime's threads.
    pub fn encode(&self, table: &Attachments) -> Result<Vec<u8>, TableError> {
        let disk = OnDisk {
            version: FORMAT_VERSION,
            attachments: table
                .iter()
                .map(|(key, attachment)| Entry {
                    key: key.clone(),
                    attachment: attachment.clone(),
                })
                .collect(),
        };
        serde_json::to_vec_pretty(&disk).map_err(|e| TableError::Write {
            path: self.path.clone(),
            source: std::io::Error::other(e),
        })
    }

    /// Writes an [`TableFile::encode`]d table durably: temp file, fsync, rename, directory
    /// fsync.
    pub fn write(&self, bytes: &[u8]) -> Result<(), TableError> {
        let write = |source| TableError::Write {
            path: self.path.clone(),
            source,
        };
        let tmp = self.path.with_extension("json.tmp");
        let mut file = File::create(&tmp).map_err(write)?;
        file.write_all(bytes).map_err(write)?;
        file.sync_all().map_err(write)?;
        fs::rename(&tmp, &self.path).map_err(write)?;
        // The rename is durable once the directory is synced.
        if let Some(dir) = self.path.parent() {
            File::open(dir).and_then(|d| d.sync_all()).map_err(write)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ests_core::cni::{Address, PodRef};

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("ests-node-table-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    fn table() -> Attachments {
        let mut t = Attachments::new();
        t.insert(
            AttachmentKey {
                container_id: "c1".into(),
                ifname: "eth0".into(),
            },
            Attachment {
                pod: PodRef {
                    namespace: "ns".into(),
                    name: "web-0".into(),
                    uid: "u1".into(),
                },
                addresses: vec![
                    Address {
                        ip: "10.1.0.5".parse().expect("ip"),
                        network: "10.1.0.0/24".parse().expect("cidr"),
                    },
                    Address {
                        ip: "fd00::5".parse().expect("ip"),
                        network: "fd00::/64".parse().expect("cidr"),
                    },
                ],
            },
        );
        t
    }

    #[test]
    fn a_saved_table_loads_as_it_was_and_a_missing_one_is_empty() {
        let d = dir("roundtrip");
        let file = TableFile::in_dir(&d).expect("dir");
        assert!(file.load().expect("missing is empty").is_empty());
        file.save(&table()).expect("save");
        assert_eq!(file.load().expect("load"), table());
        file.save(&Attachments::new()).expect("save empty");
        assert!(file.load().expect("load").is_empty());
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn a_damaged_table_is_an_error_naming_the_file_not_an_empty_table() {
        let d = dir("damaged");
        let file = TableFile::in_dir(&d).expect("dir");
        fs::write(file.path(), b"{\"version\": 1, \"attachments\": [").expect("write");
        let err = file.load().expect_err("damaged");
        assert!(err.to_string().contains("attachments.json"), "{err}");
        fs::write(file.path(), b"{\"version\": 7, \"attachments\": []}").expect("write");
        assert!(file.load().is_err(), "another version");
        let _ = fs::remove_dir_all(&d);
    }
}
