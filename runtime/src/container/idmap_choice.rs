//! Choosing an environment's user-id mapping: root's or the invoking user's subordinate range
//! (`/etc/subuid`, `/etc/subgid`), a fallback range for root that no user's range overlaps, or a
//! single id.

use std::fs;
use std::path::Path;

use super::error::{ContainerError, Result};
use super::idmap::{IdMapping, IdRange, MapWriter};
use super::spec::UserMappingChoice;

/// Host range used for root when /etc/subuid has no entry for root.
pub const ROOT_FALLBACK_START: u32 = 100000;
pub const ROOT_FALLBACK_COUNT: u32 = 65536;

/// Ranges of `user` (name or numeric uid) in a /etc/subuid-style file.
pub fn parse_subid(content: &str, user: &str, id: u32) -> Vec<(u32, u32)> {
    content
        .lines()
        .filter_map(|l| {
            let l = l.trim();
            if l.is_empty() || l.starts_with('#') {
                return None;
            }
            let mut it = l.split(':');
            let (who, start, count) = (it.next()?, it.next()?, it.next()?);
            if who != user && who != id.to_string() {
                return None;
            }
            Some((start.trim().parse().ok()?, count.trim().parse().ok()?))
        })
        .filter(|&(_, c)| c > 0)
        .collect()
}

/// Every `(start, count)` in a /etc/subuid-style file.
pub fn all_subid_ranges(content: &str) -> Vec<(u32, u32)> {
    content
        .lines()
        .filter_map(|l| {
            let mut it = l.trim().split(':');
            let (_, start, count) = (it.next()?, it.next()?, it.next()?);
            Some((start.trim().parse().ok()?, count.trim().parse().ok()?))
        })
        .collect()
}

/// Root's range when /etc/subuid has none for root: 100000+65536 unless a user's
/// subordinate ids overlap it, else the first free 65536-aligned block above all of them.
pub fn root_fallback_start(taken: &[(u32, u32)]) -> u32 {
    let overlaps = |s: u64| {
        taken.iter().any(|&(ts, tc)| {
            let (ts, te) = (ts as u64, ts as u64 + tc as u64);
            s < te && ts < s + ROOT_FALLBACK_COUNT as u64
        })
    };
    let mut start = ROOT_FALLBACK_START as u64;
    while overlaps(start) {
        let end = taken
            .iter()
            .map(|&(s, c)| s as u64 + c as u64)
            .filter(|&e| e > start)
            .min()
            .unwrap_or(start + 1);
        start = end.div_ceil(ROOT_FALLBACK_COUNT as u64) * ROOT_FALLBACK_COUNT as u64;
    }
    start.min((u32::MAX - ROOT_FALLBACK_COUNT) as u64) as u32
}

/// Facts about the invoking user, so the choice logic is testable without touching the host.
#[derive(Debug, Clone)]
pub struct Invoker {
    pub uid: u32,
    pub gid: u32,
    pub name: String,
    pub subuid: Vec<(u32, u32)>,
    pub subgid: Vec<(u32, u32)>,
    pub have_newidmap: bool,
    /// Every range in /etc/subuid and /etc/subgid (of any user), so root's fallback range
    /// never overlaps a rootless user's subordinate ids.
    pub taken: Vec<(u32, u32)>,
}

impl Invoker {
    /// The current process's user, /etc/subuid and /etc/subgid, and whether newuidmap exists.
    pub fn current() -> Invoker {
        let uid = nix::unistd::geteuid().as_raw();
        let gid = nix::unistd::getegid().as_raw();
        let name = nix::unistd::User::from_uid(uid.into())
            .ok()
            .flatten()
            .map(|u| u.name)
            .unwrap_or_else(|| uid.to_string());
        let read = |p: &str| fs::read_to_string(p).unwrap_or_default();
        let have = |tool: &str| {
            ["/usr/bin", "/bin", "/usr/sbin", "/sbin", "/usr/local/bin"]
                .iter()
                .any(|d| Path::new(d).join(tool).exists())
        };
        let taken = [read("/etc/subuid"), read("/etc/subgid")]
            .iter()
            .flat_map(|t| all_subid_ranges(t))
            .collect();
        Invoker {
            uid,
            gid,
            taken,
            subuid: parse_subid(&read("/etc/subuid"), &name, uid),
            subgid: parse_subid(&read("/etc/subgid"), &name, uid),
            name,
            have_newidmap: have("newuidmap") && have("newgidmap"),
        }
    }
}

