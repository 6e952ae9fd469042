//! Several "machines" on one: network namespaces joined by a bridge in
//! this namespace (one L2 segment, addresses inside this machine only),
//! each with its own data directory and a process started in it. The
//! bridge holds `.1` (where a server in this namespace binds), host `i`
//! `.{i + 2}`. Names come from a [`TestNet`] slot, so tests run in
//! parallel; everything goes on drop.

use std::path::Path;
use std::process::{Child, Command};

use crate::TestNet;

pub struct Hosts {
    bridge: String,
    subnet: String,
    hosts: Vec<Host>,
    _names: TestNet,
}

/// One network namespace with a data directory and at most one process.
pub struct Host {
    netns: String,
    /// Its end of the veth pair, in this namespace on the bridge.
    link: String,
    ip: String,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

fn run(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .expect("running ip");
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn quietly(args: &[&str]) {
    let _ = Command::new(args[0]).args(&args[1..]).output();
}

impl Hosts {
    /// `count` hosts on a new bridge.
    pub fn new(count: usize) -> Self {
        let names = TestNet::claim();
        let slot = names.slot();
        let bridge = format!("kbxh{slot}");
        let subnet = format!("192.168.{}", 100 + slot);
        // What a crashed holder of the slot may have left.
        for i in 0..count {
            quietly(&["ip", "netns", "del", &format!("kbxh{slot}n{i}")]);
            quietly(&["ip", "link", "del", &format!("kbxh{slot}v{i}")]);
        }
        quietly(&["ip", "link", "del", &bridge]);
        run(&["ip", "link", "add", &bridge, "type", "bridge"]);
        run(&[
            "ip",
            "addr",
            "add",
            &format!("{subnet}.1/24"),
            "dev",
            &bridge,
        ]);
        run(&["ip", "link", "set", &bridge, "up"]);
        let mut hosts = Self {
            bridge,
            subnet,
            hosts: Vec::new(),
            _names: names,
        };
        for i in 0..count {
            let host = hosts.add(slot, i);
            hosts.hosts.push(host);
        }
        hosts
    }

    fn add(&self, slot: u16, i: usize) -> Host {
        let netns = format!("kbxh{slot}n{i}");
        let link = format!("kbxh{slot}v{i}");
        let peer = format!("kbxh{slot}p{i}");
        let ip = format!("{}.{}", self.subnet, i + 2);
        run(&["ip", "netns", "add", &netns]);
        run(&[
            "ip", "link", "add", &link, "type", "veth", "peer", "name", &peer,
        ]);
        run(&["ip", "link", "set", &peer, "netns", &netns]);
        run(&["ip", "link", "set", &link, "master", &self.bridge]);
        run(&["ip", "link", "set", &link, "up"]);
        let cidr = format!("{ip}/24");
        run(&["ip", "-n", &netns, "addr", "add", &cidr, "dev", &peer]);
        run(&["ip", "-n", &netns, "link", "set", &peer, "up"]);
        run(&["ip", "-n", &netns, "link", "set", "lo", "up"]);
        Host {
            netns,
            link,
            ip,
            dir: tempfile::tempdir().expect("a host's data directory"),
            child: None,
        }
    }

    /// The bridge's address, in this namespace.
    pub fn gateway(&self) -> String {
        format!("{}.1", self.subnet)
    }

    pub fn host(&mut self, i: usize) -> &mut Host {
        &mut self.hosts[i]
    }
}

impl Host {
    pub fn ip(&self) -> &str {
        &self.ip
    }

    /// The network namespace's name (`/run/netns/<name>`).
    pub fn netns(&self) -> &str {
        &self.netns
    }

    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    /// Starts `bin args` in the namespace, its output in `log()`,
    /// after stopping the one before. nsenter changes only the network
    /// namespace (`ip netns exec` would also remount /sys, hiding the
    /// cgroup hierarchies a container runtime needs).
    pub fn spawn(&mut self, bin: &Path, args: &[&str]) {
        self.kill();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("a host's log file");
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.netns))
            .arg(bin)
            .args(args)
            .stdout(log.try_clone().expect("a host's log file"))
            .stderr(log)
            .spawn()
            .expect("starting a process in a host");
        self.child = Some(child);
    }

    fn log_path(&self) -> std::path::PathBuf {
        self.dir.path().join("host.log")
    }

    /// What the host's processes have written.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Its process's ID while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether its process has exited.
    pub fn exited(&mut self) -> bool {
        self.child
            .as_mut()
            .is_none_or(|c| c.try_wait().ok().flatten().is_some())
    }

    /// SIGKILL to its process.
    pub fn kill(&mut self) {
        crate::kill(&mut self.child);
    }

    /// Cuts the host off the bridge (`up = false`) or plugs it back.
    pub fn set_link(&self, up: bool) {
        run(&[
            "ip",
            "link",
            "set",
            &self.link,
            if up { "up" } else { "down" },
        ]);
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for host in &mut self.hosts {
            host.kill();
            crate::node::release(host.dir.path());
            // Its bridge, veths, VXLAN device and tables go with the namespace.
            quietly(&["ip", "netns", "del", &host.netns]);
            // Gone with the namespace, unless something still holds it.
            quietly(&["ip", "link", "del", &host.link]);
        }
        quietly(&["ip", "link", "del", &self.bridge]);
    }
}
