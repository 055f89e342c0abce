//! The host's answer to one request of the git credential helper inside (a container's
//! accepted connection or a VM's forwarded stream): a `get` is answered with the host's
//! `git credential fill`; nothing else changes the host's store.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use super::host_git;

/// Largest git credential request read from inside.
const MAX_GIT_REQUEST: u64 = 64 * 1024;

/// One request of git's `credential-cache` client: read to its end (the client shuts its
/// side down), answer a `get` with the host's credential, ignore `store`/`erase` (the
/// host's store is not changed from inside).
pub(super) async fn answer_git(mut conn: UnixStream) {
    let mut req = Vec::new();
    let read = tokio::time::timeout(
        Duration::from_secs(10),
        (&mut conn).take(MAX_GIT_REQUEST).read_to_end(&mut req),
    )
    .await;
    if !matches!(read, Ok(Ok(_))) {
        return;
    }
    let Ok(text) = String::from_utf8(req) else {
        return;
    };
    let Some((action, attrs)) = host_git::parse_request(&text) else {
        return;
    };
    if action != "get" {
        return;
    }
    let Ok(answer) = tokio::task::spawn_blocking(move || host_git::fill(&attrs)).await else {
        return;
    };
    let _ = conn.write_all(answer.as_bytes()).await;
    let _ = conn.shutdown().await;
}
