//! Result backends. The results stream is written atomically with the ack
//! (see [`crate::queue`]); the filesystem backend writes one JSON file per
//! task id before the ack, atomically (temp file, fsync, rename, fsync dir)
//! and idempotently (an existing record for the task id is kept).

use crate::task::ResultRecord;
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("cannot save result for task {task_id} in {dir}: {source} (check free space and that the worker user may write there)")]
    Io {
        task_id: String,
        dir: PathBuf,
        source: std::io::Error,
    },
}

/// What a save did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Saved {
    Written,
    /// A record for this task id existed already (duplicate delivery).
    AlreadyPresent,
}

pub struct FsBackend {
    dir: PathBuf,
}

impl FsBackend {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        FsBackend { dir: dir.into() }
    }

    pub fn path_for(&self, task_id: &str) -> PathBuf {
        // Task ids are checked to contain no '/' and not be '.'/'..'.
        self.dir.join(format!("{task_id}.json"))
    }

    pub fn save(&self, r: &ResultRecord) -> Result<Saved, BackendError> {
        let err = |source| BackendError::Io {
            task_id: r.task_id.clone(),
            dir: self.dir.clone(),
            source,
        };
        let path = self.path_for(&r.task_id);
        if path.exists() {
            return Ok(Saved::AlreadyPresent);
        }
        std::fs::create_dir_all(&self.dir).map_err(err)?;
        let tmp = self
            .dir
            .join(format!(".{}.{}.tmp", r.task_id, std::process::id()));
        let body = serde_json::to_vec_pretty(r).expect("result serializes");
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&body)?;
            f.write_all(b"\n")?;
            f.sync_all()?;
            Ok(())
        };
        if let Err(e) = write() {
            let _ = std::fs::remove_file(&tmp);
            return Err(err(e));
        }
        // hard_link fails if the target exists: first writer wins, even
        // against a concurrent duplicate delivery on another worker.
        let linked = std::fs::hard_link(&tmp, &path);
        let _ = std::fs::remove_file(&tmp);
        match linked {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Ok(Saved::AlreadyPresent)
            }
            Err(e) => return Err(err(e)),
        }
        std::fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(err)?;
        Ok(Saved::Written)
    }

    pub fn load(&self, task_id: &str) -> std::io::Result<Option<String>> {
        match std::fs::read_to_string(self.path_for(task_id)) {
            Ok(s) => Ok(Some(s)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::task::Status;

    fn rec(id: &str, data: serde_json::Value) -> ResultRecord {
        ResultRecord {
            task_id: id.into(),
            status: Status::Ok,
            data,
            created_at: "t".into(),
            attempts: 1,
            retryable: false,
            kind: "echo".into(),
            handler: "echo".into(),
            handler_version: "1".into(),
            image_tag: String::new(),
            worker_id: "w".into(),
            host: "h".into(),
            started_at: "t".into(),
            finished_at: "t".into(),
            trace_id: None,
        }
    }

    #[test]
    fn first_write_wins() {
        let d = tempfile::tempdir().unwrap();
        let b = FsBackend::new(d.path().join("r"));
        assert_eq!(
            b.save(&rec("a", serde_json::json!(1))).unwrap(),
            Saved::Written
        );
        assert_eq!(
            b.save(&rec("a", serde_json::json!(2))).unwrap(),
            Saved::AlreadyPresent
        );
        let s = b.load("a").unwrap().unwrap();
        assert!(s.contains("\"data\": 1"), "{s}");
        assert_eq!(std::fs::read_dir(d.path().join("r")).unwrap().count(), 1);
    }

    #[test]
    fn unwritable_dir_is_an_error() {
        let d = tempfile::tempdir().unwrap();
        let file = d.path().join("not-a-dir");
        std::fs::write(&file, b"x").unwrap();
        let b = FsBackend::new(&file);
        assert!(b.save(&rec("a", serde_json::json!(1))).is_err());
    }
}
