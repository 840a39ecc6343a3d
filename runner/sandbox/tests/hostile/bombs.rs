//! Resource bombs. `bombs <case> <token>`; the token only makes the argv
//! unique so the test can look for leftover processes.
use std::io::Write;
use std::time::Duration;

extern "C" {
    fn fork() -> i32;
    fn setsid() -> i32;
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("forkbomb") => loop {
            // SAFETY: fork in a single-threaded program.
            let pid = unsafe { fork() };
            if pid < 0 {
                std::thread::sleep(Duration::from_millis(1));
            }
        },
        Some("threadbomb") => {
            let mut handles = Vec::new();
            for i in 0.. {
                match std::thread::Builder::new()
                    .stack_size(64 * 1024)
                    .spawn(|| std::thread::sleep(Duration::from_secs(1000)))
                {
                    Ok(h) => handles.push(h),
                    Err(e) => {
                        eprintln!("thread {i} failed: {e}");
                        std::process::exit(3);
                    }
                }
            }
        }
        Some("membomb") => {
            // Touch 16 MiB at a time; stop at 1 GiB so that a host without
            // a memory cgroup is not hurt (the test then sees a timeout).
            let mut keep: Vec<Vec<u8>> = Vec::new();
            for _ in 0..64 {
                keep.push(vec![7u8; 16 << 20]);
            }
            eprintln!("allocated {} chunks", keep.len());
            std::thread::sleep(Duration::from_secs(1000));
        }
        Some("spin") => {
            let mut x: u64 = 0;
            loop {
                x = std::hint::black_box(x.wrapping_add(1));
            }
        }
        Some("diskfill") => {
            // Stop by ourselves at 256 MiB in case the cap is a watchdog.
            let mut f = std::fs::File::create("/work/fill").expect("create");
            let chunk = vec![1u8; 1 << 20];
            for i in 0..256 {
                if let Err(e) = f.write_all(&chunk).and_then(|_| f.flush()) {
                    eprintln!("write {i} failed: {e}");
                    std::process::exit(1);
                }
            }
            std::thread::sleep(Duration::from_secs(1000));
        }
        Some("inodes") => {
            for i in 0..50_000 {
                if let Err(e) = std::fs::write(format!("/work/f{i}"), b"x") {
                    eprintln!("file {i} failed: {e}");
                    std::process::exit(1);
                }
            }
            std::thread::sleep(Duration::from_secs(1000));
        }
        Some("flood") => {
            let chunk = vec![b'x'; 64 * 1024];
            let mut out = std::io::stdout().lock();
            loop {
                if out.write_all(&chunk).is_err() {
                    std::process::exit(1);
                }
            }
        }
        Some("events") => {
            let mut out = std::io::stdout().lock();
            for i in 0u64.. {
                if writeln!(out, "{{\"event\":\"step\",\"step\":{i},\"loss\":0.5}}").is_err() {
                    std::process::exit(1);
                }
            }
        }
        Some("daemon") => {
            // Classic daemonisation: fork, setsid, fork again, parent exits.
            // SAFETY: fork/setsid in a single-threaded program.
            unsafe {
                if fork() == 0 {
                    setsid();
                    if fork() == 0 {
                        for i in 0u64.. {
                            let _ = std::fs::write("/work/heartbeat", i.to_string());
                            std::thread::sleep(Duration::from_millis(50));
                        }
                    }
                    std::process::exit(0);
                }
            }
            // Give the daemon time to start beating, then leave.
            std::thread::sleep(Duration::from_millis(300));
            println!("parent leaving");
        }
        Some("secret") => {
            // Job A of the cross-job test: hold a secret until told to stop.
            std::fs::write("/work/secret.txt", args[2].as_bytes()).expect("write secret");
            while std::fs::metadata("/work/stop").is_err() {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        other => {
            eprintln!("unknown case {other:?}");
            std::process::exit(2);
        }
    }
}
