//! Machine description and memory readings for reports.

use serde::{Deserialize, Serialize};

/// What a run was measured on, so numbers from different machines are not compared blindly.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Machine {
    /// CPU model name from /proc/cpuinfo.
    pub cpu: String,
    /// Logical CPUs available to the process.
    pub cores: usize,
    /// Physical memory in GiB.
    pub ram_gib: f64,
    /// Operating system and architecture.
    pub os: String,
    /// 1, 5 and 15 minute load averages when the run started: other jobs on the machine.
    pub load_avg: Vec<f64>,
}

impl Machine {
    /// Reads the current machine.
    pub fn detect() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split(':').nth(1))
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|| "unknown".into());
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let ram_kib = kib_field(&meminfo, "MemTotal:").unwrap_or(0);
        let load_avg = std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .split_whitespace()
            .take(3)
            .filter_map(|s| s.parse().ok())
            .collect();
        Machine {
            cpu,
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            ram_gib: ram_kib as f64 / (1024.0 * 1024.0),
            os: format!("{} {}", std::env::consts::OS, std::env::consts::ARCH),
            load_avg,
        }
    }
}

fn kib_field(text: &str, key: &str) -> Option<u64> {
    text.lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

/// Peak resident memory of this process so far (VmHWM), in MiB.
pub fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    match kib_field(&status, "VmHWM:") {
        Some(k) => k as f64 / 1024.0,
        None => {
            // Not Linux: getrusage's maxrss (KiB on Linux, bytes on macOS; a fallback only).
            let mut u = std::mem::MaybeUninit::<libc::rusage>::zeroed();
            // SAFETY: getrusage fills the struct it is given; RUSAGE_SELF is always valid.
            let ok = unsafe { libc::getrusage(libc::RUSAGE_SELF, u.as_mut_ptr()) } == 0;
            if ok {
                // SAFETY: initialised by the successful call above.
                unsafe { u.assume_init() }.ru_maxrss as f64 / 1024.0
            } else {
                0.0
            }
        }
    }
}

/// Current resident memory of this process (VmRSS), in MiB.
pub fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    kib_field(&status, "VmRSS:").map_or(0.0, |k| k as f64 / 1024.0)
}

/// The commit the binary's source tree is at, when run inside a git checkout.
pub fn git_commit() -> Option<String> {
    let out = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let commit = String::from_utf8(out.stdout).ok()?.trim().to_string();
    let dirty = std::process::Command::new("git")
        .args(["status", "--porcelain", "--untracked-files=no"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stderr(std::process::Stdio::null())
        .output()
        .ok()
        .is_some_and(|o| !o.stdout.is_empty());
    Some(if dirty {
        format!("{commit}-dirty")
    } else {
        commit
    })
}