/// The mapping for a choice; `None` when privileged (no user namespace at all).
pub fn choose(
    choice: UserMappingChoice,
    privileged: bool,
    who: &Invoker,
) -> Result<Option<IdMapping>> {
    if privileged {
        if who.uid != 0 {
            return Err(ContainerError::Invalid(
                "privileged environments need host root; run berth as root or drop --privileged"
                    .into(),
            ));
        }
        return Ok(None);
    }
    let single = |uid: u32, gid: u32| IdMapping {
        uids: vec![IdRange {
            inside: 0,
            outside: uid,
            count: 1,
        }],
        gids: vec![IdRange {
            inside: 0,
            outside: gid,
            count: 1,
        }],
        writer: MapWriter::Direct,
        deny_setgroups: uid != 0,
    };
    let range = |start: u32, count: u32| IdMapping {
        uids: vec![IdRange {
            inside: 0,
            outside: start,
            count,
        }],
        gids: vec![IdRange {
            inside: 0,
            outside: start,
            count,
        }],
        writer: MapWriter::Direct,
        deny_setgroups: false,
    };
    Ok(Some(match choice {
        UserMappingChoice::SingleId => single(who.uid, who.gid),
        UserMappingChoice::Range { host_start, count } => {
            if who.uid != 0 {
                return Err(ContainerError::Invalid(
                    "an explicit id range needs host root; use the automatic mapping when rootless"
                        .into(),
                ));
            }
            if count == 0 || host_start == 0 {
                return Err(ContainerError::Invalid(
                    "an id range must start above 0 and hold at least one id".into(),
                ));
            }
            range(host_start, count)
        }
        UserMappingChoice::Auto if who.uid == 0 => match (who.subuid.first(), who.subgid.first()) {
            (Some(&(us, uc)), Some(&(gs, gc))) => IdMapping {
                uids: vec![IdRange {
                    inside: 0,
                    outside: us,
                    count: uc.min(ROOT_FALLBACK_COUNT),
                }],
                gids: vec![IdRange {
                    inside: 0,
                    outside: gs,
                    count: gc.min(ROOT_FALLBACK_COUNT),
                }],
                writer: MapWriter::Direct,
                deny_setgroups: false,
            },
            _ => range(root_fallback_start(&who.taken), ROOT_FALLBACK_COUNT),
        },
        UserMappingChoice::Auto => {
            match (who.subuid.first(), who.subgid.first(), who.have_newidmap) {
                (Some(&(us, uc)), Some(&(gs, gc)), true) => IdMapping {
                    uids: vec![
                        IdRange {
                            inside: 0,
                            outside: who.uid,
                            count: 1,
                        },
                        IdRange {
                            inside: 1,
                            outside: us,
                            count: uc.min(ROOT_FALLBACK_COUNT - 1),
                        },
                    ],
                    gids: vec![
                        IdRange {
                            inside: 0,
                            outside: who.gid,
                            count: 1,
                        },
                        IdRange {
                            inside: 1,
                            outside: gs,
                            count: gc.min(ROOT_FALLBACK_COUNT - 1),
                        },
                    ],
                    writer: MapWriter::NewIdMap,
                    deny_setgroups: false,
                },
                _ => single(who.uid, who.gid),
            }
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn who(uid: u32, sub: bool, helper: bool) -> Invoker {
        Invoker {
            uid,
            gid: uid,
            name: "u".into(),
            subuid: if sub { vec![(300000, 65536)] } else { vec![] },
            subgid: if sub { vec![(400000, 65536)] } else { vec![] },
            have_newidmap: helper,
            taken: vec![],
        }
    }

    /// An environment's mapping with different host ranges for users (100000+) and groups

    #[test]
    fn root_fallback_avoids_users_subordinate_ids() {
        assert_eq!(root_fallback_start(&[]), 100000);
        assert_eq!(root_fallback_start(&[(165536, 65536)]), 100000);
        assert_eq!(root_fallback_start(&[(100000, 65536)]), 196608);
        assert_eq!(
            root_fallback_start(&[(100000, 65536), (165536, 65536), (231072, 10)]),
            262144
        );
        let mut w = who(0, false, false);
        w.taken = vec![(100000, 65536)];
        let m = choose(UserMappingChoice::Auto, false, &w).unwrap().unwrap();
        assert_eq!(m.host_uid(0), Some(196608));
    }

    #[test]
    fn subid_parsing_matches_name_or_uid_and_skips_junk() {
        let t = "# c\nroot:100000:65536\nu:1:0\nbad\n1000:200000:10\nu:300000:5\n";
        assert_eq!(parse_subid(t, "root", 0), vec![(100000, 65536)]);
        assert_eq!(parse_subid(t, "u", 1000), vec![(200000, 10), (300000, 5)]);
        assert!(parse_subid(t, "x", 7).is_empty());
    }

    #[test]
    fn root_uses_subuid_else_fixed_range() {
        let m = choose(UserMappingChoice::Auto, false, &who(0, false, false))
            .unwrap()
            .unwrap();
        assert_eq!(m.uid_map_text(), "0 100000 65536\n");
        assert_eq!(m.host_uid(0), Some(100000));
        assert_eq!(m.host_uid(65535), Some(165535));
        assert_eq!(m.host_uid(65536), None);
        let m = choose(UserMappingChoice::Auto, false, &who(0, true, false))
            .unwrap()
            .unwrap();
        assert_eq!(m.uid_map_text(), "0 300000 65536\n");
        assert_eq!(m.gid_map_text(), "0 400000 65536\n");
        assert_eq!(m.writer, MapWriter::Direct);
    }

    #[test]
    fn rootless_uses_helpers_only_with_ranges_and_tools() {
        let m = choose(UserMappingChoice::Auto, false, &who(1000, true, true))
            .unwrap()
            .unwrap();
        assert_eq!(m.writer, MapWriter::NewIdMap);
        assert_eq!(m.uid_map_text(), "0 1000 1\n1 300000 65535\n");
        assert_eq!(m.host_uid(0), Some(1000));
        assert_eq!(m.host_uid(1), Some(300000));
        let m = choose(UserMappingChoice::Auto, false, &who(1000, true, false))
            .unwrap()
            .unwrap();
        assert_eq!(m.uid_map_text(), "0 1000 1\n");
        assert!(!m.has_gid(5));
        assert!(
            m.needs_setgroups_deny(),
            "an unprivileged single-id map needs setgroups denied"
        );
        let m = choose(UserMappingChoice::SingleId, false, &who(1000, true, true))
            .unwrap()
            .unwrap();
        assert_eq!(m.writer, MapWriter::Direct);
        assert_eq!(m.gid_map_text(), "0 1000 1\n");
    }

    #[test]
    fn privileged_and_ranges_need_root() {
        assert!(choose(UserMappingChoice::Auto, true, &who(0, false, false))
            .unwrap()
            .is_none());
        assert!(choose(UserMappingChoice::Auto, true, &who(1000, false, false)).is_err());
        let r = UserMappingChoice::Range {
            host_start: 500000,
            count: 10,
        };
        assert!(choose(r, false, &who(1000, false, false)).is_err());
        let m = choose(r, false, &who(0, false, false)).unwrap().unwrap();
        assert_eq!(m.uid_map_text(), "0 500000 10\n");
        let z = UserMappingChoice::Range {
            host_start: 0,
            count: 10,
        };
        assert!(choose(z, false, &who(0, false, false)).is_err());
    }
}
