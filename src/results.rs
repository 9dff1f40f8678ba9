//! Result backends. The results stream is written atomically with the ack
//! (see [`crate::queue`]); the filesystem backend writes one JSON file per
//! task id before the ack, atomically (temp file, fsync, rename, fsync dir)
//! and idempotently (an existing record for the task id is kept).

use crate::task::ResultRecord;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub(crate) enum BackendError {
    #[error("cannot save result for task {task_id} in {dir}: {source} (check free space and that the worker user may write there)")]
    Io {
        task_id: String,
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("task id {task_id:?} cannot name a result: {source}")]
    BadId {
        task_id: String,
        source: crate::task::TaskError,
    },
}

/// Where final results go: written inside the finishing script (stream),
/// or as files before it runs (fs).
#[derive(Clone)]
pub(crate) enum ResultSink {
    Stream,
    Fs(Arc<FsBackend>),
}

/// A result ready for the finishing script.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Prepared {
    /// The record's JSON, for the script to write (stream backend).
    InScript(String),
    /// Already stored by the backend (fs): the script writes no record.
    Stored,
}

impl Prepared {
    /// What to pass to the finishing script as the result record.
    pub(crate) fn script_json(&self) -> Option<&str> {
        match self {
            Prepared::InScript(j) => Some(j),
            Prepared::Stored => None,
        }
    }
}

impl ResultSink {
    pub(crate) fn from_config(cfg: &crate::config::ResultsConfig) -> Self {
        match cfg.backend {
            crate::config::ResultBackendKind::Fs => {
                ResultSink::Fs(Arc::new(FsBackend::new(cfg.dir.clone())))
            }
            crate::config::ResultBackendKind::Stream => ResultSink::Stream,
        }
    }

    /// Store the record now (fs, off the async threads) or hand its JSON to
    /// the finishing script (stream). An error leaves the task unfinished.
    pub(crate) async fn prepare(&self, record: &ResultRecord) -> Result<Prepared, BackendError> {
        let fs = match self {
            ResultSink::Stream => {
                let json = serde_json::to_string(record).expect("result serializes");
                return Ok(Prepared::InScript(json));
            }
            ResultSink::Fs(fs) => fs.clone(),
        };
        let rec = record.clone();
        let dir = fs.dir().to_owned();
        let saved = tokio::task::spawn_blocking(move || fs.save(&rec))
            .await
            .unwrap_or_else(|e| {
                Err(BackendError::Io {
                    task_id: record.task_id.clone(),
                    dir,
                    source: std::io::Error::other(e.to_string()),
                })
            })?;
        tracing::debug!(task_id = %record.task_id, ?saved, "result saved");
        Ok(Prepared::Stored)
    }
}

/// What a save did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Saved {
    Written,
    /// A record for this task id existed already (duplicate delivery).
    AlreadyPresent,
}

pub(crate) struct FsBackend {
    dir: PathBuf,
}

impl FsBackend {
    pub(crate) fn new(dir: impl Into<PathBuf>) -> Self {
        FsBackend { dir: dir.into() }
    }

    /// The file of a task's result; refuses ids that could name a file
    /// outside the directory (`../x`, `/abs`), whoever passed them in.
    pub(crate) fn path_for(&self, task_id: &str) -> Result<PathBuf, BackendError> {
        crate::task::check_id(task_id).map_err(|source| BackendError::BadId {
            task_id: task_id.to_string(),
            source,
        })?;
        Ok(self.dir.join(format!("{task_id}.json")))
    }

    pub(crate) fn save(&self, r: &ResultRecord) -> Result<Saved, BackendError> {
        let err = |source| BackendError::Io {
            task_id: r.task_id.clone(),
            dir: self.dir.clone(),
            source,
        };
        let path = self.path_for(&r.task_id)?;
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

    pub(crate) fn load(&self, task_id: &str) -> Result<Option<String>, BackendError> {
        match std::fs::read_to_string(self.path_for(task_id)?) {
            Ok(s) => Ok(Some(s)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(BackendError::Io {
                task_id: task_id.to_string(),
                dir: self.dir.clone(),
                source,
            }),
        }
    }

    pub(crate) fn dir(&self) -> &Path {
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
    fn ids_never_name_a_file_outside_the_dir() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("outside.json"), b"{}").unwrap();
        let b = FsBackend::new(d.path().join("r"));
        for id in ["../outside", "/etc/passwd", "..", "a/../../outside"] {
            assert!(
                matches!(b.load(id), Err(BackendError::BadId { .. })),
                "{id}"
            );
            assert!(matches!(b.path_for(id), Err(BackendError::BadId { .. })));
        }
        let mut r = rec("x", serde_json::json!(1));
        r.task_id = "../outside".into();
        assert!(matches!(b.save(&r), Err(BackendError::BadId { .. })));
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
