//! The data directory is private to the user who runs the stack (Unix): nobody else on a
//! shared host can read the store.

#![cfg(unix)]

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::support::spawn_app;

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// The modes of the data directory and of the database's files (the `-wal` and `-shm` exist
/// while the stack runs).
fn modes(dir: &Path) -> Vec<(String, u32)> {
    let mut modes = vec![(".".to_owned(), mode(dir))];
    for file in [
        "outboxdemo.sqlite3",
        "outboxdemo.sqlite3-wal",
        "outboxdemo.sqlite3-shm",
    ] {
        modes.push((file.to_owned(), mode(&dir.join(file))));
    }
    modes
}

fn private(dir: &Path) -> Vec<(String, u32)> {
    modes(dir)
        .into_iter()
        .map(|(name, _)| {
            let private = if name == "." { 0o700 } else { 0o600 };
            (name, private)
        })
        .collect()
}

#[tokio::test]
async fn a_fresh_data_directory_and_its_files_are_private_to_the_user() {
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("data");
    let app = spawn_app(&dir).await;
    app.add_book("Dune", &["Frank Herbert"], 1965).await;
    assert_eq!(modes(&dir), private(&dir));
    app.stop().await;
}

#[tokio::test]
async fn a_data_directory_open_to_others_is_tightened() {
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("data");
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    // An empty file is an empty SQLite database; made as a umask of 022 would.
    let db = dir.join("outboxdemo.sqlite3");
    std::fs::write(&db, b"").unwrap();
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644)).unwrap();

    let app = spawn_app(&dir).await;
    app.add_book("Dune", &["Frank Herbert"], 1965).await;
    assert_eq!(
        modes(&dir),
        private(&dir),
        "tightened, and SQLite's new files follow"
    );
    app.stop().await;
}
