//! A table of bad berth.toml files: each must fail with exactly the listed error kinds, at
//! exactly the listed line:column, in file order.

use std::path::Path;

use envfile_spec::{parse, ErrorKind as K, Severity};

struct Case {
    name: &'static str,
    text: &'static [u8],
    /// (kind, line, column) of every error, in order.
    errors: &'static [(K, usize, usize)],
}

const fn case(
    name: &'static str,
    text: &'static str,
    errors: &'static [(K, usize, usize)],
) -> Case {
    Case {
        name,
        text: text.as_bytes(),
        errors,
    }
}

const CASES: &[Case] = &[
    // --- not a TOML file at all -------------------------------------------------------------
    Case {
        name: "invalid utf-8",
        text: b"name = \"x\"\n[image]\nfrom = \"deb\xffian\"\n",
        errors: &[(K::NotUtf8, 3, 12)],
    },
    Case {
        name: "latin-1 file",
        text: b"# caf\xe9\n",
        errors: &[(K::NotUtf8, 1, 6)],
    },
    case("html", "<html>\n</html>\n", &[(K::TomlSyntax, 1, 1)]),
    case("json", "{\"image\": {\"from\": \"debian\"}}\n", &[(K::TomlSyntax, 1, 1)]),
    case("yaml", "image:\n  from: debian\n", &[(K::TomlSyntax, 1, 6)]),
    case("unquoted string", "[image]\nfrom = debian\n", &[(K::TomlSyntax, 2, 8)]),
    case("unclosed array", "[image]\nfrom = \"debian\"\npackages = [\"git\"\n", &[(K::TomlSyntax, 4, 1)]),
    case("duplicate key", "[image]\nfrom = \"a\"\nfrom = \"b\"\n", &[(K::TomlSyntax, 3, 1)]),
    case("duplicate table", "[image]\nfrom = \"a\"\n[image]\n", &[(K::TomlSyntax, 3, 1)]),
    case("integer too large", "[image]\nfrom = \"a\"\n[[ports]]\nhost = 99999999999999999999\nguest = 1\n", &[(K::TomlSyntax, 4, 8)]),
    // --- structure ------------------------------------------------------------------------------
    case("empty file", "", &[(K::MissingKey, 1, 1)]),
    case("no from", "[image]\npackages = []\n", &[(K::MissingKey, 1, 1)]),
    case("from and dockerfile", "[image]\nfrom = \"debian\"\ndockerfile = \"file.txt\"\n", &[(K::MisplacedKey, 2, 1)]),
    case("dockerfile missing", "[image]\ndockerfile = \"Dockerfile\"\n", &[(K::PathNotFound, 2, 14)]),
    case("dockerfile is a folder", "[image]\ndockerfile = \"src\"\n", &[(K::PathNotFound, 2, 14)]),
    case("context without dockerfile", "[image]\nfrom = \"debian\"\ncontext = \"src\"\ntarget = \"dev\"\n", &[(K::MisplacedKey, 3, 1), (K::MisplacedKey, 4, 1)]),
    case("context not a folder", "[image]\ndockerfile = \"file.txt\"\ncontext = \"file.txt\"\n", &[(K::PathNotFound, 3, 11)]),
    case("target not a stage name", "[image]\ndockerfile = \"file.txt\"\ntarget = \"1 x\"\n", &[(K::InvalidValue, 3, 10)]),
    case("args not text", "[image]\ndockerfile = \"file.txt\"\nargs = { V = 20 }\n", &[(K::WrongType, 3, 14)]),
    case("image is a string", "image = \"debian\"\n", &[(K::WrongType, 1, 9)]),
    case("unknown top-level table", "[imgae]\nfrom = \"debian\"\n[image]\nfrom = \"debian\"\n", &[(K::UnknownKey, 1, 2)]),
    case("unknown key in image", "[image]\nfrom = \"debian\"\npackage = [\"git\"]\n", &[(K::UnknownKey, 3, 1)]),
    case("top-level key after a table", "[image]\nfrom = \"debian\"\nbackend = \"container\"\n", &[(K::UnknownKey, 3, 1)]),
    case("unknown key in inline service", "[image]\nfrom = \"debian\"\n[services]\ndb = { comand = [\"pg\"] }\n", &[(K::MissingKey, 4, 6), (K::UnknownKey, 4, 8)]),
    case("mounts as a single table", "[image]\nfrom = \"debian\"\n[mounts]\ntarget = \"/w\"\n", &[(K::WrongType, 3, 1)]),
    case("ports element not a table", "ports = [8080]\n[image]\nfrom = \"debian\"\n", &[(K::WrongType, 1, 10)]),
    // --- top-level keys -----------------------------------------------------------------------
    case("device outside /dev and malformed patterns", "devices = [\"/dev/kvm\", \"/tmp/evil\", \"/dev/dri/[card\", \"/dev/../etc/shadow\"]\n[image]\nfrom = \"debian\"\n", &[(K::BadDevice, 1, 24), (K::BadDevice, 1, 37), (K::BadDevice, 1, 55)]),
    case("devices is a string", "devices = \"/dev/kvm\"\n[image]\nfrom = \"debian\"\n", &[(K::WrongType, 1, 11)]),
    case("uppercase name", "name = \"Web\"\n[image]\nfrom = \"debian\"\n", &[(K::BadName, 1, 8)]),
    case("name with underscore", "name = \"my_env\"\n[image]\nfrom = \"debian\"\n", &[(K::BadName, 1, 8)]),
    case("name too long", "name = \"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\"\n[image]\nfrom = \"debian\"\n", &[(K::BadName, 1, 8)]),
    case("name not a string", "name = 5\n[image]\nfrom = \"debian\"\n", &[(K::WrongType, 1, 8)]),
    case("bad backend", "backend = \"docker\"\n[image]\nfrom = \"debian\"\n", &[(K::BadEnum, 1, 11)]),
    case("on_up not an array", "on_up = \"make\"\n[image]\nfrom = \"debian\"\n", &[(K::WrongType, 1, 9)]),
    case("on_up empty step", "on_up = [\"make\", \"\"]\n[image]\nfrom = \"debian\"\n", &[(K::EmptyValue, 1, 18)]),
    // --- image --------------------------------------------------------------------------------
    case("uppercase reference", "[image]\nfrom = \"Debian\"\n", &[(K::BadImage, 2, 8)]),
    case("bad tag", "[image]\nfrom = \"debian:\"\n", &[(K::BadImage, 2, 8)]),
    case("bad digest", "[image]\nfrom = \"debian@sha256:abc\"\n", &[(K::BadImage, 2, 8)]),
    case("docker:// prefix", "[image]\nfrom = \"docker://debian\"\n", &[(K::BadImage, 2, 8)]),
    case("empty from", "[image]\nfrom = \"\"\n", &[(K::BadImage, 2, 8)]),
    case("bad debootstrap suite", "[image]\nfrom = \"debootstrap:Book Worm\"\n", &[(K::BadImage, 2, 8)]),
    case("missing rootfs", "[image]\nfrom = \"rootfs:./nope\"\n", &[(K::PathNotFound, 2, 8)]),
    case("rootfs is a file", "[image]\nfrom = \"rootfs:./file.txt\"\n", &[(K::PathNotFound, 2, 8)]),
    case("missing tar", "[image]\nfrom = \"tar:./rootfs.tar\"\n", &[(K::PathNotFound, 2, 8)]),
    case("package option", "[image]\nfrom = \"debian\"\npackages = [\"git\", \"--yes\"]\n", &[(K::BadPackage, 3, 20)]),
    case("package with space", "[image]\nfrom = \"debian\"\npackages = [\"git curl\"]\n", &[(K::BadPackage, 3, 13)]),
    case("package not a string", "[image]\nfrom = \"debian\"\npackages = [\"git\", 1]\n", &[(K::WrongType, 3, 20)]),
    case("mirror without debootstrap", "[image]\nfrom = \"debian\"\nmirror = \"http://deb.debian.org/debian\"\n", &[(K::MisplacedKey, 3, 1)]),
    case("mirror not a url", "[image]\nfrom = \"debootstrap:bookworm\"\nmirror = \"deb.debian.org\"\n", &[(K::BadUrl, 3, 10)]),
    case("inputs matching nothing", "[image]\nfrom = \"debian\"\ninputs = [\"file.txt\", \"package*.json\"]\n", &[(K::PathNotFound, 3, 23)]),
    case("inputs leaving the project", "[image]\nfrom = \"debian\"\ninputs = [\"../x\"]\n", &[(K::InvalidValue, 3, 11)]),
    case("inputs not a list", "[image]\nfrom = \"debian\"\ninputs = \"file.txt\"\n", &[(K::WrongType, 3, 10)]),
    case("relative image workdir", "[image]\nfrom = \"debian\"\nworkdir = \"app\"\n", &[(K::RelativePath, 3, 11)]),
    case("host_ca not a boolean", "[image]\nfrom = \"debian\"\nhost_ca = \"false\"\n", &[(K::WrongType, 3, 11)]),
    case("empty on_create step", "on_create = [\"\"]\n[image]\nfrom = \"debian\"\n", &[(K::EmptyValue, 1, 14)]),
    // --- env ----------------------------------------------------------------------------------
    case("env name with dash", "[image]\nfrom = \"debian\"\n[env]\nMY-VAR = \"1\"\n", &[(K::BadEnvName, 4, 1)]),
    case("env name starting with digit", "[image]\nfrom = \"debian\"\n[env]\n\"1X\" = \"1\"\n", &[(K::BadEnvName, 4, 1)]),
    case("env value a number", "[image]\nfrom = \"debian\"\n[env]\nPORT = 8080\n", &[(K::WrongType, 4, 8)]),
    case("env value with NUL", "[image]\nfrom = \"debian\"\n[env]\nX = \"a\\u0000b\"\n", &[(K::InvalidValue, 4, 5)]),
    // --- mounts -------------------------------------------------------------------------------
    case("relative target", "[image]\nfrom = \"debian\"\n[[mounts]]\nsource = \".\"\ntarget = \"work\"\n", &[(K::RelativePath, 5, 10)]),
    case("target is root", "[image]\nfrom = \"debian\"\n[[mounts]]\nsource = \".\"\ntarget = \"/\"\n", &[(K::BadMountTarget, 5, 10)]),
    case("target with dotdot", "[image]\nfrom = \"debian\"\n[[mounts]]\nsource = \".\"\ntarget = \"/a/../etc\"\n", &[(K::BadMountTarget, 5, 10)]),
    case("duplicate targets", "[image]\nfrom = \"debian\"\n[[mounts]]\nsource = \".\"\ntarget = \"/work\"\n[[mounts]]\nsource = \"src\"\ntarget = \"/work/\"\n", &[(K::DuplicateMountTarget, 8, 10)]),
    case("missing source", "[image]\nfrom = \"debian\"\n[[mounts]]\nsource = \"./missing\"\ntarget = \"/w\"\n", &[(K::PathNotFound, 4, 10)]),
    case("no source on bind", "[image]\nfrom = \"debian\"\n[[mounts]]\ntarget = \"/w\"\n", &[(K::MissingKey, 3, 1)]),
    case("no target", "[image]\nfrom = \"debian\"\n[[mounts]]\nsource = \".\"\n", &[(K::MissingKey, 3, 1)]),
    case("bad mount type", "[image]\nfrom = \"debian\"\n[[mounts]]\nsource = \".\"\ntarget = \"/w\"\ntype = \"nfs\"\n", &[(K::BadEnum, 6, 8)]),
    case("readonly as string", "[image]\nfrom = \"debian\"\n[[mounts]]\nsource = \".\"\ntarget = \"/w\"\nreadonly = \"true\"\n", &[(K::WrongType, 6, 12)]),
    case("source on tmpfs", "[image]\nfrom = \"debian\"\n[[mounts]]\nsource = \".\"\ntarget = \"/t\"\ntype = \"tmpfs\"\n", &[(K::MisplacedKey, 4, 1)]),
    case("size on bind", "mounts = [{ source = \".\", target = \"/w\", size = \"1G\" }]\n[image]\nfrom = \"debian\"\n", &[(K::MisplacedKey, 1, 42)]),
    case("ignore on bind", "[image]\nfrom = \"debian\"\n[[mounts]]\nsource = \".\"\ntarget = \"/w\"\nignore = [\"target\"]\n", &[(K::MisplacedKey, 6, 1)]),
    case("bad tmpfs size", "[image]\nfrom = \"debian\"\n[[mounts]]\ntarget = \"/t\"\ntype = \"tmpfs\"\nsize = \"lots\"\n", &[(K::BadSize, 6, 8)]),
    case("host root as source", "[image]\nfrom = \"debian\"\n[[mounts]]\nsource = \"/\"\ntarget = \"/host\"\n", &[(K::UnsafeMountSource, 4, 10)]),
    case("proc as source", "[image]\nfrom = \"debian\"\n[[mounts]]\nsource = \"/proc/self\"\ntarget = \"/p\"\ntype = \"sync\"\n", &[(K::UnsafeMountSource, 4, 10)]),
    case("source leaves the project", "[image]\nfrom = \"debian\"\n[[mounts]]\nsource = \"src/../..\"\ntarget = \"/up\"\n", &[(K::UnsafeMountSource, 4, 10)]),
    case("unsafe_host_path on a volume", "[image]\nfrom = \"debian\"\n[[mounts]]\nsource = \"cache\"\ntarget = \"/c\"\ntype = \"volume\"\nunsafe_host_path = true\n", &[(K::MisplacedKey, 7, 1)]),
    case("unsafe_host_path as string", "[image]\nfrom = \"debian\"\n[[mounts]]\nsource = \"/\"\ntarget = \"/h\"\nunsafe_host_path = \"yes\"\n", &[(K::UnsafeMountSource, 4, 10), (K::WrongType, 6, 20)]),
    case("bad volume name", "[image]\nfrom = \"debian\"\n[[mounts]]\nsource = \"../x\"\ntarget = \"/v\"\ntype = \"volume\"\n", &[(K::BadName, 4, 10)]),
    // --- ports --------------------------------------------------------------------------------
    case("port zero", "[image]\nfrom = \"debian\"\n[[ports]]\nhost = 0\nguest = 80\n", &[(K::BadPort, 4, 8)]),
    case("port too large", "[image]\nfrom = \"debian\"\n[[ports]]\nhost = 8080\nguest = 65536\n", &[(K::BadPort, 5, 9)]),
    case("negative port", "[image]\nfrom = \"debian\"\n[[ports]]\nhost = -1\nguest = 80\n", &[(K::BadPort, 4, 8)]),
    case("port as string", "[image]\nfrom = \"debian\"\n[[ports]]\nhost = \"8080\"\nguest = 80\n", &[(K::WrongType, 4, 8)]),
    case("port missing guest", "[image]\nfrom = \"debian\"\n[[ports]]\nhost = 8080\n", &[(K::MissingKey, 3, 1)]),
    case("duplicate host port", "[image]\nfrom = \"debian\"\n[[ports]]\nhost = 8080\nguest = 80\n[[ports]]\nhost = 8080\nguest = 81\n", &[(K::DuplicateHostPort, 7, 8)]),
    case("duplicate host port via 0.0.0.0", "ports = [\n  { host = 53, guest = 53, protocol = \"udp\" },\n  { host = 53, guest = 5353, protocol = \"udp\", address = \"0.0.0.0\" },\n]\n[image]\nfrom = \"debian\"\n", &[(K::DuplicateHostPort, 3, 12)]),
    case("bad protocol", "[image]\nfrom = \"debian\"\n[[ports]]\nhost = 1\nguest = 1\nprotocol = \"sctp\"\n", &[(K::BadEnum, 6, 12)]),
    case("bad address", "[image]\nfrom = \"debian\"\n[[ports]]\nhost = 1\nguest = 1\naddress = \"localhost\"\n", &[(K::BadAddress, 6, 11)]),
    // --- resources, network, shell --------------------------------------------------------------
    case("memory without number", "[image]\nfrom = \"debian\"\n[resources]\nmemory = \"GiB\"\n", &[(K::BadSize, 4, 10)]),
    case("memory unknown unit", "[image]\nfrom = \"debian\"\n[resources]\nmemory = \"2 gigs\"\n", &[(K::BadSize, 4, 10)]),
    case("memory zero", "[image]\nfrom = \"debian\"\n[resources]\nmemory = 0\n", &[(K::OutOfRange, 4, 10)]),
    case("memory a float", "[image]\nfrom = \"debian\"\n[resources]\nmemory = 1.5\n", &[(K::WrongType, 4, 10)]),
    case("cpus zero", "[image]\nfrom = \"debian\"\n[resources]\ncpus = 0\n", &[(K::OutOfRange, 4, 8)]),
    case("cpus nan", "[image]\nfrom = \"debian\"\n[resources]\ncpus = nan\n", &[(K::OutOfRange, 4, 8)]),
    case("cpus negative infinity", "[image]\nfrom = \"debian\"\n[resources]\ncpus = -inf\n", &[(K::OutOfRange, 4, 8)]),
    case("cpus a string", "[image]\nfrom = \"debian\"\n[resources]\ncpus = \"2\"\n", &[(K::WrongType, 4, 8)]),
    case("pids zero", "[image]\nfrom = \"debian\"\n[resources]\npids = 0\n", &[(K::OutOfRange, 4, 8)]),
    case("bad network mode", "[image]\nfrom = \"debian\"\n[network]\nmode = \"bridge\"\n", &[(K::BadEnum, 4, 8)]),
    case("empty shell command", "[image]\nfrom = \"debian\"\n[shell]\ncommand = []\n", &[(K::EmptyCommand, 4, 11)]),
    case("shell command empty program", "[image]\nfrom = \"debian\"\n[shell]\ncommand = [\"\", \"-l\"]\n", &[(K::EmptyCommand, 4, 12)]),
    case("relative workdir", "[image]\nfrom = \"debian\"\n[shell]\nworkdir = \"src\"\n", &[(K::RelativePath, 4, 11)]),
    case("bad user", "[image]\nfrom = \"debian\"\n[shell]\nuser = \"a b\"\n", &[(K::InvalidValue, 4, 8)]),
    // --- services -------------------------------------------------------------------------------
    case("service without command", "[image]\nfrom = \"debian\"\n[services.db]\nrestart = \"always\"\n", &[(K::MissingKey, 3, 1)]),
    case("service empty command", "[image]\nfrom = \"debian\"\n[services.db]\ncommand = \"\"\n", &[(K::EmptyCommand, 4, 11)]),
    case("bad restart", "[image]\nfrom = \"debian\"\n[services]\nweb = { command = [\"x\"], restart = \"unless-stopped\" }\n", &[(K::BadEnum, 4, 36)]),
    case("bad service name", "[image]\nfrom = \"debian\"\n[services.\"-db\"]\ncommand = [\"x\"]\n", &[(K::BadName, 3, 11)]),
    case("service not a table", "[image]\nfrom = \"debian\"\n[services]\ndb = \"postgres\"\n", &[(K::WrongType, 4, 6)]),
    case("service relative workdir", "[image]\nfrom = \"debian\"\n[services.db]\ncommand = [\"x\"]\nworkdir = \"data\"\n", &[(K::RelativePath, 5, 11)]),
    case("service env bad name", "[image]\nfrom = \"debian\"\n[services.db]\ncommand = [\"x\"]\nenv = { \"A B\" = \"1\" }\n", &[(K::BadEnvName, 5, 9)]),
    // --- vm -----------------------------------------------------------------------------------
    case("vm without backend", "[image]\nfrom = \"debian\"\n[vm]\nkernel = \"debian:linux-image-amd64\"\n", &[(K::VmWithoutBackend, 3, 1)]),
    case("backend vm without vm", "backend = \"vm\"\n[image]\nfrom = \"debian\"\n", &[(K::MissingKernel, 1, 11)]),
    case("vm without kernel", "backend = \"vm\"\n[image]\nfrom = \"debian\"\n[vm]\nvcpus = 2\n", &[(K::MissingKernel, 4, 1)]),
    case("kernel path missing", "backend = \"vm\"\n[image]\nfrom = \"debian\"\n[vm]\nkernel = \"./vmlinux\"\n", &[(K::PathNotFound, 5, 10)]),
    case("kernel unknown source", "backend = \"vm\"\n[image]\nfrom = \"debian\"\n[vm]\nkernel = \"ubuntu:linux-generic\"\n", &[(K::BadKernel, 5, 10)]),
    case("kernel bad package", "backend = \"vm\"\n[image]\nfrom = \"debian\"\n[vm]\nkernel = \"debian:\"\n", &[(K::BadKernel, 5, 10)]),
    case("vcpus zero", "backend = \"vm\"\n[image]\nfrom = \"debian\"\n[vm]\nkernel = \"debian:linux-image-amd64\"\nvcpus = 0\n", &[(K::OutOfRange, 6, 9)]),
    case("bad vmm", "backend = \"vm\"\n[image]\nfrom = \"debian\"\n[vm]\nkernel = \"debian:linux-image-amd64\"\nvmm = \"firecracker\"\n", &[(K::BadEnum, 6, 7)]),
    case("vm memory bad", "backend = \"vm\"\n[image]\nfrom = \"debian\"\n[vm]\nkernel = \"debian:linux-image-amd64\"\nmemory = \"1 GiBs\"\n", &[(K::BadSize, 6, 10)]),
    case("modules missing", "backend = \"vm\"\n[image]\nfrom = \"debian\"\n[vm]\nkernel = \"debian:linux-image-amd64\"\nmodules = \"./lib/modules/6.1.0\"\n", &[(K::PathNotFound, 6, 11)]),
    // --- characters and positions ----------------------------------------------------------------
    case("column counts characters", "[image]\nfrom = \"debian\"\n[env]\n\"ÄÖ-X\" = \"1\"\n[[mounts]]\nsource = \".\" # é\ntarget = \"é\"\n", &[(K::BadEnvName, 4, 1), (K::RelativePath, 7, 10)]),
    case("tabs and CRLF", "[image]\r\nfrom = \"debian\"\r\n[network]\r\n\tmode = \"bridged\"\r\n", &[(K::BadEnum, 4, 9)]),
    // --- sidecars (services with `image`) -------------------------------------------------------
    case("after names an unknown and a process service", "[image]\nfrom = \"debian\"\n[services.db]\nimage = \"redis:7\"\nafter = [\"cache\", \"web\"]\n[services.web]\ncommand = [\"./app\"]\n", &[(K::UnknownService, 5, 10), (K::UnknownService, 5, 19)]),
    case("sidecars waiting in a circle and on themselves", "[image]\nfrom = \"debian\"\n[services.a]\nimage = \"redis:7\"\nafter = [\"b\"]\n[services.b]\nimage = \"redis:7\"\nafter = [\"a\"]\n[services.c]\nimage = \"redis:7\"\nafter = [\"c\"]\n", &[(K::ServiceCycle, 8, 10), (K::ServiceCycle, 11, 10)]),
    case(
        "ready probes: a shared port, a bad timeout, two probes, none",
        "[image]\nfrom = \"debian\"\n[services]\na = { image = \"redis:7\", ready = { tcp = 6379 } }\nb = { image = \"redis:7\", ready = { tcp = 6379, timeout = \"30sec\" } }\nc = { image = \"redis:7\", ready = { tcp = 1, command = [\"true\"] } }\nd = { image = \"redis:7\", ready = { timeout = 0 } }\ne = { image = \"redis:7\", ready = { tcp = 70000 } }\n",
        &[
            (K::DuplicateServicePort, 5, 42),
            (K::BadDuration, 5, 58),
            (K::InvalidValue, 6, 36),
            (K::MissingKey, 7, 34),
            (K::OutOfRange, 7, 46),
            (K::BadPort, 8, 42),
        ],
    ),
    case(
        "sidecar keys on a process service, a sync mount and a bad image on a sidecar",
        "[image]\nfrom = \"debian\"\n[services.web]\ncommand = [\"./app\"]\nafter = [\"db\"]\nready = { tcp = 80 }\nmounts = [{ source = \"data\", target = \"/data\", type = \"volume\" }]\nresources = { pids = 10 }\n[services.db]\nimage = \"rootfs:./nope\"\nmounts = [{ source = \".\", target = \"/src\", type = \"sync\" }]\nresources = { memory = \"1XB\" }\n",
        &[
            (K::MisplacedKey, 5, 1),
            (K::MisplacedKey, 6, 1),
            (K::MisplacedKey, 7, 1),
            (K::MisplacedKey, 8, 1),
            (K::PathNotFound, 10, 9),
            (K::MisplacedKey, 11, 51),
            (K::BadSize, 12, 24),
        ],
    ),
    // --- many errors at once --------------------------------------------------------------------
    case(
        "every error is reported",
        "name = \"Bad Name\"\nbackend = \"vmm\"\n[imgae]\n[image]\nfrom = \"ubuntu:\"\n[[mounts]]\nsource = \"nope\"\ntarget = \"rel\"\n[[ports]]\nhost = 0\nguest = 70000\n[resources]\nmemory = \"1XB\"\ncpus = -1\n[vm]\nkernel = \"x\"\n",
        &[
            (K::BadName, 1, 8),
            (K::BadEnum, 2, 11),
            (K::UnknownKey, 3, 2),
            (K::BadImage, 5, 8),
            (K::PathNotFound, 7, 10),
            (K::RelativePath, 8, 10),
            (K::BadPort, 10, 8),
            (K::BadPort, 11, 9),
            (K::BadSize, 13, 10),
            (K::OutOfRange, 14, 8),
            // no vm-without-backend: that would repeat the bad `backend` value
            (K::PathNotFound, 16, 10),
        ],
    ),
];

