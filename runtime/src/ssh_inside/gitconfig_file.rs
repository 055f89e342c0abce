//! The environment's system gitconfig (`berth-builtin:write-gitconfig`): run as root inside
//! by a warm `up` whose host identity changed, it writes its stdin as [`GITCONFIG_PATH`] (mode 0644, root's) in berth's own
//! tmpfs [`RUN_DIR`], or removes the file when stdin is empty. Every process started inside
//! gets `GIT_CONFIG_SYSTEM` pointing at the file while it exists, so `exec` pays nothing for
//! the host's git identity. Like `write-secrets`, it refuses to write unless the folder is a
//! tmpfs reached without a symlink. A start brings the gitconfig with it instead: the
//! supervisor writes it with [`write`] before anything runs inside (no builtin, no round
//! trip).

use std::io::{self, Read, Write};

pub use berth_agent_proto::{GITCONFIG_PATH, RUN_DIR};
use berth_inside_files::run_tmpfs;

/// Largest gitconfig accepted.
const MAX_GITCONFIG: u64 = 64 * 1024;
const FILE: &str = "gitconfig";

fn fail(msg: String) -> i32 {
    let _ = writeln!(io::stderr(), "{msg}");
    1
}

/// The builtin; see the module's documentation. Returns the exit code.
pub fn write_stdin() -> i32 {
    let mut text = Vec::new();
    if let Err(e) = io::stdin()
        .lock()
        .take(MAX_GITCONFIG + 1)
        .read_to_end(&mut text)
    {
        return fail(format!("cannot read the gitconfig: {e}"));
    }
    match write(&text) {
        Ok(()) => 0,
        Err(e) => fail(e),
    }
}

/// Writes `text` as [`GITCONFIG_PATH`] (mode 0644, the caller's: root inside), or removes the
/// file when `text` is empty; refused unless [`RUN_DIR`] is berth's tmpfs. The builtin's work,
/// and the supervisor's when a start brings the gitconfig with it (before anything runs
/// inside).
pub fn write(text: &[u8]) -> Result<(), String> {
    if text.len() as u64 > MAX_GITCONFIG {
        return Err("the gitconfig is larger than 64 KiB".into());
    }
    let dir = run_tmpfs::open(RUN_DIR)?;
    if text.is_empty() {
        match run_tmpfs::remove(&dir, FILE) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                Err(format!("cannot remove {GITCONFIG_PATH}: {e}"))
            }
            _ => Ok(()),
        }
    } else {
        // Readable by every user inside.
        run_tmpfs::write_replacing(&dir, FILE, text, 0o644, None, GITCONFIG_PATH)
    }
}
