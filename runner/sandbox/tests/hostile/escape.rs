//! Escape attempts. Each prints one result line per attempt.
use std::ffi::CString;
use std::os::raw::{c_char, c_int, c_long, c_ulong, c_void};

extern "C" {
    fn fork() -> c_int;
    fn ptrace(request: c_int, pid: c_int, addr: *mut c_void, data: *mut c_void) -> c_long;
    fn unshare(flags: c_int) -> c_int;
    fn mount(
        src: *const c_char,
        target: *const c_char,
        fstype: *const c_char,
        flags: c_ulong,
        data: *const c_void,
    ) -> c_int;
    fn syscall(n: c_long, ...) -> c_long;
    fn personality(persona: c_ulong) -> c_int;
    fn kill(pid: c_int, sig: c_int) -> c_int;
    fn pause() -> c_int;
}

#[cfg(target_arch = "x86_64")]
const SYS_CLONE: c_long = 56;
#[cfg(target_arch = "x86_64")]
const SYS_CLONE3: c_long = 435;
#[cfg(target_arch = "aarch64")]
const SYS_CLONE: c_long = 220;
#[cfg(target_arch = "aarch64")]
const SYS_CLONE3: c_long = 435;

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(-1)
}

fn report(what: &str, rc: i64) {
    if rc < 0 {
        println!("{what} DENIED {}", errno());
    } else {
        println!("{what} ALLOWED {rc}");
    }
}

fn walk_proc_for(needle: &[u8]) -> (usize, Vec<String>) {
    let mut read = 0;
    let mut found = Vec::new();
    let mut files = vec!["/proc/self/environ".to_string()];
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.chars().all(|c| c.is_ascii_digit()) {
                for f in ["environ", "cmdline"] {
                    files.push(format!("/proc/{name}/{f}"));
                }
                if let Ok(tasks) = std::fs::read_dir(format!("/proc/{name}/task")) {
                    for t in tasks.flatten() {
                        files.push(format!(
                            "/proc/{name}/task/{}/environ",
                            t.file_name().to_string_lossy()
                        ));
                    }
                }
            }
        }
    }
    for f in files {
        if let Ok(bytes) = std::fs::read(&f) {
            read += 1;
            if bytes.windows(needle.len()).any(|w| w == needle) {
                found.push(f);
            }
        }
    }
    (read, found)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("environ") => {
            let needle: String = args[2].chars().rev().collect();
            let needle = needle.as_bytes();
            let pid1 = std::fs::read("/proc/1/environ");
            println!(
                "PID1_ENVIRON {:?}",
                pid1.map(|b| b.len()).map_err(|e| e.to_string())
            );
            let cmdline = std::fs::read("/proc/1/cmdline").unwrap_or_default();
            let cmdline: String = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            println!("PID1_CMDLINE {}", cmdline.trim());
            let (read, found) = walk_proc_for(needle);
            if found.is_empty() {
                println!("CLEAN {read}");
            } else {
                println!("FOUND {found:?}");
            }
        }
        Some("readother") => {
            // args: host path of the other job's secret, its host pid
            let host_path = &args[2];
            let other_pid = &args[3];
            let mut tries = vec![
                host_path.clone(),
                format!("/proc/{other_pid}/root/work/secret.txt"),
                format!("/proc/{other_pid}/cwd/secret.txt"),
                "/work/secret.txt".to_string(),
            ];
            if let Ok(dir) = std::fs::read_dir("/proc") {
                for e in dir.flatten() {
                    let name = e.file_name().to_string_lossy().into_owned();
                    if name.chars().all(|c| c.is_ascii_digit()) {
                        tries.push(format!("/proc/{name}/root/work/secret.txt"));
                        tries.push(format!("/proc/{name}/root{host_path}"));
                    }
                }
            }
            let mut got = false;
            for t in tries {
                if let Ok(s) = std::fs::read_to_string(&t) {
                    println!("READ {t} {s}");
                    got = true;
                }
            }
            if !got {
                println!("NOTHING");
            }
        }
        Some("writeout") => {
            let token = &args[2];
            for path in [
                format!("/usr/sanhak-escape-{token}"),
                format!("/usr/bin/sanhak-escape-{token}"),
                format!("/tmp/sanhak-escape-{token}"),
                format!("/work/sanhak-escape-{token}"),
                format!("/sanhak-escape-{token}"),
                format!("/proc/sanhak-escape-{token}"),
                format!("/dev/sanhak-escape-{token}"),
                format!("/dev/shm/sanhak-escape-{token}"),
            ] {
                match std::fs::write(&path, b"escaped") {
                    Ok(()) => println!("WROTE {path}"),
                    Err(e) => println!("FAILED {path} {}", e.raw_os_error().unwrap_or(-1)),
                }
            }
        }
        Some("ptrace") => {
            // SAFETY: plain syscalls; the child only pauses.
            unsafe {
                report(
                    "TRACEME",
                    ptrace(0, 0, std::ptr::null_mut(), std::ptr::null_mut()),
                );
                let child = fork();
                if child == 0 {
                    pause();
                    std::process::exit(0);
                }
                report(
                    "ATTACH",
                    ptrace(16, child, std::ptr::null_mut(), std::ptr::null_mut()),
                );
                kill(child, 9);
            }
        }
        Some("namespaces") => {
            // SAFETY: plain syscalls that should all fail.
            unsafe {
                report("UNSHARE_USER", unshare(0x1000_0000).into());
                report("UNSHARE_NET", unshare(0x4000_0000).into());
                let rc = syscall(SYS_CLONE, 0x1000_0000 | 17, 0, 0, 0, 0);
                if rc == 0 {
                    std::process::exit(0);
                }
                report("CLONE_NEWUSER", rc);
                let mut clone_args = [0u64; 11];
                clone_args[0] = 0x1000_0000; // flags: CLONE_NEWUSER
                clone_args[4] = 17; // exit_signal: SIGCHLD
                let rc = syscall(SYS_CLONE3, clone_args.as_mut_ptr(), 88usize);
                if rc == 0 {
                    std::process::exit(0);
                }
                report("CLONE3", rc);
                report("PERSONALITY", personality(0x0040000).into()); // ADDR_NO_RANDOMIZE
                let src = CString::new("none").expect("cstring");
                let target = CString::new("/tmp").expect("cstring");
                let fstype = CString::new("tmpfs").expect("cstring");
                report(
                    "MOUNT",
                    mount(
                        src.as_ptr(),
                        target.as_ptr(),
                        fstype.as_ptr(),
                        0,
                        std::ptr::null(),
                    )
                    .into(),
                );
            }
            // An ordinary thread (clone without namespace flags) still works.
            let ok = std::thread::spawn(|| 42).join().unwrap_or(0);
            println!("THREAD {ok}");
        }
        other => {
            eprintln!("unknown case {other:?}");
            std::process::exit(2);
        }
    }
}