/// A project folder with a `src/` folder and a `file.txt`, for path checks.
fn project() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("berth-bad-")
        .tempdir()
        .unwrap();
    std::fs::create_dir(dir.path().join("src")).unwrap();
    std::fs::write(dir.path().join("file.txt"), "x").unwrap();
    dir
}

fn errors_of(text: &[u8], dir: &Path) -> Vec<(K, usize, usize)> {
    match parse(text, &dir.join("berth.toml")) {
        Ok(_) => Vec::new(),
        Err(report) => report
            .diagnostics
            .iter()
            .filter(|d| d.severity == Severity::Error)
            .map(|d| (d.kind, d.line, d.column))
            .collect(),
    }
}

#[test]
fn every_bad_file_fails_with_exact_kinds_and_places() {
    assert!(CASES.len() >= 45, "the table needs at least 45 bad files");
    let dir = project();
    let mut failures = Vec::new();
    for c in CASES {
        let got = errors_of(c.text, dir.path());
        if got != c.errors {
            failures.push(format!(
                "{}:\n  expected {:?}\n  got      {:?}",
                c.name, c.errors, got
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} cases differ:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn the_table_covers_every_error_kind() {
    let covered: std::collections::BTreeSet<K> = CASES
        .iter()
        .flat_map(|c| c.errors.iter().map(|e| e.0))
        .collect();
    for kind in K::ALL {
        // Warnings and unreadable files are tested elsewhere.
        if matches!(kind, K::IgnoredSetting | K::Unreadable) {
            continue;
        }
        assert!(covered.contains(&kind), "no bad file produces {kind}");
    }
}

#[test]
fn every_diagnostic_renders_with_file_line_and_snippet() {
    for c in CASES {
        let report = parse(c.text, Path::new("conf/berth.toml")).unwrap_err();
        let text = report.render(false);
        for d in &report.diagnostics {
            assert!(
                text.contains(&format!("--> conf/berth.toml:{}:{}", d.line, d.column)),
                "{}: no location in\n{text}",
                c.name
            );
            assert!(
                text.contains(&format!("error[{}]", d.kind.code())),
                "{}",
                c.name
            );
            assert!(d.help.is_some(), "{}: {} has no help", c.name, d.kind);
        }
        assert!(text.contains('^'), "{}: no caret in\n{text}", c.name);
    }
}

/// Every key of the key table is really read and type-checked: a date-time (a type no key
/// accepts) in any key gives `wrong-type` on that key's line, never `unknown-key`.
#[test]
fn every_known_key_is_type_checked() {
    let dir = project();
    for spec in envfile_spec::keys::KEYS {
        let (table, leaf) = match spec.path.rsplit_once('.') {
            Some((t, l)) => (t.replace(".*", ".svc"), l),
            None => (String::new(), spec.path),
        };
        let header = match table.strip_suffix("[]") {
            Some(aot) => format!("[[{aot}]]\n"),
            None if table.is_empty() => String::new(),
            None => format!("[{table}]\n"),
        };
        let (top, rest) = if header.is_empty() {
            (format!("{leaf} = 1979-05-27T07:32:00Z\n"), String::new())
        } else {
            (
                String::new(),
                format!("{header}{leaf} = 1979-05-27T07:32:00Z\n"),
            )
        };
        let image = if spec.path == "image" || table == "image" {
            ""
        } else {
            "[image]\nfrom = \"debian\"\n"
        };
        let text = format!("{top}{image}{rest}");
        let line = text.lines().position(|l| l.contains("1979")).unwrap() + 1;
        let report = parse(text.as_bytes(), &dir.path().join("berth.toml")).expect_err(spec.path);
        assert!(
            report
                .diagnostics
                .iter()
                .any(|d| d.kind == K::WrongType && d.line == line),
            "{}: no wrong-type on line {line}:\n{}",
            spec.path,
            report.render(false)
        );
        assert!(
            !report.diagnostics.iter().any(|d| d.kind == K::UnknownKey),
            "{}: reported as unknown:\n{}",
            spec.path,
            report.render(false)
        );
    }
}
