//! The guest's users, resolved by the same rules as in a container
//! ([`berth_agent_proto::users`]: `name`, `uid`, `uid:gid`, `name:group`, supplementary groups
//! from /etc/group), read from the guest's own files (no NSS in a static binary).

pub use berth_agent_proto::users::ResolvedUser as User;

/// Root, without reading any file (the default user of every command).
pub fn root() -> User {
    User {
        uid: 0,
        gid: 0,
        groups: vec![0],
        home: "/root".into(),
        name: Some("root".into()),
    }
}

/// Looks `spec` up in the guest's /etc/passwd and /etc/group; the error says what is missing.
pub fn resolve(spec: &str) -> Result<User, String> {
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    let group = std::fs::read_to_string("/etc/group").unwrap_or_default();
    berth_agent_proto::users::resolve(Some(spec), &passwd, &group)
        .map_err(|e| e.replace("the environment's", "the guest's"))
}
