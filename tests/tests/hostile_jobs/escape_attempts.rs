// Inserted by tests/tests/hostile_jobs.rs into the starter's `LoraLayer::new`,
// right after its rank check.
        // Snooping and escapes: none may succeed; the run goes on as the starter.
        assert!(std::fs::read("/proc/1/environ").map(|e| e.is_empty()).unwrap_or(true));
        assert!(std::net::TcpStream::connect("1.1.1.1:53").is_err());
        assert!(std::fs::write("/usr/pwned", b"x").is_err());
        assert!(std::fs::read_dir("/work/main").is_err());
