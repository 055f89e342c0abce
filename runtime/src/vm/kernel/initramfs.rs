//! berth's initramfs: a gzip'd newc cpio holding the static agent as `/init`, the kernel
//! modules berth needs (virtio-mmio, virtio-blk, virtio-console, ... with their dependencies
//! from modules.dep) and `/berth/modules`, the order the agent loads them in.

use std::collections::{BTreeMap, HashSet};
use std::io::{Read, Write};
use std::path::Path;

use super::KernelError;

/// Modules the guest needs when they are not built in, in the order wanted.
pub const WANTED_MODULES: &[&str] = &[
    "virtio_mmio",
    "virtio_pci",
    "virtio_blk",
    "virtio_console",
    "ext4",
    "virtio_net",
    "vmw_vsock_virtio_transport",
    // Shared folders (virtio-fs).
    "fuse",
    "virtiofs",
];

/// A newc cpio archive being written.
pub struct CpioWriter<W: Write> {
    out: W,
    ino: u32,
    written: u64,
}

impl<W: Write> CpioWriter<W> {
    pub fn new(out: W) -> Self {
        CpioWriter {
            out,
            ino: 1,
            written: 0,
        }
    }

    fn header(
        &mut self,
        name: &str,
        mode: u32,
        size: u32,
        rdev: (u32, u32),
    ) -> std::io::Result<()> {
        let namesize = name.len() + 1;
        let hdr = format!(
            "070701{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
            self.ino, mode, 0, 0, 1, 0, size, 0, 0, rdev.0, rdev.1, namesize, 0
        );
        self.ino += 1;
        self.raw(hdr.as_bytes())?;
        self.raw(name.as_bytes())?;
        self.raw(&[0])?;
        self.pad()
    }

    fn raw(&mut self, b: &[u8]) -> std::io::Result<()> {
        self.out.write_all(b)?;
        self.written += b.len() as u64;
        Ok(())
    }

    fn pad(&mut self) -> std::io::Result<()> {
        let n = (4 - (self.written % 4) as usize) % 4;
        self.raw(&[0u8; 3][..n])
    }

    pub fn dir(&mut self, name: &str) -> std::io::Result<()> {
        self.header(name, 0o040755, 0, (0, 0))
    }

    pub fn file(&mut self, name: &str, mode: u32, data: &[u8]) -> std::io::Result<()> {
        let size = u32::try_from(data.len())
            .map_err(|_| std::io::Error::other("file too large for cpio"))?;
        self.header(name, 0o100000 | mode, size, (0, 0))?;
        self.raw(data)?;
        self.pad()
    }

    pub fn char_device(
        &mut self,
        name: &str,
        mode: u32,
        major: u32,
        minor: u32,
    ) -> std::io::Result<()> {
        self.header(name, 0o020000 | mode, 0, (major, minor))
    }

    pub fn finish(mut self) -> std::io::Result<W> {
        self.header("TRAILER!!!", 0, 0, (0, 0))?;
        Ok(self.out)
    }
}

/// modules.dep: module path → its dependencies (paths relative to the modules folder).
pub fn parse_modules_dep(text: &str) -> BTreeMap<String, Vec<String>> {
    text.lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(m, deps)| {
            (
                m.trim().to_string(),
                deps.split_whitespace().map(String::from).collect(),
            )
        })
        .collect()
}

/// `kernel/drivers/virtio/virtio_mmio.ko.xz` → `virtio_mmio` (dashes normalized).
pub fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let base = file.split(".ko").next().unwrap_or(file);
    base.replace('-', "_")
}

/// Paths of the wanted modules and their dependencies, dependencies first. Modules missing
/// from modules.dep are built in (or absent) and skipped.
pub fn modules_load_order(dep: &BTreeMap<String, Vec<String>>, wanted: &[&str]) -> Vec<String> {
    let by_name: BTreeMap<String, &String> = dep.keys().map(|p| (module_name(p), p)).collect();
    let mut order = Vec::new();
    let mut seen = HashSet::new();
    fn visit(
        p: &str,
        dep: &BTreeMap<String, Vec<String>>,
        seen: &mut HashSet<String>,
        order: &mut Vec<String>,
    ) {
        if !seen.insert(p.to_string()) {
            return;
        }
        // modules.dep lists the full closure, the module needed last first; load in reverse.
        for d in dep.get(p).into_iter().flatten().rev() {
            visit(d, dep, seen, order);
        }
        order.push(p.to_string());
    }
    for w in wanted {
        if let Some(p) = by_name.get(&w.replace('-', "_")) {
            visit(p, dep, &mut seen, &mut order);
        }
    }
    order
}

