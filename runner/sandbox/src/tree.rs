//! The job's process tree as seen from the host, for the watchdog's
//! memory and task caps when no cgroup enforces them.

use std::collections::HashMap;
use std::fs;

/// What the tree under one process uses right now.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TreeUsage {
    /// Processes plus their threads.
    pub(crate) tasks: u64,
    /// Anonymous resident memory (heap, stacks) plus shared memory, summed
    /// over the processes: what a memory bomb grows.
    pub(crate) anon_bytes: u64,
}

/// The parent pid in a `/proc/<pid>/stat` line (the field after the state,
/// which follows the last `)` since the command name may contain anything).
fn ppid_of(stat: &str) -> Option<i32> {
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// `key:   1234 kB` in /proc/<pid>/status.
fn status_field(status: &str, key: &str) -> Option<u64> {
    status.lines().find_map(|l| {
        let v = l.strip_prefix(key)?.strip_prefix(':')?;
        v.split_whitespace().next()?.parse().ok()
    })
}

/// Usage of `root` and all its descendants.
pub(crate) fn usage(root: i32) -> TreeUsage {
    let mut children: HashMap<i32, Vec<i32>> = HashMap::new();
    if let Ok(dir) = fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<i32>().ok())
            else {
                continue;
            };
            if let Some(ppid) = fs::read_to_string(entry.path().join("stat"))
                .ok()
                .as_deref()
                .and_then(ppid_of)
            {
                children.entry(ppid).or_default().push(pid);
            }
        }
    }
    let mut total = TreeUsage::default();
    let mut stack = vec![root];
    let mut seen = 0usize;
    while let Some(pid) = stack.pop() {
        seen += 1;
        if seen > 1_000_000 {
            break;
        }
        if let Ok(status) = fs::read_to_string(format!("/proc/{pid}/status")) {
            total.tasks += status_field(&status, "Threads").unwrap_or(1);
            let kib = status_field(&status, "RssAnon").unwrap_or(0)
                + status_field(&status, "RssShmem").unwrap_or(0);
            total.anon_bytes += kib * 1024;
        }
        if let Some(kids) = children.get(&pid) {
            stack.extend(kids);
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_and_status() {
        assert_eq!(ppid_of("42 (a) b) c) S 7 42 42 0"), Some(7));
        let status = "Name:\tx\nThreads:\t3\nRssAnon:\t  2048 kB\n";
        assert_eq!(status_field(status, "Threads"), Some(3));
        assert_eq!(status_field(status, "RssAnon"), Some(2048));
        assert_eq!(status_field(status, "RssFile"), None);
    }

    #[test]
    fn sees_a_child_and_its_memory() {
        let mut child = std::process::Command::new("/bin/sh")
            .args(["-c", "sleep 5"])
            .spawn()
            .expect("spawn");
        std::thread::sleep(std::time::Duration::from_millis(100));
        let me = usage(std::process::id() as i32);
        let _ = child.kill();
        let _ = child.wait();
        // this test thread's process (with its threads) plus sh (plus sleep)
        assert!(me.tasks >= 2, "{me:?}");
        assert!(me.anon_bytes > 0, "{me:?}");
    }
}
