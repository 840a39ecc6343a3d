//! Network probes. `net connect ADDR:PORT`, `net dns NAME`.
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("connect") => {
            let addr: SocketAddr = args[2].parse().expect("address");
            if !addr.ip().is_loopback() {
                // Never send a packet out: refuse to try if any IPv4 route
                // exists (the sandbox should have none).
                let routes = std::fs::read_to_string("/proc/net/route").unwrap_or_default();
                if routes.lines().skip(1).any(|l| !l.trim().is_empty()) {
                    println!("ROUTE_PRESENT");
                    std::process::exit(2);
                }
            }
            let start = Instant::now();
            match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
                Ok(_) => println!("CONNECTED"),
                Err(e) => {
                    println!(
                        "ERR {} {} {}",
                        e.raw_os_error().unwrap_or(-1),
                        start.elapsed().as_millis(),
                        e
                    );
                    std::process::exit(1);
                }
            }
        }
        Some("dns") => match (args[2].as_str(), 80).to_socket_addrs() {
            Ok(addrs) => println!("RESOLVED {:?}", addrs.collect::<Vec<_>>()),
            Err(e) => {
                println!("DNS_FAILED {e}");
                std::process::exit(1);
            }
        },
        Some("ifaces") => {
            println!(
                "{}",
                std::fs::read_to_string("/proc/net/dev").unwrap_or_default()
            );
        }
        other => {
            eprintln!("unknown case {other:?}");
            std::process::exit(2);
        }
    }
}
