//! The seccomp filter applied to the untrusted command (by bwrap, right before
//! it execs the command).
//!
//! Default action: allow. Denied calls fail with `EPERM` (not a kill, so
//! runtimes that probe for features degrade gracefully). `clone3` fails with
//! `ENOSYS`: its flags live in a struct the filter cannot read, so libc falls
//! back to `clone`, whose namespace flags the filter can see and refuses.
//! On x86_64, x32-ABI system call numbers fail with `ENOSYS` (they would
//! otherwise bypass rules keyed on the x86_64 numbers); any other
//! architecture (e.g. i386 via `int 0x80`) kills the process.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

use crate::SandboxError;

#[cfg(target_arch = "x86_64")]
const ARCH: TargetArch = TargetArch::x86_64;
#[cfg(target_arch = "aarch64")]
const ARCH: TargetArch = TargetArch::aarch64;

/// Namespace flags that `clone` may not use inside the sandbox.
const NAMESPACE_FLAGS: [libc::c_int; 7] = [
    libc::CLONE_NEWUSER,
    libc::CLONE_NEWNS,
    libc::CLONE_NEWNET,
    libc::CLONE_NEWPID,
    libc::CLONE_NEWIPC,
    libc::CLONE_NEWUTS,
    libc::CLONE_NEWCGROUP,
];

/// System calls that always fail with `EPERM` inside the sandbox.
fn denied_syscalls() -> Vec<libc::c_long> {
    let mut v = vec![
        libc::SYS_ptrace,
        libc::SYS_process_vm_readv,
        libc::SYS_process_vm_writev,
        libc::SYS_mount,
        libc::SYS_umount2,
        libc::SYS_pivot_root,
        libc::SYS_bpf,
        libc::SYS_perf_event_open,
        libc::SYS_userfaultfd,
        libc::SYS_keyctl,
        libc::SYS_add_key,
        libc::SYS_request_key,
        libc::SYS_unshare,
        libc::SYS_setns,
        libc::SYS_io_uring_setup,
        libc::SYS_io_uring_enter,
        libc::SYS_io_uring_register,
        libc::SYS_kexec_load,
        libc::SYS_kexec_file_load,
        libc::SYS_init_module,
        libc::SYS_finit_module,
        libc::SYS_delete_module,
        libc::SYS_reboot,
        libc::SYS_swapon,
        libc::SYS_swapoff,
        libc::SYS_acct,
        libc::SYS_open_by_handle_at,
        libc::SYS_name_to_handle_at,
        libc::SYS_lookup_dcookie,
        libc::SYS_syslog,
        libc::SYS_quotactl,
        libc::SYS_settimeofday,
        libc::SYS_clock_settime,
        libc::SYS_clock_adjtime,
        libc::SYS_vhangup,
        libc::SYS_fanotify_init,
        libc::SYS_move_mount,
        libc::SYS_fsopen,
        libc::SYS_fsmount,
        libc::SYS_fsconfig,
        libc::SYS_fspick,
        libc::SYS_open_tree,
        libc::SYS_mount_setattr,
        libc::SYS_pidfd_getfd,
    ];
    #[cfg(target_arch = "x86_64")]
    v.extend([libc::SYS_iopl, libc::SYS_ioperm, libc::SYS_uselib]);
    v
}

fn cond(arg: u8, op: SeccompCmpOp, value: u64) -> Result<SeccompCondition, SandboxError> {
    SeccompCondition::new(arg, SeccompCmpArgLen::Dword, op, value)
        .map_err(|e| SandboxError::Seccomp(e.to_string()))
}

fn rule(conditions: Vec<SeccompCondition>) -> Result<SeccompRule, SandboxError> {
    SeccompRule::new(conditions).map_err(|e| SandboxError::Seccomp(e.to_string()))
}

