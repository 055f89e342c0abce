//! The one table of every key berth.toml v1 knows. The validator takes its "unknown key" and
//! "did you mean" answers from here, and a test checks the JSON schema against it, so the two
//! cannot drift apart.
//!
//! Paths: `image.from` is key `from` of table `image`; `mounts[].target` is key `target` of
//! each element of the array of tables `mounts`; `services.*.command` is key `command` of any
//! entry of the free-form table `services`.

/// What a key holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyType {
    String,
    Boolean,
    Integer,
    /// An integer or a float.
    Number,
    /// A string with a unit (`"2GiB"`) or an integer number of bytes.
    Size,
    /// A string with a unit (`"30s"`, `"2m"`) or an integer number of seconds.
    Duration,
    /// An array of strings.
    StringArray,
    /// An array of strings, or one string run with `/bin/sh -c`.
    Command,
    /// One of a fixed set of strings.
    Enum(&'static [&'static str]),
    /// A table whose keys are listed in this table.
    Table,
    /// An array of tables whose keys are listed in this table.
    ArrayOfTables,
    /// A table with free-form keys, each a string (`[env]`).
    StringMap,
    /// A table with free-form keys, each a table whose keys are listed under `NAME.*`.
    TableMap,
}

/// One key of the format.
#[derive(Debug, Clone, Copy)]
pub struct KeySpec {
    pub path: &'static str,
    pub ty: KeyType,
}

pub const BACKENDS: &[&str] = &["container", "vm"];
pub const MOUNT_TYPES: &[&str] = &["bind", "sync", "volume", "tmpfs"];
pub const PROTOCOLS: &[&str] = &["tcp", "udp"];
pub const NETWORK_MODES: &[&str] = &["isolated", "host", "none"];
pub const RESTART_POLICIES: &[&str] = &["no", "on-failure", "always"];
pub const VMMS: &[&str] = &["auto", "kvm", "qemu"];

const fn k(path: &'static str, ty: KeyType) -> KeySpec {
    KeySpec { path, ty }
}

/// Every key of berth.toml v1.
pub const KEYS: &[KeySpec] = &[
    k("name", KeyType::String),
    k("backend", KeyType::Enum(BACKENDS)),
    k("on_create", KeyType::StringArray),
    k("on_up", KeyType::StringArray),
    k("devices", KeyType::StringArray),
    k("image", KeyType::Table),
    k("image.from", KeyType::String),
    k("image.packages", KeyType::StringArray),
    k("image.setup", KeyType::StringArray),
    k("image.mirror", KeyType::String),
    k("image.inputs", KeyType::StringArray),
    k("image.workdir", KeyType::String),
    k("image.host_ca", KeyType::Boolean),
    k("image.dockerfile", KeyType::String),
    k("image.context", KeyType::String),
    k("image.target", KeyType::String),
    k("image.args", KeyType::StringMap),
    k("image.cache", KeyType::String),
    k("image.cache_push", KeyType::Boolean),
    k("env", KeyType::StringMap),
    k("mounts", KeyType::ArrayOfTables),
    k("mounts[].source", KeyType::String),
    k("mounts[].target", KeyType::String),
    k("mounts[].type", KeyType::Enum(MOUNT_TYPES)),
    k("mounts[].readonly", KeyType::Boolean),
    k("mounts[].ignore", KeyType::StringArray),
    k("mounts[].size", KeyType::Size),
    k("mounts[].unsafe_host_path", KeyType::Boolean),
    k("ports", KeyType::ArrayOfTables),
    k("ports[].host", KeyType::Integer),
    k("ports[].guest", KeyType::Integer),
    k("ports[].protocol", KeyType::Enum(PROTOCOLS)),
    k("ports[].address", KeyType::String),
    k("resources", KeyType::Table),
    k("resources.memory", KeyType::Size),
    k("resources.cpus", KeyType::Number),
    k("resources.pids", KeyType::Integer),
    k("network", KeyType::Table),
    k("network.mode", KeyType::Enum(NETWORK_MODES)),
    k("shell", KeyType::Table),
    k("shell.user", KeyType::String),
    k("shell.workdir", KeyType::String),
    k("shell.command", KeyType::Command),
    k("services", KeyType::TableMap),
    k("services.*.command", KeyType::Command),
    k("services.*.args", KeyType::StringArray),
    k("services.*.restart", KeyType::Enum(RESTART_POLICIES)),
    k("services.*.env", KeyType::StringMap),
    k("services.*.workdir", KeyType::String),
    k("services.*.image", KeyType::String),
    k("services.*.after", KeyType::StringArray),
    k("services.*.ready", KeyType::Table),
    k("services.*.ready.command", KeyType::Command),
    k("services.*.ready.tcp", KeyType::Integer),
    k("services.*.ready.timeout", KeyType::Duration),
    k("services.*.mounts", KeyType::ArrayOfTables),
    k("services.*.mounts[].source", KeyType::String),
    k("services.*.mounts[].target", KeyType::String),
    k("services.*.mounts[].type", KeyType::Enum(MOUNT_TYPES)),
    k("services.*.mounts[].readonly", KeyType::Boolean),
    k("services.*.mounts[].ignore", KeyType::StringArray),
    k("services.*.mounts[].size", KeyType::Size),
    k("services.*.mounts[].unsafe_host_path", KeyType::Boolean),
    k("services.*.resources", KeyType::Table),
    k("services.*.resources.memory", KeyType::Size),
    k("services.*.resources.cpus", KeyType::Number),
    k("services.*.resources.pids", KeyType::Integer),
    k("vm", KeyType::Table),
    k("vm.kernel", KeyType::String),
    k("vm.memory", KeyType::Size),
    k("vm.vcpus", KeyType::Integer),
    k("vm.vmm", KeyType::Enum(VMMS)),
    k("vm.modules", KeyType::String),
    k("credentials", KeyType::Table),
    k("credentials.ssh_agent", KeyType::Boolean),
    k("credentials.git", KeyType::Boolean),
    k("credentials.git_credentials", KeyType::Boolean),
    k("secrets", KeyType::TableMap),
    k("secrets.*.env", KeyType::String),
    k("secrets.*.file", KeyType::String),
    k("secrets.*.command", KeyType::StringArray),
    k("secrets.*.from_env", KeyType::String),
    k("secrets.*.from_file", KeyType::String),
    k("secrets.*.from_command", KeyType::StringArray),
    k("secrets.*.as_env", KeyType::Boolean),
];

