//! `[vm]`: the micro-VM backend's kernel, memory, vCPUs, VMM and modules, and its cross-checks
//! with `backend`.

use super::toml_readers::Tbl;
use super::{Checker, Span};
use crate::diagnostic::ErrorKind;
use crate::keys;
use crate::plan::*;

/// Default guest memory of a VM.
pub const DEFAULT_VM_MEMORY: u64 = 1 << 30;

/// Default number of vCPUs of a VM.
pub const DEFAULT_VM_VCPUS: u32 = 1;

/// Largest `vm.vcpus` accepted.
pub const MAX_VCPUS: i64 = 255;

impl Checker<'_> {
    pub(super) fn vm(
        &mut self,
        root: &Tbl<'_>,
        backend: BackendKind,
        backend_span: Option<Span>,
        backend_known: bool,
    ) -> Option<VmPlan> {
        let present = root.get("vm").is_some();
        let t = self.sub_table(root, "vm", "write `[vm]` with kernel = \"…\"");
        if present && backend != BackendKind::Vm && backend_known {
            let span = t
                .as_ref()
                .map_or_else(|| root.key_span("vm"), |t| t.span.clone());
            self.error(
                ErrorKind::VmWithoutBackend,
                span,
                "`[vm]` is set but the backend is not \"vm\"",
                Some("add backend = \"vm\" at the top of the file (before any [table]), or remove [vm]".into()),
            );
        }
        let kernel = match &t {
            Some(t) => match t.get("kernel") {
                Some((item, span)) => self
                    .non_empty_string(item, span.clone(), "vm.kernel")
                    .and_then(|k| self.kernel(&k, span)),
                None => {
                    if backend == BackendKind::Vm {
                        self.error(
                            ErrorKind::MissingKernel,
                            t.span.clone(),
                            "`[vm]` has no `kernel`",
                            Some("add kernel = \"debian:linux-image-cloud-amd64\" or the path of a vmlinux/bzImage".into()),
                        );
                    }
                    None
                }
            },
            None => {
                if backend == BackendKind::Vm && !present {
                    self.error(
                        ErrorKind::MissingKernel,
                        backend_span.unwrap_or(0..0),
                        "backend = \"vm\" needs a `[vm]` table with a `kernel`",
                        Some("add a `[vm]` table with kernel = \"debian:linux-image-cloud-amd64\" (or the path of a vmlinux/bzImage)".into()),
                    );
                }
                None
            }
        };
        let t = t?;
        let memory = match t.get("memory") {
            Some((item, span)) => self
                .size(item, span, "vm.memory")
                .unwrap_or(DEFAULT_VM_MEMORY),
            None => DEFAULT_VM_MEMORY,
        };
        let vcpus = match t.get("vcpus") {
            Some((item, span)) => match self.integer(item, span.clone(), "vm.vcpus") {
                Some(n) if (1..=MAX_VCPUS).contains(&n) => n as u32,
                Some(n) => {
                    self.error(
                        ErrorKind::OutOfRange,
                        span,
                        format!("`vm.vcpus` is {n}; it must be between 1 and {MAX_VCPUS}"),
                        Some("e.g. vcpus = 2".into()),
                    );
                    DEFAULT_VM_VCPUS
                }
                None => DEFAULT_VM_VCPUS,
            },
            None => DEFAULT_VM_VCPUS,
        };
        let vmm = match t.get("vmm") {
            Some((item, span)) => match self.enumeration(item, span, "vm.vmm", keys::VMMS) {
                Some("kvm") => VmmKind::Kvm,
                Some("qemu") => VmmKind::Qemu,
                _ => VmmKind::Auto,
            },
            None => VmmKind::Auto,
        };
        let modules = t.get("modules").and_then(|(item, span)| {
            let m = self.string(item, span.clone(), "vm.modules")?;
            self.existing_path(&m, span, "vm.modules", Some(true))
        });
        if backend != BackendKind::Vm {
            return None;
        }
        Some(VmPlan {
            kernel: kernel?,
            memory,
            vcpus,
            vmm,
            modules,
        })
    }

    pub(super) fn kernel(&mut self, k: &str, span: Span) -> Option<KernelSource> {
        if let Some(spec) = k.strip_prefix("debian:") {
            let (package, version) = match spec.split_once('=') {
                Some((p, v)) => (p, Some(v)),
                None => (spec, None),
            };
            let ok_pkg = package.len() >= 2
                && package.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
                && package
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+.-".contains(c));
            let ok_ver = version.is_none_or(|v| {
                !v.is_empty()
                    && v.chars()
                        .all(|c| c.is_ascii_alphanumeric() || ".+~:-".contains(c))
            });
            if !(ok_pkg && ok_ver) {
                self.error(
                    ErrorKind::BadKernel,
                    span,
                    format!("{k:?} does not name a Debian kernel package"),
                    Some("e.g. kernel = \"debian:linux-image-cloud-amd64\" or \"debian:linux-image-amd64=6.1.115-1\"".into()),
                );
                return None;
            }
            return Some(KernelSource::Debian {
                package: package.to_string(),
                version: version.map(str::to_string),
            });
        }
        if let Some((scheme, _)) = k.split_once(':') {
            if !scheme.is_empty() && scheme.chars().all(|c| c.is_ascii_alphanumeric()) {
                self.error(
                    ErrorKind::BadKernel,
                    span,
                    format!("unknown kernel source `{scheme}:`"),
                    Some("use kernel = \"debian:PACKAGE\" or the path of a kernel image".into()),
                );
                return None;
            }
        }
        self.existing_path(k, span, "vm.kernel", Some(false))
            .map(|path| KernelSource::Path { path })
    }
}