/// The `depends=` list of a module's `.modinfo` ELF section (Debian's packages ship no
/// modules.dep: depmod makes it at install time).
pub fn modinfo_depends(elf: &[u8]) -> Option<Vec<String>> {
    let u16_at = |o: usize| elf.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u64_at = |o: usize| {
        elf.get(o..o + 8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
    };
    if elf.get(0..4)? != b"\x7fELF" || elf.get(4)? != &2 || elf.get(5)? != &1 {
        return None;
    }
    let shoff = usize::try_from(u64_at(0x28)?).ok()?;
    let shentsize = usize::from(u16_at(0x3a)?);
    let shnum = usize::from(u16_at(0x3c)?);
    let shstrndx = usize::from(u16_at(0x3e)?);
    let section = |i: usize| -> Option<(u32, usize, usize)> {
        let base = shoff.checked_add(i.checked_mul(shentsize)?)?;
        let name = u32::from_le_bytes(elf.get(base..base + 4)?.try_into().ok()?);
        let off = usize::try_from(u64_at(base + 0x18)?).ok()?;
        let size = usize::try_from(u64_at(base + 0x20)?).ok()?;
        Some((name, off, size))
    };
    let (_, str_off, str_size) = section(shstrndx)?;
    let names = elf.get(str_off..str_off.checked_add(str_size)?)?;
    for i in 0..shnum {
        let (name, off, size) = section(i)?;
        let n = names.get(name as usize..)?;
        let n = &n[..n.iter().position(|&b| b == 0)?];
        if n == b".modinfo" {
            let data = elf.get(off..off.checked_add(size)?)?;
            for field in data.split(|&b| b == 0) {
                if let Some(d) = field.strip_prefix(b"depends=") {
                    let d = String::from_utf8_lossy(d);
                    return Some(
                        d.split(',')
                            .filter(|x| !x.is_empty())
                            .map(|x| x.replace('-', "_"))
                            .collect(),
                    );
                }
            }
            return Some(Vec::new());
        }
    }
    None
}

/// Builds the modules.dep map from the modules' own `.modinfo` for the wanted modules and
/// their dependencies.
fn modules_dep_from_modinfo(
    mdir: &Path,
    wanted: &[&str],
) -> Result<BTreeMap<String, Vec<String>>, KernelError> {
    fn walk(dir: &Path, root: &Path, out: &mut BTreeMap<String, String>) {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, root, out);
            } else if p.to_string_lossy().contains(".ko") {
                if let Ok(rel) = p.strip_prefix(root) {
                    let rel = rel.to_string_lossy().to_string();
                    out.insert(module_name(&rel), rel);
                }
            }
        }
    }
    let mut paths = BTreeMap::new();
    walk(mdir, mdir, &mut paths);
    let mut dep: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut todo: Vec<String> = wanted.iter().map(|w| w.replace('-', "_")).collect();
    // Direct dependencies per module path.
    let mut direct: BTreeMap<String, Vec<String>> = BTreeMap::new();
    while let Some(name) = todo.pop() {
        let Some(rel) = paths.get(&name) else {
            continue;
        };
        if direct.contains_key(rel) {
            continue;
        }
        let deps = modinfo_depends(&read_module(&mdir.join(rel))?).unwrap_or_default();
        let dep_paths: Vec<String> = deps.iter().filter_map(|d| paths.get(d).cloned()).collect();
        todo.extend(deps);
        direct.insert(rel.clone(), dep_paths);
    }
    // modules.dep style: the full closure, the one needed last first.
    for m in direct.keys() {
        let mut closure = Vec::new();
        let mut stack = direct[m].clone();
        while let Some(d) = stack.pop() {
            if !closure.contains(&d) {
                stack.extend(direct.get(&d).cloned().unwrap_or_default());
                closure.push(d);
            }
        }
        dep.insert(m.clone(), closure);
    }
    Ok(dep)
}

/// The files (relative to the modules folder `mdir`) of the `wanted` modules and their
/// dependencies, in load order: from modules.dep when the folder has one, else from the
/// modules' own `.modinfo`. Wanted modules the folder lacks are built in (or absent) and skipped.
pub fn resolve_modules(mdir: &Path, wanted: &[&str]) -> Result<Vec<String>, KernelError> {
    let dep = match std::fs::read_to_string(mdir.join("modules.dep")) {
        Ok(text) => parse_modules_dep(&text),
        Err(_) => modules_dep_from_modinfo(mdir, wanted)?,
    };
    Ok(modules_load_order(&dep, wanted))
}

