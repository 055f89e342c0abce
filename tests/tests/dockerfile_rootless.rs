//! A rootless Dockerfile build's `RUN --mount`s: secrets with their `uid`/`gid`/`mode` (as
//! BuildKit), binds of the context showing the user's files as root. In a binary of its own:
//! it adds a user (and with it a `/etc/subuid` range), and root's fallback id range follows
//! `/etc/subuid` (`container/idmap_choice.rs`), so a root build running at the same time in
//! the same binary saw its range move under it (`mkdir: Permission denied` in a step).

use std::fs;
use std::path::PathBuf;
use std::process::Command;

use berth_e2e::dockerfile::{registry_with_base, tar_files};
use berth_e2e::text;
use sha2::{Digest, Sha256};

/// Rootless, a secret mount's `uid`/`gid`/`mode` are applied as BuildKit does: the file
/// shows inside with that owner and mode, its owner reads it, another user of the step
/// does not, and nothing of it stays.
#[test]
fn rootless_secret_mounts_get_their_owner_and_mode() {
    if let Some(why) = berth_e2e::host::root_skip_reason() {
        eprintln!("skipped: {why} (to create the test user)");
        return;
    }
    let Some(reg) = registry_with_base() else {
        return;
    };
    let user = berth_e2e::user::TestUser::create("berthds");
    let project = tempfile::Builder::new()
        .prefix("berth-dfrl:a,b-")
        .tempdir()
        .unwrap();
    let p = project.path();
    let token = "ROOTLESS-TOKEN-4c2a-never-on-disk";
    fs::write(p.join("token"), token).unwrap();
    fs::create_dir_all(p.join("src")).unwrap();
    fs::write(p.join("src/main.c"), "int main;\n").unwrap();
    fs::write(p.join("src/debug.log"), "ignored\n").unwrap();
    fs::write(p.join(".dockerignore"), "**/*.log\ntoken\n").unwrap();
    fs::write(
        p.join("Dockerfile"),
        format!(
            r#"FROM {r}/base:1
RUN --mount=type=secret,id=tok,uid=1000,gid=1000,mode=0440 \
    stat -c '%a %u:%g' /run/secrets/tok > /as-root
USER app
RUN --mount=type=secret,id=tok,uid=1000,gid=1000 \
    sha256sum /run/secrets/tok | cut -c1-64 > /tmp/owner-read
USER 1001:1001
RUN --mount=type=secret,id=tok,uid=1000,gid=1000 \
    {{ cat /run/secrets/tok 2>/dev/null || echo denied; }} > /tmp/other-read
USER root
RUN --mount=type=bind,source=src,target=/src \
    --mount=type=bind,source=src,target=/scratch,rw \
    ls /src > /src-list && stat -c '%u:%g' /src/main.c > /src-owner \
 && {{ touch /src/new 2>/dev/null && echo writable || echo read-only; }} > /src-ro \
 && echo scribble > /scratch/main.c && chown 1000:1000 /scratch/main.c && cat /scratch/main.c > /scratch-rw
"#,
            r = reg.addr
        ),
    )
    .unwrap();
    // The user's checkout: their user and group (both the step's root).
    let st = Command::new("chown")
        .args(["-R", &format!("{}:", user.name)])
        .arg(p)
        .status()
        .unwrap();
    assert!(st.success());
    let o = user.berth(
        p,
        &[
            "image",
            "build",
            "-t",
            "rl",
            "--secret",
            "id=tok,src=token",
            ".",
        ],
    );
    let (out, err) = text(&o);
    assert!(o.status.success(), "rootless build failed:\n{out}\n{err}");
    let tar = p.join("out.tar");
    let o = user.berth(p, &["image", "export", "rl", "-o", tar.to_str().unwrap()]);
    assert!(o.status.success(), "{:?}", text(&o));
    let files = tar_files(&tar);
    let f = |k: &str| files.get(k).map(String::as_str).unwrap_or("<missing>");
    assert_eq!(f("as-root"), "440 1000:1000\n");
    assert_eq!(
        f("tmp/owner-read").trim(),
        hex::encode(Sha256::digest(token.as_bytes()))
    );
    assert_eq!(f("tmp/other-read"), "denied\n");
    // Bind mounts work rootless too: .dockerignore applies, the user's files show as root,
    // read-only unless rw, and rw writes (by another id too) reach neither the context nor
    // the image, and leave nothing behind.
    assert_eq!(f("src-list"), "main.c\n");
    assert_eq!(f("src-owner"), "0:0\n");
    assert_eq!(f("src-ro"), "read-only\n");
    assert_eq!(f("scratch-rw"), "scribble\n");
    assert_eq!(
        fs::read_to_string(p.join("src/main.c")).unwrap(),
        "int main;\n"
    );
    let tmp: Vec<_> = fs::read_dir(PathBuf::from(user.home()).join(".local/share/berth/tmp"))
        .map(|r| r.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(tmp.is_empty(), "staging left behind: {tmp:?}");
    assert!(
        !files.values().any(|c| c.contains(token)),
        "token in the image"
    );
    assert!(!files.contains_key("run/secrets/tok"));
    let home = PathBuf::from(user.home()).join(".local/share/berth");
    let leaked = berth_e2e::host::files_containing(&home, token);
    assert!(leaked.is_empty(), "the token is in {leaked:?}");
    let shm: Vec<_> = fs::read_dir("/dev/shm")
        .unwrap()
        .flatten()
        .filter(|e| !berth_e2e::host::files_containing(&e.path(), token).is_empty())
        .collect();
    assert!(shm.is_empty(), "secret files left in /dev/shm: {shm:?}");
}
