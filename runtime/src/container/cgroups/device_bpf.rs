//! cgroup v2 device control: an eBPF program of type `BPF_PROG_TYPE_CGROUP_DEVICE`, built by
//! hand from the allow rules and attached to the environment's cgroup with `bpf(2)`
//! (`BPF_CGROUP_DEVICE`, `BPF_F_ALLOW_MULTI`, so programs of parent cgroups still apply).
//! The kernel runs it on every open and mknod of a device node by a process in the cgroup:
//! it returns 1 (allow) for the first matching rule, else 0, which fails the call with EPERM.
//! The cgroup holds the program once attached; removing the cgroup releases it.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use crate::container::devices::{DeviceRule, DeviceType};
use crate::container::error::{ContainerError, Result};

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_ATTACH: libc::c_long = 8;
const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
const BPF_CGROUP_DEVICE: u32 = 6;
const BPF_F_ALLOW_MULTI: u32 = 2;

/// `bpf_cgroup_dev_ctx.access_type`: type in the low 16 bits, access in the high 16.
const BPF_DEVCG_DEV_BLOCK: i32 = 1;
const BPF_DEVCG_DEV_CHAR: i32 = 2;
const BPF_DEVCG_ACC_MKNOD: i32 = 1;
const BPF_DEVCG_ACC_READ: i32 = 2;
const BPF_DEVCG_ACC_WRITE: i32 = 4;

/// One `struct bpf_insn`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Insn {
    code: u8,
    /// dst in the low nibble, src in the high one.
    regs: u8,
    off: i16,
    imm: i32,
}

const fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: (src << 4) | dst,
        off,
        imm,
    }
}

// Opcodes: class | op | source.
const LDX_MEM_W: u8 = 0x61; // BPF_LDX | BPF_MEM | BPF_W
const ALU32_AND_K: u8 = 0x54; // BPF_ALU | BPF_AND | BPF_K
const ALU32_RSH_K: u8 = 0x74; // BPF_ALU | BPF_RSH | BPF_K
const ALU32_MOV_X: u8 = 0xbc; // BPF_ALU | BPF_MOV | BPF_X
const ALU64_MOV_K: u8 = 0xb7; // BPF_ALU64 | BPF_MOV | BPF_K
const JMP_JNE_K: u8 = 0x55; // BPF_JMP | BPF_JNE | BPF_K
const JMP_EXIT: u8 = 0x95; // BPF_JMP | BPF_EXIT

/// The program for `rules`: r2 = type, r3 = access, r4 = major, r5 = minor; per rule a block
/// of tests that jump past it on a mismatch, ending in "return 1"; "return 0" at the end.
pub fn program(rules: &[DeviceRule]) -> Vec<Insn> {
    let mut p = vec![
        insn(LDX_MEM_W, 2, 1, 0, 0),
        insn(ALU32_AND_K, 2, 0, 0, 0xffff),
        insn(LDX_MEM_W, 3, 1, 0, 0),
        insn(ALU32_RSH_K, 3, 0, 0, 16),
        insn(LDX_MEM_W, 4, 1, 4, 0),
        insn(LDX_MEM_W, 5, 1, 8, 0),
    ];
    for r in rules {
        let mut block: Vec<Insn> = Vec::new();
        let ty = match r.kind {
            DeviceType::Char => BPF_DEVCG_DEV_CHAR,
            DeviceType::Block => BPF_DEVCG_DEV_BLOCK,
        };
        // Each test is `if X != value goto end_of_block`; offsets are patched below.
        block.push(insn(JMP_JNE_K, 2, 0, 0, ty));
        let mut allowed = 0;
        for (on, bit) in [
            (r.access.mknod, BPF_DEVCG_ACC_MKNOD),
            (r.access.read, BPF_DEVCG_ACC_READ),
            (r.access.write, BPF_DEVCG_ACC_WRITE),
        ] {
            if on {
                allowed |= bit;
            }
        }
        // r1 = access & !allowed; any bit left means the rule does not cover this access.
        block.push(insn(ALU32_MOV_X, 1, 3, 0, 0));
        block.push(insn(ALU32_AND_K, 1, 0, 0, !allowed & 0x7));
        block.push(insn(JMP_JNE_K, 1, 0, 0, 0));
        if let Some(major) = r.major {
            block.push(insn(JMP_JNE_K, 4, 0, 0, major as i32));
        }
        if let Some(minor) = r.minor {
            block.push(insn(JMP_JNE_K, 5, 0, 0, minor as i32));
        }
        block.push(insn(ALU64_MOV_K, 0, 0, 0, 1));
        block.push(insn(JMP_EXIT, 0, 0, 0, 0));
        let len = block.len();
        for (i, ins) in block.iter_mut().enumerate() {
            if ins.code == JMP_JNE_K {
                // Jump to the first instruction after this block.
                ins.off = (len - i - 1) as i16;
            }
        }
        p.extend(block);
    }
    p.push(insn(ALU64_MOV_K, 0, 0, 0, 0));
    p.push(insn(JMP_EXIT, 0, 0, 0, 0));
    p
}

