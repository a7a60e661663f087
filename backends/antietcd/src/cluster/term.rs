//! The persisted TinyRaft term: a small text file (`<data_dir>/raft_term`, or `<data>.raft_term` next to
//! antietcd's data file) written atomically (temporary file, fsync, rename, directory fsync) before the
//! node acts on a higher term, and read back at start; kept in memory when the node has no data.

use std::path::{Path, PathBuf};
use tinyraft::Term;

/// Where the term lives, and the highest term known to be stored.
#[derive(Debug)]
pub(crate) struct TermStore {
    path: Option<PathBuf>,
    stored: Term,
}

/// Reads the stored term (0 if there is no file yet).
pub(crate) fn load(path: &Path) -> std::io::Result<Term> {
    match std::fs::read_to_string(path) {
        Ok(text) => text.trim().parse::<Term>().map_err(|e| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{}: not a term: {e}", path.display()),
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(e),
    }
}

fn store(path: &Path, term: Term) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut tmp_name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    {
        let mut f = std::fs::File::create(&tmp)?;
        writeln!(f, "{term}")?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

impl TermStore {
    /// Opens the store, reading the term persisted at `path`, if any.
    pub(crate) fn open(path: Option<PathBuf>) -> std::io::Result<TermStore> {
        let stored = match &path {
            Some(p) => load(p)?,
            None => 0,
        };
        Ok(TermStore { path, stored })
    }

    /// The stored term.
    pub(crate) fn stored(&self) -> Term {
        self.stored
    }

    /// Persists `term` if it is higher than the stored one; returns once it is on disk.
    pub(crate) async fn raise(&mut self, term: Term) -> std::io::Result<()> {
        if term <= self.stored {
            return Ok(());
        }
        if let Some(path) = self.path.clone() {
            tokio::task::spawn_blocking(move || store(&path, term))
                .await
                .map_err(|e| std::io::Error::other(format!("term persisting task failed: {e}")))??;
        }
        self.stored = term;
        Ok(())
    }
}
