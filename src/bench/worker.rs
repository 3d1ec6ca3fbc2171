//! `steward bench-worker`: a minimal protocol worker, so that benchmarks measure steward
//! and not the worker. It answers every job at once with `done` (or after `sleep_ms` of
//! the payload), and can log when it started and when each job arrived. With
//! `STEWARD_BENCH_FLOOD=SECONDS` it instead writes invalid lines as fast as it can for
//! that long, never reading its socket (a hostile worker).

use std::io::{BufRead, BufReader, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub fn now_us() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros())
        .unwrap_or(0)
}

fn append(path: &str, line: &str) {
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        let _ = f.write_all(line.as_bytes());
    }
}

/// The id of a `job` line, found without parsing the whole object.
fn field_i64(line: &str, key: &str) -> Option<i64> {
    let start = line.find(key)? + key.len();
    // PostgreSQL gives payloads back with a space after each colon.
    let rest = line[start..].trim_start();
    let end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

pub fn run() -> Result<(), String> {
    if let Ok(path) = std::env::var("STEWARD_BENCH_START") {
        append(&path, &format!("{} {}\n", std::process::id(), now_us()));
    }
    let fd: i32 = std::env::var("STEWARD_FD")
        .ok()
        .and_then(|v| v.parse().ok())
        .ok_or("STEWARD_FD is not set: bench-worker is started by steward bench")?;
    // SAFETY: steward passed this descriptor to us for our exclusive use.
    let sock = std::os::unix::net::UnixStream::from(unsafe { OwnedFd::from_raw_fd(fd) });
    let mut out = sock.try_clone().map_err(|e| e.to_string())?;
    let recv_log = std::env::var("STEWARD_BENCH_RECV").ok();
    out.write_all(b"{\"type\":\"ready\"}\n")
        .map_err(|e| e.to_string())?;
    if let Some(secs) = std::env::var("STEWARD_BENCH_FLOOD")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        let chunk = b"this is not a protocol message\n".repeat(2048);
        let end = std::time::Instant::now() + Duration::from_secs(secs);
        while std::time::Instant::now() < end {
            out.write_all(&chunk).map_err(|e| e.to_string())?;
        }
        std::thread::sleep(Duration::from_secs(3600));
        return Ok(());
    }
    let mut reader = BufReader::with_capacity(64 * 1024, sock);
    let mut line = String::new();
    let mut pending = Vec::with_capacity(8192);
    loop {
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => return Ok(()),
            Ok(_) => {}
        }
        if !line.starts_with("{\"type\":\"job\"") {
            continue;
        }
        let Some(id) = field_i64(&line, "\"id\":") else {
            continue;
        };
        if let Some(path) = &recv_log {
            append(path, &format!("{id} {}\n", now_us()));
        }
        if let Some(ms) = field_i64(&line, "\"sleep_ms\":") {
            std::thread::sleep(Duration::from_millis(ms as u64));
        }
        pending.extend_from_slice(format!("{{\"type\":\"done\",\"id\":{id}}}\n").as_bytes());
        // Answer in one write when more jobs are already waiting in the buffer.
        if reader.buffer().is_empty() {
            out.write_all(&pending).map_err(|e| e.to_string())?;
            pending.clear();
        }
    }
}