#[repr(C)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

#[repr(C)]
struct ProgAttachAttr {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
    replace_bpf_fd: u32,
}

/// Loads the program for `rules` and attaches it to the cgroup directory `dir`.
pub fn attach(dir: &Path, rules: &[DeviceRule]) -> Result<()> {
    let prog = load(&program(rules))?;
    let cg = std::fs::File::open(dir)
        .map_err(|e| ContainerError::path_io("cannot open cgroup", dir, e))?;
    let attr = ProgAttachAttr {
        target_fd: cg.as_raw_fd() as u32,
        attach_bpf_fd: prog.as_raw_fd() as u32,
        attach_type: BPF_CGROUP_DEVICE,
        attach_flags: BPF_F_ALLOW_MULTI,
        replace_bpf_fd: 0,
    };
    // SAFETY: bpf(BPF_PROG_ATTACH) with a correctly sized, fully initialized attr.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_ATTACH,
            &attr as *const ProgAttachAttr,
            std::mem::size_of::<ProgAttachAttr>(),
        )
    };
    if rc < 0 {
        return Err(ContainerError::io(
            format!(
                "cannot attach the device filter to cgroup {} (bpf BPF_PROG_ATTACH); berth needs root and a kernel with CONFIG_CGROUP_BPF",
                dir.display()
            ),
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}

/// Loads (and drops) the default program: whether this kernel and this process can filter
/// devices of cgroup v2 (`berth doctor`).
pub fn probe_load() -> Result<()> {
    load(&program(&crate::container::devices::DEFAULT_RULES)).map(drop)
}

fn load(insns: &[Insn]) -> Result<OwnedFd> {
    let license = CString::from(c"GPL");
    let mut log = vec![0u8; 64 * 1024];
    let mut name = [0u8; 16];
    name[..12].copy_from_slice(b"berth_device");
    let attr = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_CGROUP_DEVICE,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: 1,
        log_size: log.len() as u32,
        log_buf: log.as_mut_ptr() as u64,
        kern_version: 0,
        prog_flags: 0,
        prog_name: name,
        prog_ifindex: 0,
        expected_attach_type: BPF_CGROUP_DEVICE,
    };
    // SAFETY: bpf(BPF_PROG_LOAD) with pointers to live buffers (insns, license, log) that
    // outlive the call, and a correctly sized attr.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_LOAD,
            &attr as *const ProgLoadAttr,
            std::mem::size_of::<ProgLoadAttr>(),
        )
    };
    if fd < 0 {
        let err = std::io::Error::last_os_error();
        let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
        let verifier = String::from_utf8_lossy(&log[..end]);
        return Err(ContainerError::io(
            format!(
                "cannot load the device filter (bpf BPF_PROG_LOAD; needs root){}",
                if verifier.trim().is_empty() {
                    String::new()
                } else {
                    format!("; verifier: {}", verifier.trim())
                }
            ),
            err,
        ));
    }
    // SAFETY: a fresh fd from the kernel, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::container::devices::{Access, DEFAULT_RULES};

    #[test]
    fn program_blocks_jump_past_themselves() {
        let rule = DeviceRule {
            kind: DeviceType::Char,
            major: Some(10),
            minor: Some(232),
            access: Access::ALL,
        };
        let p = program(&[rule]);
        // 6 loads, then: type test, mov, and, access test, major, minor, mov 1, exit; mov 0, exit.
        assert_eq!(p.len(), 6 + 8 + 2);
        assert_eq!(p[6], insn(JMP_JNE_K, 2, 0, 6 + 1, BPF_DEVCG_DEV_CHAR));
        assert_eq!(p[8], insn(ALU32_AND_K, 1, 0, 0, 0));
        assert_eq!(p[10], insn(JMP_JNE_K, 4, 0, 3, 10));
        assert_eq!(p[11], insn(JMP_JNE_K, 5, 0, 2, 232));
        assert_eq!(p[12], insn(ALU64_MOV_K, 0, 0, 0, 1));
        assert_eq!(p[14], insn(ALU64_MOV_K, 0, 0, 0, 0));
        // mknod-only rules reject read and write bits; wildcards test nothing.
        let p = program(&DEFAULT_RULES[..1]);
        assert_eq!(p[8], insn(ALU32_AND_K, 1, 0, 0, 6));
        assert_eq!(p.len(), 6 + 6 + 2);
    }
}
