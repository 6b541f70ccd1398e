//! The data directory kept private to the user who runs the stack: on a shared host nobody else
//! may read the catalogue, the stream or the dead letters. On Unix the directory is 0700 and
//! the database's files 0600; a directory or file that others could reach (made by an older
//! version, or under a loose umask) is tightened, and the log says so. Elsewhere the platform's
//! defaults stand.
//!
//! SQLite creates a database's `-wal` and `-shm` files with the database file's permissions
//! (<https://www.sqlite.org/src/doc/trunk/src/os_unix.c>, `findCreateFileMode`), so the
//! database file is created 0600 before SQLite opens it.

use std::path::Path;

use super::DB_FILE;

/// The files SQLite keeps for the database, beside it.
const SIDE_FILES: [&str; 3] = ["-wal", "-shm", "-journal"];

/// Creates `dir` private (or tightens it), tightens the database's files that exist, and
/// creates the database file private if it does not: call before SQLite opens it.
pub(super) fn prepare(dir: &Path) -> std::io::Result<()> {
    imp::create_dir(dir)?;
    let db = dir.join(DB_FILE);
    for side in SIDE_FILES {
        let mut name = db.clone().into_os_string();
        name.push(side);
        let path = Path::new(&name);
        if path.exists() {
            imp::tighten(path)?;
        }
    }
    imp::create_file(&db)
}

#[cfg(unix)]
mod imp {
    use std::fs::{self, DirBuilder, OpenOptions, Permissions};
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
    use std::path::Path;

    /// The bits of a mode that let the group or others in.
    const NOT_OWNER: u32 = 0o077;

    pub(super) fn create_dir(dir: &Path) -> std::io::Result<()> {
        DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
        tighten(dir)
    }

    pub(super) fn create_file(path: &Path) -> std::io::Result<()> {
        OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)?;
        tighten(path)
    }

    /// Takes the group's and others' permissions off `path`, if it has any.
    pub(super) fn tighten(path: &Path) -> std::io::Result<()> {
        let mode = fs::metadata(path)?.permissions().mode() & 0o7777;
        if mode & NOT_OWNER != 0 {
            let tightened = mode & !NOT_OWNER;
            fs::set_permissions(path, Permissions::from_mode(tightened))?;
            tracing::warn!(
                path = %path.display(),
                from = format_args!("{mode:o}"),
                to = format_args!("{tightened:o}"),
                "the data directory was open to other users; tightened"
            );
        }
        Ok(())
    }
}

#[cfg(not(unix))]
mod imp {
    use std::path::Path;

    pub(super) fn create_dir(dir: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)
    }

    pub(super) fn create_file(_: &Path) -> std::io::Result<()> {
        Ok(())
    }

    pub(super) fn tighten(_: &Path) -> std::io::Result<()> {
        Ok(())
    }
}