/// The keys allowed directly inside `parent` (`""` for the top level, `"mounts[]"`,
/// `"services.*"`), in table order.
pub fn children(parent: &str) -> Vec<&'static str> {
    KEYS.iter()
        .filter_map(|spec| {
            let rest = if parent.is_empty() {
                Some(spec.path)
            } else {
                spec.path
                    .strip_prefix(parent)
                    .and_then(|r| r.strip_prefix('.'))
            }?;
            (!rest.contains('.')).then_some(rest)
        })
        .collect()
}

/// The spec of one key path.
pub fn spec(path: &str) -> Option<&'static KeySpec> {
    KEYS.iter().find(|s| s.path == path)
}

/// The closest known name to `unknown` among `candidates`, when it is close enough to be a typo.
pub fn suggest<'a>(unknown: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let lower = unknown.to_ascii_lowercase().replace('-', "_");
    candidates
        .iter()
        .map(|&c| (strsim::damerau_levenshtein(&lower, c), c))
        .filter(|&(d, c)| d <= (c.chars().count().max(3) / 3).max(1) || lower == c)
        .min_by_key(|&(d, _)| d)
        .map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn children_of_each_level() {
        assert_eq!(
            children(""),
            [
                "name",
                "backend",
                "on_create",
                "on_up",
                "devices",
                "image",
                "env",
                "mounts",
                "ports",
                "resources",
                "network",
                "shell",
                "services",
                "vm",
                "credentials",
                "secrets"
            ]
        );
        assert_eq!(
            children("mounts[]"),
            [
                "source",
                "target",
                "type",
                "readonly",
                "ignore",
                "size",
                "unsafe_host_path"
            ]
        );
        assert_eq!(
            children("services.*"),
            [
                "command",
                "args",
                "restart",
                "env",
                "workdir",
                "image",
                "after",
                "ready",
                "mounts",
                "resources"
            ]
        );
        assert_eq!(children("services.*.ready"), ["command", "tcp", "timeout"]);
        assert_eq!(children("services.*.mounts[]"), children("mounts[]"));
        assert_eq!(children("services.*.resources"), children("resources"));
        assert!(children("env").is_empty());
    }

    #[test]
    fn suggestions() {
        assert_eq!(suggest("imgae", &children("")), Some("image"));
        assert_eq!(suggest("port", &children("")), Some("ports"));
        assert_eq!(suggest("mount", &children("")), Some("mounts"));
        assert_eq!(
            suggest("read-only", &children("mounts[]")),
            Some("readonly")
        );
        assert_eq!(suggest("Backend", &children("")), Some("backend"));
        assert_eq!(suggest("zzzzzzzz", &children("")), None);
        assert_eq!(suggest("cpu", &children("resources")), Some("cpus"));
    }
}
