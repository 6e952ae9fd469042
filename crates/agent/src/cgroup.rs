//! CPU and memory readings of a cgroup, as kubelet's cAdvisor takes them:
//! cumulative CPU time, and the working set (usage less inactive file
//! pages, which the kernel reclaims first). cgroup v1 keeps CPU accounting
//! and memory in separate hierarchies; v2 has one tree.

use std::path::{Path, PathBuf};

const ROOT: &str = "/sys/fs/cgroup";

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Usage {
    pub cpu_seconds: f64,
    pub working_set_bytes: u64,
}

fn unified() -> bool {
    Path::new(ROOT).join("cgroup.controllers").exists()
}

fn under(hierarchy: &str, cgroup: &str) -> PathBuf {
    Path::new(ROOT)
        .join(hierarchy)
        .join(cgroup.trim_start_matches('/'))
}

fn read_u64(path: &Path) -> std::io::Result<u64> {
    let text = std::fs::read_to_string(path)?;
    text.trim()
        .parse()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

/// The value of `key` in a flat-keyed file such as `memory.stat`.
fn keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

fn missing(what: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, format!("no {what}"))
}

/// The readings of the cgroup at `cgroup` (`/` for the whole machine).
pub fn usage(cgroup: &str) -> std::io::Result<Usage> {
    if unified() {
        return usage_v2(cgroup);
    }
    let cpu_ns = read_u64(&under("cpuacct", cgroup).join("cpuacct.usage"))?;
    let memory = under("memory", cgroup);
    let used = read_u64(&memory.join("memory.usage_in_bytes"))?;
    let stat = std::fs::read_to_string(memory.join("memory.stat"))?;
    let inactive = keyed(&stat, "total_inactive_file").ok_or_else(|| missing("inactive file"))?;
    Ok(Usage {
        cpu_seconds: cpu_ns as f64 / 1e9,
        working_set_bytes: used.saturating_sub(inactive),
    })
}

fn usage_v2(cgroup: &str) -> std::io::Result<Usage> {
    let dir = under("", cgroup);
    let cpu = std::fs::read_to_string(dir.join("cpu.stat"))?;
    let cpu_us = keyed(&cpu, "usage_usec").ok_or_else(|| missing("cpu usage"))?;
    let (used, inactive) = if cgroup == "/" {
        // The root of the unified tree has no memory.current: the machine's
        // use is what /proc/meminfo does not count as free.
        let info = std::fs::read_to_string("/proc/meminfo")?;
        let kib = |key: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(key)?.split_whitespace().next()?.parse().ok())
                .map(|v: u64| v * 1024)
                .ok_or_else(|| missing(key))
        };
        (
            kib("MemTotal:")? - kib("MemFree:")?,
            kib("Inactive(file):")?,
        )
    } else {
        let stat = std::fs::read_to_string(dir.join("memory.stat"))?;
        (
            read_u64(&dir.join("memory.current"))?,
            keyed(&stat, "inactive_file").ok_or_else(|| missing("inactive file"))?,
        )
    };
    Ok(Usage {
        cpu_seconds: cpu_us as f64 / 1e6,
        working_set_bytes: used.saturating_sub(inactive),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyed_files_are_read_by_key() {
        let stat = "cache 10\ntotal_inactive_file 4096\ninactive_file 12\n";
        assert_eq!(keyed(stat, "total_inactive_file"), Some(4096));
        assert_eq!(keyed(stat, "inactive_file"), Some(12));
        assert_eq!(keyed(stat, "rss"), None);
    }

    #[test]
    fn this_machine_is_read() {
        let u = usage("/").unwrap();
        assert!(u.cpu_seconds > 0.0 && u.working_set_bytes > 0, "{u:?}");
    }
}