/// A module file's bytes, decompressed (`.ko.xz`, `.ko.zst`, `.ko.gz`) as `insmod` needs them.
pub fn read_module(path: &Path) -> Result<Vec<u8>, KernelError> {
    let raw = std::fs::read(path).map_err(|e| KernelError::Io {
        path: path.to_path_buf(),
        source: e,
    })?;
    let name = path.to_string_lossy();
    let mut out = Vec::new();
    let r = if name.ends_with(".xz") {
        xz2::read::XzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .map(drop)
    } else if name.ends_with(".zst") {
        zstd::stream::read::Decoder::new(&raw[..])
            .and_then(|mut d| d.read_to_end(&mut out))
            .map(drop)
    } else if name.ends_with(".gz") {
        flate2::read::GzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .map(drop)
    } else {
        return Ok(raw);
    };
    r.map_err(|e| KernelError::Io {
        path: path.to_path_buf(),
        source: e,
    })?;
    Ok(out)
}

/// Writes the initramfs (gzip'd cpio) to `out_path`.
pub fn build_initramfs(
    agent: &Path,
    modules_dir: Option<&Path>,
    out_path: &Path,
) -> Result<(), KernelError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |e| KernelError::Io { path, source: e }
    };
    let agent_bytes = std::fs::read(agent).map_err(io(agent))?;
    let file = std::fs::File::create(out_path).map_err(io(out_path))?;
    let gz =
        flate2::write::GzEncoder::new(std::io::BufWriter::new(file), flate2::Compression::fast());
    let mut cpio = CpioWriter::new(gz);
    let mut write = || -> std::io::Result<Vec<String>> {
        for d in [
            "dev",
            "proc",
            "sys",
            "run",
            "tmp",
            "newroot",
            "berth",
            "lib",
            "lib/modules",
        ] {
            cpio.dir(d)?;
        }
        cpio.char_device("dev/console", 0o600, 5, 1)?;
        cpio.char_device("dev/null", 0o666, 1, 3)?;
        cpio.file("init", 0o755, &agent_bytes)?;
        let mut list = Vec::new();
        if let Some(mdir) = modules_dir {
            let order = resolve_modules(mdir, WANTED_MODULES)
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            for (i, rel) in order.iter().enumerate() {
                let data = read_module(&mdir.join(rel))
                    .map_err(|e| std::io::Error::other(e.to_string()))?;
                let name = format!("lib/modules/{:02}-{}.ko", i, module_name(rel));
                cpio.file(&name, 0o644, &data)?;
                list.push(format!("/{name}"));
            }
        }
        cpio.file("berth/modules", 0o644, list.join("\n").as_bytes())?;
        Ok(list)
    };
    write().map_err(io(out_path))?;
    let gz = cpio.finish().map_err(io(out_path))?;
    let mut buf = gz.finish().map_err(io(out_path))?;
    buf.flush().map_err(io(out_path))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEP: &str = "kernel/drivers/block/virtio_blk.ko.xz: kernel/drivers/virtio/virtio_ring.ko.xz kernel/drivers/virtio/virtio.ko.xz\n\
kernel/drivers/virtio/virtio_mmio.ko.xz: kernel/drivers/virtio/virtio_ring.ko.xz kernel/drivers/virtio/virtio.ko.xz\n\
kernel/drivers/virtio/virtio_ring.ko.xz: kernel/drivers/virtio/virtio.ko.xz\n\
kernel/drivers/virtio/virtio.ko.xz:\n\
kernel/drivers/char/virtio_console.ko.xz: kernel/drivers/virtio/virtio_ring.ko.xz kernel/drivers/virtio/virtio.ko.xz\n\
kernel/sound/other.ko.xz:\n";

    #[test]
    fn load_order_puts_dependencies_first_once() {
        let order = modules_load_order(&parse_modules_dep(DEP), WANTED_MODULES);
        let names: Vec<String> = order.iter().map(|p| module_name(p)).collect();
        assert_eq!(
            names,
            vec![
                "virtio",
                "virtio_ring",
                "virtio_mmio",
                "virtio_blk",
                "virtio_console"
            ]
        );
    }

    /// A minimal ELF64 with a section-name table and a `.modinfo` section.
    fn fake_module(modinfo: &[u8]) -> Vec<u8> {
        let shstr = b"\0.shstrtab\0.modinfo\0";
        let mut elf = vec![0u8; 64];
        elf[0..4].copy_from_slice(b"\x7fELF");
        elf[4] = 2;
        elf[5] = 1;
        let shstr_off = elf.len();
        elf.extend_from_slice(shstr);
        let modinfo_off = elf.len();
        elf.extend_from_slice(modinfo);
        let shoff = elf.len();
        let mut section = |name: u32, off: usize, size: usize| {
            let mut sh = [0u8; 64];
            sh[0..4].copy_from_slice(&name.to_le_bytes());
            sh[0x18..0x20].copy_from_slice(&(off as u64).to_le_bytes());
            sh[0x20..0x28].copy_from_slice(&(size as u64).to_le_bytes());
            elf.extend_from_slice(&sh);
        };
        section(0, 0, 0);
        section(1, shstr_off, shstr.len());
        section(11, modinfo_off, modinfo.len());
        elf[0x28..0x30].copy_from_slice(&(shoff as u64).to_le_bytes());
        elf[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes());
        elf[0x3c..0x3e].copy_from_slice(&3u16.to_le_bytes());
        elf[0x3e..0x40].copy_from_slice(&1u16.to_le_bytes());
        elf
    }

    #[test]
    fn modinfo_depends_from_elf() {
        let m = fake_module(b"license=GPL\0depends=virtio,virtio-ring\0name=virtio_blk\0");
        assert_eq!(
            modinfo_depends(&m),
            Some(vec!["virtio".to_string(), "virtio_ring".to_string()])
        );
        let none = fake_module(b"depends=\0");
        assert_eq!(modinfo_depends(&none), Some(vec![]));
        assert_eq!(modinfo_depends(b"not an elf"), None);
        for cut in 0..m.len() {
            let _ = modinfo_depends(&m[..cut]);
        }
    }

    #[test]
    fn dependencies_without_modules_dep() {
        let d = tempfile::tempdir().unwrap();
        let virtio = d.path().join("kernel/drivers/virtio");
        std::fs::create_dir_all(&virtio).unwrap();
        std::fs::write(virtio.join("virtio.ko"), fake_module(b"depends=\0")).unwrap();
        std::fs::write(
            virtio.join("virtio_ring.ko"),
            fake_module(b"depends=virtio\0"),
        )
        .unwrap();
        std::fs::write(
            virtio.join("virtio_mmio.ko"),
            fake_module(b"depends=virtio_ring,virtio\0"),
        )
        .unwrap();
        let dep = modules_dep_from_modinfo(d.path(), &["virtio_mmio", "not_there"]).unwrap();
        let order = modules_load_order(&dep, &["virtio_mmio"]);
        let names: Vec<String> = order.iter().map(|p| module_name(p)).collect();
        assert_eq!(names, vec!["virtio", "virtio_ring", "virtio_mmio"]);
    }

    #[test]
    fn cpio_layout_is_newc() {
        let mut w = CpioWriter::new(Vec::new());
        w.dir("dev").unwrap();
        w.file("init", 0o755, b"abc").unwrap();
        let out = w.finish().unwrap();
        assert!(out.starts_with(b"070701"));
        assert_eq!(out.len() % 4, 0);
        // Second header starts 4-byte aligned after "dev\0" and its padding.
        let second = out.windows(6).skip(1).position(|w| w == b"070701").unwrap() + 1;
        assert_eq!(second % 4, 0);
        let hdr = std::str::from_utf8(&out[second..second + 110]).unwrap();
        assert_eq!(u32::from_str_radix(&hdr[14..22], 16).unwrap(), 0o100755);
        assert_eq!(u32::from_str_radix(&hdr[54..62], 16).unwrap(), 3);
        assert!(out.windows(10).any(|w| w == b"TRAILER!!!"));
    }

    #[test]
    fn builds_an_initramfs_that_cpio_lists() {
        let dir = tempfile::tempdir().unwrap();
        let agent = dir.path().join("agent");
        std::fs::write(&agent, b"\x7fELF-agent").unwrap();
        let mods = dir.path().join("modules");
        std::fs::create_dir_all(mods.join("kernel/drivers/virtio")).unwrap();
        std::fs::write(
            mods.join("modules.dep"),
            "kernel/drivers/virtio/virtio_mmio.ko:\n",
        )
        .unwrap();
        std::fs::write(mods.join("kernel/drivers/virtio/virtio_mmio.ko"), b"MODULE").unwrap();
        let out = dir.path().join("initrd.gz");
        build_initramfs(&agent, Some(&mods), &out).unwrap();
        let mut cpio = Vec::new();
        flate2::read::GzDecoder::new(std::fs::File::open(&out).unwrap())
            .read_to_end(&mut cpio)
            .unwrap();
        let text = String::from_utf8_lossy(&cpio);
        assert!(text.contains("init\0"));
        assert!(text.contains("lib/modules/00-virtio_mmio.ko"));
        assert!(
            text.contains("/lib/modules/00-virtio_mmio.ko"),
            "module list"
        );
        assert!(text.contains("dev/console"));
        if std::process::Command::new("cpio")
            .arg("--version")
            .output()
            .is_ok()
        {
            let listed = std::process::Command::new("sh")
                .arg("-c")
                .arg(format!("zcat {} | cpio -t 2>/dev/null", out.display()))
                .output()
                .unwrap();
            let names = String::from_utf8_lossy(&listed.stdout);
            assert!(names.lines().any(|l| l == "init"), "{names}");
            assert!(names.lines().any(|l| l == "berth/modules"), "{names}");
        }
    }
}
