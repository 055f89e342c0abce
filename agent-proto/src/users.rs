//! Resolving `user` strings (`name`, `uid`, `uid:gid`, `name:group`) against the environment's
//! own /etc/passwd and /etc/group: one meaning for the container supervisor (after
//! pivot_root) and the VM agent (in the guest), so `user = "1000:1000"`, an image's `User`
//! and `exec --user dev:wheel` mean the same thing in both backends.

/// A user to run a process as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedUser {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups (from /etc/group membership).
    pub groups: Vec<u32>,
    pub home: String,
    pub name: Option<String>,
}

/// Resolves `user` (None → root) using the given passwd and group file contents.
pub fn resolve(user: Option<&str>, passwd: &str, group: &str) -> Result<ResolvedUser, String> {
    let user = user.filter(|u| !u.is_empty()).unwrap_or("0");
    let (u, g) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let entries: Vec<Vec<&str>> = passwd
        .lines()
        .map(|l| l.split(':').collect())
        .filter(|f: &Vec<&str>| f.len() >= 7)
        .collect();
    let by_name = entries.iter().find(|f| f[0] == u);
    let (uid, mut gid, home, name) = match (u.parse::<u32>(), by_name) {
        (Ok(uid), _) => {
            let e = entries.iter().find(|f| f[2].parse() == Ok(uid));
            (
                uid,
                e.and_then(|f| f[3].parse().ok()).unwrap_or(uid),
                e.map(|f| f[5].to_string()).unwrap_or_else(|| if uid == 0 { "/root".into() } else { "/".into() }),
                e.map(|f| f[0].to_string()),
            )
        }
        (Err(_), Some(f)) => (
            f[2].parse().map_err(|_| format!("bad uid for {u} in /etc/passwd"))?,
            f[3].parse().map_err(|_| format!("bad gid for {u} in /etc/passwd"))?,
            f[5].to_string(),
            Some(f[0].to_string()),
        ),
        (Err(_), None) => return Err(format!("user {u:?} does not exist in the environment's /etc/passwd; use a numeric uid or create the user")),
    };
    let groups_tbl: Vec<Vec<&str>> = group
        .lines()
        .map(|l| l.split(':').collect())
        .filter(|f: &Vec<&str>| f.len() >= 4)
        .collect();
    if let Some(g) = g {
        gid = match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => groups_tbl
                .iter()
                .find(|f| f[0] == g)
                .and_then(|f| f[2].parse().ok())
                .ok_or_else(|| {
                    format!("group {g:?} does not exist in the environment's /etc/group")
                })?,
        };
    }
    let mut groups = vec![gid];
    if let Some(n) = &name {
        for f in &groups_tbl {
            if f[3].split(',').any(|m| m == n) {
                if let Ok(id) = f[2].parse() {
                    if !groups.contains(&id) {
                        groups.push(id);
                    }
                }
            }
        }
    }
    Ok(ResolvedUser {
        uid,
        gid,
        groups,
        home,
        name,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PW: &str = "root:x:0:0:root:/root:/bin/sh\ndev:x:1000:1000::/home/dev:/bin/sh\nbad\n";
    const GR: &str = "root:x:0:\nwheel:x:10:dev\ndev:x:1000:\n";

    #[test]
    fn names_numbers_and_groups() {
        let r = resolve(None, PW, GR).unwrap();
        assert_eq!((r.uid, r.gid, r.home.as_str()), (0, 0, "/root"));
        let d = resolve(Some("dev"), PW, GR).unwrap();
        assert_eq!(
            (d.uid, d.gid, d.groups.clone()),
            (1000, 1000, vec![1000, 10])
        );
        assert_eq!(d.home, "/home/dev");
        let n = resolve(Some("1234:5"), PW, GR).unwrap();
        assert_eq!((n.uid, n.gid, n.home.as_str()), (1234, 5, "/"));
        let w = resolve(Some("dev:wheel"), PW, GR).unwrap();
        assert_eq!(w.gid, 10);
        assert!(resolve(Some("nobody"), PW, GR).is_err());
        assert!(resolve(Some("dev:nogroup"), PW, GR).is_err());
        assert_eq!(
            resolve(Some("1000"), PW, GR).unwrap().name.as_deref(),
            Some("dev")
        );
    }
}
