//! Resolves a user name or uid against the guest's /etc/passwd (no NSS in a static binary).

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub uid: u32,
    pub gid: u32,
    pub home: String,
    pub shell: String,
}

pub fn root() -> User {
    User {
        uid: 0,
        gid: 0,
        home: "/root".into(),
        shell: "/bin/sh".into(),
    }
}

/// Looks `spec` (a name or a numeric uid) up in `passwd` content.
pub fn resolve(spec: &str, passwd: &str) -> Option<User> {
    let numeric: Option<u32> = spec.parse().ok();
    for line in passwd.lines() {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() < 7 {
            continue;
        }
        let (Ok(uid), Ok(gid)) = (f[2].parse::<u32>(), f[3].parse::<u32>()) else {
            continue;
        };
        if f[0] == spec || numeric == Some(uid) {
            return Some(User {
                uid,
                gid,
                home: f[5].into(),
                shell: f[6].into(),
            });
        }
    }
    numeric.map(|uid| User {
        uid,
        gid: uid,
        home: "/".into(),
        shell: "/bin/sh".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str =
        "root:x:0:0:root:/root:/bin/bash\nbroken\ndev:x:1000:100::/home/dev:/bin/sh\n";

    #[test]
    fn by_name_uid_and_unknown() {
        assert_eq!(resolve("dev", PASSWD).unwrap().uid, 1000);
        assert_eq!(resolve("1000", PASSWD).unwrap().home, "/home/dev");
        assert_eq!(resolve("root", PASSWD).unwrap().shell, "/bin/bash");
        assert_eq!(resolve("4242", PASSWD).unwrap().gid, 4242);
        assert_eq!(resolve("nobody-here", PASSWD), None);
    }
}
