//! IPAM from a node's pod range, kept on disk as host-local IPAM does: one
//! file per address in use, named by the address and holding its pod's
//! UID, made with O_EXCL so no address is ever handed out twice. Addresses
//! are given round-robin from the last one handed out, so a freed address
//! is the last to be used again.

use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use ipnet::Ipv4Net;

use crate::NetError;

pub struct Ipam {
    dir: PathBuf,
    lock: Mutex<()>,
}

fn io(what: &Path, e: std::io::Error) -> NetError {
    NetError::Io(what.display().to_string(), e)
}

impl Ipam {
    pub fn open(dir: &Path) -> Result<Self, NetError> {
        std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
        Ok(Self {
            dir: dir.to_owned(),
            lock: Mutex::new(()),
        })
    }

    /// Every address handed out, with its owner (empty for a record cut
    /// short by a crash).
    pub fn allocated(&self) -> Vec<(Ipv4Addr, String)> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|e| {
                let ip: Ipv4Addr = e.file_name().to_str()?.parse().ok()?;
                let owner = std::fs::read_to_string(e.path()).unwrap_or_default();
                Some((ip, owner.trim().to_owned()))
            })
            .collect()
    }

    pub fn lookup(&self, owner: &str) -> Option<Ipv4Addr> {
        self.allocated()
            .into_iter()
            .find(|(_, o)| o == owner)
            .map(|(ip, _)| ip)
    }

    /// The address of `owner` in `range` (all of it but the network,
    /// gateway and broadcast addresses), handing one out if it has none.
    pub fn allocate(&self, range: &Ipv4Net, owner: &str) -> Result<Ipv4Addr, NetError> {
        let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(ip) = self.lookup(owner) {
            if range.contains(&ip) {
                return Ok(ip);
            }
            // From a range the node no longer has.
            let _ = std::fs::remove_file(self.dir.join(ip.to_string()));
        }
        let last_file = self.dir.join("last_reserved_ip");
        let last: Option<Ipv4Addr> = std::fs::read_to_string(&last_file)
            .ok()
            .and_then(|s| s.trim().parse().ok());
        let gateway = crate::gateway(range);
        let all: Vec<Ipv4Addr> = range.hosts().filter(|ip| *ip != gateway).collect();
        let start = last
            .and_then(|l| all.iter().position(|ip| *ip == l))
            .map_or(0, |i| i + 1);
        for ip in all[start..].iter().chain(&all[..start]) {
            let path = self.dir.join(ip.to_string());
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
            {
                Ok(mut f) => {
                    f.write_all(owner.as_bytes())
                        .and_then(|_| f.sync_all())
                        .map_err(|e| io(&path, e))?;
                    std::fs::write(&last_file, ip.to_string()).map_err(|e| io(&last_file, e))?;
                    return Ok(*ip);
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(io(&path, e)),
            }
        }
        Err(NetError::Other(format!(
            "no free address left in pod range {range}"
        )))
    }

    /// Gives back what `owner` holds.
    pub fn release(&self, owner: &str) -> Result<(), NetError> {
        let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        for (ip, o) in self.allocated() {
            if o == owner {
                let path = self.dir.join(ip.to_string());
                match std::fs::remove_file(&path) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                        return Err(io(&path, e));
                    }
                    _ => {}
                }
            }
        }
        Ok(())
    }

    /// Releases every address whose owner `keep` rejects; returns their owners.
    pub fn retain(&self, keep: impl Fn(&str) -> bool) -> Vec<String> {
        let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let mut released = Vec::new();
        for (ip, owner) in self.allocated() {
            if !keep(&owner) {
                let _ = std::fs::remove_file(self.dir.join(ip.to_string()));
                released.push(owner);
            }
        }
        released
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_unique_round_robin_and_kept_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let range: Ipv4Net = "10.42.3.0/29".parse().unwrap();
        let ipam = Ipam::open(dir.path()).unwrap();
        let a = ipam.allocate(&range, "a").unwrap();
        assert_eq!(a.to_string(), "10.42.3.2", "the gateway .1 is skipped");
        assert_eq!(
            ipam.allocate(&range, "a").unwrap(),
            a,
            "asking again gives the same"
        );
        let b = ipam.allocate(&range, "b").unwrap();
        assert_eq!(b.to_string(), "10.42.3.3");
        ipam.release("a").unwrap();
        // A new owner gets the next address, not the one just freed.
        assert_eq!(ipam.allocate(&range, "c").unwrap().to_string(), "10.42.3.4");
        // Another process (a restarted agent) sees the same.
        let again = Ipam::open(dir.path()).unwrap();
        assert_eq!(again.lookup("b"), Some(b));
        for owner in ["d", "e", "f"] {
            again.allocate(&range, owner).unwrap();
        }
        // .2 (freed) is handed out once the rest are used; then none are left.
        assert_eq!(again.lookup("f").unwrap().to_string(), "10.42.3.2");
        assert!(again.allocate(&range, "g").is_err());
        let released = again.retain(|o| o != "b" && o != "c");
        assert_eq!(released.len(), 2);
        assert_eq!(again.lookup("b"), None);
    }
}
