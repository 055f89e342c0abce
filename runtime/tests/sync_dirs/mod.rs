//! The folders of a sync test: a host side, an env side and the engine's state folder, in a
//! temporary folder removed with the value.

use std::fs;
use std::path::PathBuf;

pub struct Dirs {
    _tmp: tempfile::TempDir,
    pub host: PathBuf,
    pub env: PathBuf,
    pub state: PathBuf,
}

/// Empty host and env folders (the state folder is created by the engine).
pub fn dirs() -> Dirs {
    let tmp = tempfile::tempdir().unwrap();
    let d = Dirs {
        host: tmp.path().join("host"),
        env: tmp.path().join("env"),
        state: tmp.path().join("state"),
        _tmp: tmp,
    };
    fs::create_dir(&d.host).unwrap();
    fs::create_dir(&d.env).unwrap();
    d
}
