//! The guest's `/etc/hosts` entries of the environment's sidecars (`Setup::hosts`): one block
//! of the file, between berth's marker lines, replaced as a whole; the rest of the file (the
//! image's own entries, lines a user added) stays as it is.

use std::io;
use std::path::Path;

const BEGIN: &str = "# berth sidecars: begin (berth rewrites this block)";
const END: &str = "# berth sidecars: end";

/// `existing` with berth's block replaced by `hosts` (name, address), appended when the file
/// had none; an empty `hosts` removes the block. Names or addresses holding whitespace or
/// `#` (which would make another entry or a comment of the line) are left out.
pub fn with_sidecar_hosts(existing: &str, hosts: &[(String, String)]) -> String {
    let mut out = String::with_capacity(existing.len() + 64 * hosts.len());
    let mut inside = false;
    for line in existing.lines() {
        match (inside, line) {
            (false, BEGIN) => inside = true,
            (true, END) => inside = false,
            (true, _) => {}
            (false, _) => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    let plain = |s: &str| !s.is_empty() && !s.contains(|c: char| c.is_whitespace() || c == '#');
    let entries: Vec<String> = hosts
        .iter()
        .filter(|(name, address)| plain(name) && plain(address))
        .map(|(name, address)| format!("{address}\t{name}\n"))
        .collect();
    if !entries.is_empty() {
        out.push_str(BEGIN);
        out.push('\n');
        entries.iter().for_each(|e| out.push_str(e));
        out.push_str(END);
        out.push('\n');
    }
    out
}

/// Rewrites berth's block of the hosts file at `path` (the guest's `/etc/hosts`) when it
/// changes; a file with no block and no hosts to add is not touched (nor created).
pub fn update(path: &Path, hosts: &[(String, String)]) -> io::Result<()> {
    let existing = match std::fs::read_to_string(path) {
        Ok(s) => s,
        Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e),
    };
    let wanted = with_sidecar_hosts(&existing, hosts);
    if wanted == existing || (existing.is_empty() && hosts.is_empty()) {
        return Ok(());
    }
    // Written in place of a link (an image's /etc/hosts may point elsewhere).
    let tmp = path.with_extension("berth-new");
    std::fs::write(&tmp, wanted)?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(n, a)| (n.to_string(), a.to_string()))
            .collect()
    }

    #[test]
    fn the_block_is_added_replaced_and_removed_and_the_rest_stays() {
        let image = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost\n";
        let one = with_sidecar_hosts(image, &h(&[("cache", "10.88.0.3")]));
        assert_eq!(one, format!("{image}{BEGIN}\n10.88.0.3\tcache\n{END}\n"));
        let mut edited = one.clone();
        edited.push_str("192.168.1.9\tmine\n");
        let two = with_sidecar_hosts(&edited, &h(&[("db", "10.88.0.4"), ("cache", "10.88.0.5")]));
        assert_eq!(
            two,
            format!("{image}192.168.1.9\tmine\n{BEGIN}\n10.88.0.4\tdb\n10.88.0.5\tcache\n{END}\n")
        );
        assert_eq!(
            with_sidecar_hosts(&two, &[]),
            format!("{image}192.168.1.9\tmine\n")
        );
        assert_eq!(with_sidecar_hosts(image, &[]), image);
    }

    #[test]
    fn names_that_would_make_other_entries_are_left_out() {
        let out = with_sidecar_hosts(
            "",
            &h(&[
                ("a b", "10.0.0.1"),
                ("c", "10.0.0.2 evil"),
                ("d#", "10.0.0.3"),
                ("e", "10.0.0.4"),
            ]),
        );
        assert_eq!(out, format!("{BEGIN}\n10.0.0.4\te\n{END}\n"));
    }

    #[test]
    fn a_file_without_a_block_is_not_touched_when_there_is_nothing_to_add() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hosts");
        update(&path, &[]).unwrap();
        assert!(!path.exists());
        std::fs::write(&path, "127.0.0.1 localhost\n").unwrap();
        update(&path, &h(&[("cache", "10.88.0.3")])).unwrap();
        assert!(std::fs::read_to_string(&path)
            .unwrap()
            .contains("10.88.0.3\tcache\n"));
        update(&path, &[]).unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "127.0.0.1 localhost\n"
        );
    }
}
