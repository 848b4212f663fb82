//! `STREAMLINE_WAL_BACKEND` for an application embedding the WAL: checked before
//! `Wal::open` touches the directory, and consulted only for `backend: auto`
//! with `backend_from_env` set.
//!
//! One test in its own binary: it sets the process's environment, which every
//! thread of the process sees.

use std::{collections::BTreeMap, path::Path};

use bytes::Bytes;
use streamline::{
    wal::{BackendKind, SyncMode, Wal, WalConfig},
    Error,
};

mod common;

/// The shared small-file configuration, `every_write`.
fn config(backend: BackendKind) -> WalConfig {
    common::config(backend, SyncMode::EveryWrite)
}

/// Every file under `dir` (relative path → contents).
fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let path = e.unwrap().path();
            let rel = path.strip_prefix(root).unwrap().display().to_string();
            if path.is_dir() {
                out.insert(format!("{rel}/"), Vec::new());
                walk(root, &path, out);
            } else {
                out.insert(rel, std::fs::read(&path).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

#[test]
fn the_variable_is_checked_before_the_directory_is_touched_and_chooses_only_for_auto() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("wal");
    std::env::remove_var(BackendKind::ENV);
    let (wal, _) = Wal::open(&dir, config(BackendKind::Std)).unwrap();
    for i in 0..20u8 {
        wal.append("t", 0, Bytes::from(vec![i; 1000]))
            .wait()
            .unwrap();
    }
    wal.close().unwrap();
    let before = snapshot(&dir);
    assert!(
        before.contains_key("clean-close.json"),
        "a clean close leaves its marker: {:?}",
        before.keys().collect::<Vec<_>>()
    );

    // An unknown value: refused naming the variable, nothing on disk changed
    // (whatever the configured backend; an unknown value is a mistake).
    std::env::set_var(BackendKind::ENV, "bogus");
    for backend in [BackendKind::Auto, BackendKind::Std, BackendKind::Uring] {
        let err = Wal::open(&dir, config(backend))
            .map(|_| ())
            .expect_err("STREAMLINE_WAL_BACKEND=bogus is refused");
        assert!(
            matches!(
                &err,
                Error::InvalidConfig {
                    field: "STREAMLINE_WAL_BACKEND",
                    ..
                }
            ),
            "{backend}: {err:?}"
        );
        let msg = err.to_string();
        assert!(
            msg.contains("bogus") && msg.contains("auto, uring, std"),
            "{msg}"
        );
        assert_eq!(
            snapshot(&dir),
            before,
            "{backend}: the directory was touched"
        );
        let fresh = tmp.path().join("never-created");
        Wal::open(&fresh, config(backend)).expect_err("refused");
        assert!(!fresh.exists(), "{backend}: a WAL directory was created");
        assert!(config(backend).validate().is_err());
    }

    // An application that does not consult the variable opens as configured.
    let cfg = WalConfig {
        backend_from_env: false,
        ..config(BackendKind::Std)
    };
    cfg.validate().unwrap();
    let (wal, _) = Wal::open(&dir, cfg).unwrap();
    assert_eq!(wal.backend(), BackendKind::Std);
    wal.close().unwrap();

    // A valid value chooses the backend of `auto` only.
    std::env::set_var(BackendKind::ENV, "std");
    let (wal, _) = Wal::open(&dir, config(BackendKind::Auto)).unwrap();
    assert_eq!(wal.backend(), BackendKind::Std, "auto follows the variable");
    wal.close().unwrap();
    #[cfg(target_os = "linux")]
    {
        let (wal, _) = Wal::open(&dir, config(BackendKind::Uring)).unwrap();
        assert_eq!(
            wal.backend(),
            BackendKind::Uring,
            "an explicit backend wins"
        );
        wal.close().unwrap();
        let cfg = WalConfig {
            backend_from_env: false,
            ..config(BackendKind::Auto)
        };
        let (wal, _) = Wal::open(&dir, cfg).unwrap();
        assert_eq!(
            wal.backend(),
            BackendKind::Uring,
            "auto without the variable (io_uring is available to the tests)"
        );
        wal.close().unwrap();
    }
    std::env::remove_var(BackendKind::ENV);
}
