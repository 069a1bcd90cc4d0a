//! The state directory: what a node must remember across restarts — the highest epoch it
//! has seen and its copy of the show with its version — written atomically and fsync'd
//! (temporary file, fsync, rename, fsync of the directory) before the node acts on it.

use std::io::Write;
use std::path::{Path, PathBuf};

use super::machine::Persisted;

const FILE: &str = "cluster-state.json";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: not a cluster state file: {source}", path.display())]
    Corrupt {
        path: PathBuf,
        source: serde_json::Error,
    },
}

/// A node's state directory.
pub struct Store {
    dir: PathBuf,
}

impl Store {
    /// Create the directory if needed.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::Io {
            path: dir.to_owned(),
            source,
        })?;
        Ok(Store {
            dir: dir.to_owned(),
        })
    }

    pub fn path(&self) -> PathBuf {
        self.dir.join(FILE)
    }

    /// What was persisted, or `None` on a first start.
    pub fn load(&self) -> Result<Option<Persisted>, StoreError> {
        let path = self.path();
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|source| StoreError::Corrupt { path, source }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(StoreError::Io { path, source }),
        }
    }

    /// Write and fsync; on return the state survives a power cut.
    pub fn save(&self, p: &Persisted) -> Result<(), StoreError> {
        let path = self.path();
        let tmp = self.dir.join(format!("{FILE}.tmp"));
        let io = |source| StoreError::Io {
            path: path.clone(),
            source,
        };
        // Serializing plain maps and strings cannot fail.
        let bytes = serde_json::to_vec_pretty(p).unwrap_or_default();
        let mut f = std::fs::File::create(&tmp).map_err(io)?;
        f.write_all(&bytes).map_err(io)?;
        f.sync_all().map_err(io)?;
        drop(f);
        std::fs::rename(&tmp, &path).map_err(io)?;
        std::fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::machine::Term;
    use super::*;

    #[test]
    fn save_then_load() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("state")).unwrap();
        assert!(s.load().unwrap().is_none());
        let p = Persisted {
            seen: Term {
                n: 7,
                node: "gw-a".into(),
            },
            ..Persisted::default()
        };
        s.save(&p).unwrap();
        assert_eq!(s.load().unwrap(), Some(p));
    }

    #[test]
    fn corrupt_file_is_an_error_not_a_fresh_start() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        std::fs::write(s.path(), b"{not json").unwrap();
        assert!(matches!(s.load(), Err(StoreError::Corrupt { .. })));
    }
}