fn filter() -> Result<BpfProgram, SandboxError> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for nr in denied_syscalls() {
        rules.insert(nr, Vec::new()); // no conditions: always matches
    }
    // clone: refused when any namespace flag is set (rules are OR-ed).
    let mut clone_rules = Vec::new();
    for flag in NAMESPACE_FLAGS {
        let flag = u64::from(flag as u32);
        clone_rules.push(rule(vec![cond(0, SeccompCmpOp::MaskedEq(flag), flag)?])?);
    }
    rules.insert(libc::SYS_clone, clone_rules);
    // personality: only the default persona (0) and the query (0xffffffff).
    rules.insert(
        libc::SYS_personality,
        vec![rule(vec![
            cond(0, SeccompCmpOp::Ne, 0)?,
            cond(0, SeccompCmpOp::Ne, 0xffff_ffff)?,
        ])?],
    );
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        ARCH,
    )
    .map_err(|e| SandboxError::Seccomp(e.to_string()))?;
    let program: BpfProgram = filter
        .try_into()
        .map_err(|e: seccompiler::BackendError| SandboxError::Seccomp(e.to_string()))?;
    Ok(with_prefix(program))
}

const BPF_LD_W_ABS: u16 = 0x20;
const BPF_JMP_JEQ_K: u16 = 0x15;
#[cfg(target_arch = "x86_64")]
const BPF_JMP_JGE_K: u16 = 0x35;
const BPF_RET_K: u16 = 0x06;
const SECCOMP_RET_ERRNO: u32 = 0x0005_0000;
/// The length of seccompiler's architecture check (load arch, compare, kill).
const ARCH_CHECK_LEN: usize = 3;

fn insn(code: u16, jt: u8, jf: u8, k: u32) -> seccompiler::sock_filter {
    seccompiler::sock_filter { code, jt, jf, k }
}

/// Inserts, right after the architecture check, the rules seccompiler cannot
/// express: x32 numbers and `clone3` fail with `ENOSYS`. Jumps in BPF are
/// relative and forward, and the architecture check only jumps within itself,
/// so inserting here leaves every other jump valid.
fn with_prefix(program: BpfProgram) -> BpfProgram {
    let enosys = SECCOMP_RET_ERRNO | libc::ENOSYS as u32;
    let mut prefix = vec![insn(BPF_LD_W_ABS, 0, 0, 0)]; // seccomp_data.nr
    #[cfg(target_arch = "x86_64")]
    {
        const X32_SYSCALL_BIT: u32 = 0x4000_0000;
        prefix.push(insn(BPF_JMP_JGE_K, 0, 1, X32_SYSCALL_BIT));
        prefix.push(insn(BPF_RET_K, 0, 0, enosys));
    }
    prefix.push(insn(BPF_JMP_JEQ_K, 0, 1, libc::SYS_clone3 as u32));
    prefix.push(insn(BPF_RET_K, 0, 0, enosys));

    let split = ARCH_CHECK_LEN.min(program.len());
    let mut out = Vec::with_capacity(program.len() + prefix.len());
    out.extend_from_slice(&program[..split]);
    out.extend(prefix);
    out.extend_from_slice(&program[split..]);
    out
}

/// The filter as raw BPF bytes (`struct sock_filter[]` in native byte order),
/// the format `bwrap --seccomp FD` reads.
pub fn seccomp_program() -> Result<Vec<u8>, SandboxError> {
    let program = filter()?;
    let mut bytes = Vec::with_capacity(program.len() * 8);
    for i in &program {
        bytes.extend_from_slice(&i.code.to_ne_bytes());
        bytes.push(i.jt);
        bytes.push(i.jf);
        bytes.extend_from_slice(&i.k.to_ne_bytes());
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn program_is_whole_instructions_and_starts_with_the_arch_check() {
        let bytes = seccomp_program().expect("filter builds");
        assert_eq!(bytes.len() % 8, 0);
        assert!(bytes.len() / 8 < 4096, "BPF_MAXINSNS");
        // ld [4] (seccomp_data.arch)
        assert_eq!(u16::from_ne_bytes([bytes[0], bytes[1]]), BPF_LD_W_ABS);
        assert_eq!(
            u32::from_ne_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]),
            4
        );
        // then our prefix loads the syscall number
        assert_eq!(u16::from_ne_bytes([bytes[24], bytes[25]]), BPF_LD_W_ABS);
    }

    #[test]
    fn every_listed_syscall_is_in_the_filter() {
        let program = filter().expect("filter builds");
        for nr in denied_syscalls().into_iter().chain([
            libc::SYS_clone,
            libc::SYS_clone3,
            libc::SYS_personality,
        ]) {
            assert!(
                program
                    .iter()
                    .any(|i| i.code == BPF_JMP_JEQ_K && i64::from(i.k) == nr),
                "syscall {nr} missing"
            );
        }
    }
}
