//! The OCI runtime configuration (config.json) of one container.

use std::path::PathBuf;

use oci_spec::runtime::{
    Capability, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxCpuBuilder, LinuxMemoryBuilder,
    LinuxNamespace, LinuxNamespaceBuilder, LinuxNamespaceType, LinuxResourcesBuilder, Mount,
    MountBuilder, ProcessBuilder, RootBuilder, Spec, UserBuilder,
};

use crate::sandbox::{Kind, Sandbox};

/// What containerd gives a container by default, and so what pods expect.
const DEFAULT_CAPABILITIES: [Capability; 14] = [
    Capability::Chown,
    Capability::DacOverride,
    Capability::Fsetid,
    Capability::Fowner,
    Capability::Mknod,
    Capability::NetRaw,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setfcap,
    Capability::Setpcap,
    Capability::NetBindService,
    Capability::SysChroot,
    Capability::Kill,
    Capability::AuditWrite,
];

/// Everything about one container the runtime needs to know.
#[derive(Clone, Debug, Default)]
pub struct ContainerConfig {
    /// The process gets a terminal (its master end goes to the runtime's console socket).
    pub terminal: bool,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub cwd: String,
    pub uid: u32,
    pub gid: u32,
    pub rootfs: PathBuf,
    pub readonly_rootfs: bool,
    /// Bind mounts: host path, container path, read-only.
    pub binds: Vec<(PathBuf, String, bool)>,
    pub cgroups_path: String,
    pub memory_limit: Option<i64>,
    pub cpu_shares: Option<u64>,
    /// CPU quota in microseconds per 100 ms period.
    pub cpu_quota: Option<i64>,
    pub privileged: bool,
    pub add_capabilities: Vec<String>,
    pub drop_capabilities: Vec<String>,
    pub allow_privilege_escalation: bool,
    pub oom_score_adj: Option<i32>,
}

fn capability(name: &str) -> Option<Capability> {
    name.trim_start_matches("CAP_").to_uppercase().parse().ok()
}

fn capabilities(c: &ContainerConfig) -> Vec<Capability> {
    let all_dropped = c
        .drop_capabilities
        .iter()
        .any(|d| d.eq_ignore_ascii_case("ALL"));
    let mut caps: Vec<Capability> = if c.privileged {
        c.add_capabilities
            .iter()
            .filter_map(|n| capability(n))
            .chain(all_capabilities())
            .collect()
    } else if all_dropped {
        vec![]
    } else {
        let dropped: Vec<Capability> = c
            .drop_capabilities
            .iter()
            .filter_map(|n| capability(n))
            .collect();
        DEFAULT_CAPABILITIES
            .into_iter()
            .filter(|cap| !dropped.contains(cap))
            .collect()
    };
    if !c.privileged {
        caps.extend(c.add_capabilities.iter().filter_map(|n| capability(n)));
    }
    caps.sort_by_key(|c| c.to_string());
    caps.dedup();
    caps
}

fn all_capabilities() -> impl Iterator<Item = Capability> {
    // The kernel's full set as of 5.x: CAP_CHOWN (0) through CAP_CHECKPOINT_RESTORE (40).
    [
        "CHOWN",
        "DAC_OVERRIDE",
        "DAC_READ_SEARCH",
        "FOWNER",
        "FSETID",
        "KILL",
        "SETGID",
        "SETUID",
        "SETPCAP",
        "LINUX_IMMUTABLE",
        "NET_BIND_SERVICE",
        "NET_BROADCAST",
        "NET_ADMIN",
        "NET_RAW",
        "IPC_LOCK",
        "IPC_OWNER",
        "SYS_MODULE",
        "SYS_RAWIO",
        "SYS_CHROOT",
        "SYS_PTRACE",
        "SYS_PACCT",
        "SYS_ADMIN",
        "SYS_BOOT",
        "SYS_NICE",
        "SYS_RESOURCE",
        "SYS_TIME",
        "SYS_TTY_CONFIG",
        "MKNOD",
        "LEASE",
        "AUDIT_WRITE",
        "AUDIT_CONTROL",
        "SETFCAP",
        "MAC_OVERRIDE",
        "MAC_ADMIN",
        "SYSLOG",
        "WAKE_ALARM",
        "BLOCK_SUSPEND",
        "AUDIT_READ",
        "PERFMON",
        "BPF",
        "CHECKPOINT_RESTORE",
    ]
    .into_iter()
    .filter_map(capability)
}

fn namespace(typ: LinuxNamespaceType, path: Option<PathBuf>) -> LinuxNamespace {
    let b = LinuxNamespaceBuilder::default().typ(typ);
    match path {
        Some(p) => b.path(p),
        None => b,
    }
    .build()
    .expect("namespace fields are set")
}

fn bind(source: &std::path::Path, destination: &str, readonly: bool) -> Mount {
    let mut options = vec!["rbind".to_owned(), "rprivate".to_owned()];
    options.push(if readonly { "ro" } else { "rw" }.to_owned());
    MountBuilder::default()
        .destination(destination)
        .typ("bind")
        .source(source)
        .options(options)
        .build()
        .expect("mount fields are set")
}

pub fn oci_spec(c: &ContainerConfig, sandbox: &Sandbox) -> Spec {
    let caps: std::collections::HashSet<Capability> = capabilities(c).into_iter().collect();
    let process = ProcessBuilder::default()
        .args(c.args.clone())
        .env(
            c.env
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>(),
        )
        .cwd(c.cwd.clone())
        .terminal(c.terminal)
        .user(
            UserBuilder::default()
                .uid(c.uid)
                .gid(c.gid)
                .build()
                .expect("user fields are set"),
        )
        .no_new_privileges(!c.allow_privilege_escalation && !c.privileged)
        .capabilities(
            LinuxCapabilitiesBuilder::default()
                .bounding(caps.clone())
                .effective(caps.clone())
                .permitted(caps)
                .build()
                .expect("capability sets are set"),
        );
    let process = match c.oom_score_adj {
        Some(adj) => process.oom_score_adj(adj),
        None => process,
    }
    .build()
    .expect("process fields are set");

    let mut mounts = oci_spec::runtime::get_default_mounts();
    if c.privileged {
        // A privileged container sees the host's devices and a writable /sys.
        for m in &mut mounts {
            if m.destination() == std::path::Path::new("/sys") {
                m.set_options(Some(vec![
                    "nosuid".into(),
                    "noexec".into(),
                    "nodev".into(),
                    "rw".into(),
                ]));
            }
        }
    }
    mounts.extend(c.binds.iter().map(|(src, dst, ro)| bind(src, dst, *ro)));

    let mut namespaces = vec![
        namespace(LinuxNamespaceType::Pid, None),
        namespace(LinuxNamespaceType::Mount, None),
    ];
    for (kind, typ) in [
        (Kind::Network, LinuxNamespaceType::Network),
        (Kind::Ipc, LinuxNamespaceType::Ipc),
        (Kind::Uts, LinuxNamespaceType::Uts),
    ] {
        if let Some(path) = sandbox.path(kind) {
            namespaces.push(namespace(typ, Some(path)));
        }
    }

    let mut memory = LinuxMemoryBuilder::default();
    if let Some(limit) = c.memory_limit {
        memory = memory.limit(limit);
    }
    let mut cpu = LinuxCpuBuilder::default();
    if let Some(shares) = c.cpu_shares {
        cpu = cpu.shares(shares);
    }
    if let Some(quota) = c.cpu_quota {
        cpu = cpu.quota(quota).period(100_000u64);
    }
    let resources = LinuxResourcesBuilder::default()
        .memory(memory.build().expect("memory fields are set"))
        .cpu(cpu.build().expect("cpu fields are set"))
        .build()
        .expect("resource fields are set");

    let mut linux = LinuxBuilder::default()
        .namespaces(namespaces)
        .resources(resources)
        .cgroups_path(PathBuf::from(&c.cgroups_path));
    if !c.privileged {
        linux = linux
            .masked_paths(oci_spec::runtime::get_default_maskedpaths())
            .readonly_paths(oci_spec::runtime::get_default_readonly_paths());
    }
    let linux = linux.build().expect("linux fields are set");

    let mut spec = Spec::default();
    spec.set_process(Some(process));
    spec.set_hostname(None);
    spec.set_root(Some(
        RootBuilder::default()
            .path(c.rootfs.clone())
            .readonly(c.readonly_rootfs)
            .build()
            .expect("root fields are set"),
    ));
    spec.set_mounts(Some(mounts));
    spec.set_linux(Some(linux));
    spec
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::HostShared;

    #[test]
    fn containers_join_the_pods_namespaces_and_get_their_own_pid_and_mount() {
        let sandbox = Sandbox::new(std::path::Path::new("/pods/p1"), HostShared::default());
        let spec = oci_spec(&ContainerConfig::default(), &sandbox);
        let ns = spec.linux().as_ref().unwrap().namespaces().clone().unwrap();
        let by_type = |t| ns.iter().find(|n| n.typ() == t).map(|n| n.path().clone());
        assert_eq!(by_type(LinuxNamespaceType::Pid), Some(None));
        assert_eq!(
            by_type(LinuxNamespaceType::Network),
            Some(Some(PathBuf::from("/pods/p1/ns/net")))
        );
        assert_eq!(
            by_type(LinuxNamespaceType::Uts),
            Some(Some(PathBuf::from("/pods/p1/ns/uts")))
        );
    }

    #[test]
    fn capabilities_start_from_containerds_defaults() {
        let base = ContainerConfig::default();
        assert!(capabilities(&base).contains(&Capability::Chown));
        assert!(!capabilities(&base).contains(&Capability::NetAdmin));
        let c = ContainerConfig {
            add_capabilities: vec!["NET_ADMIN".into()],
            drop_capabilities: vec!["CHOWN".into()],
            ..Default::default()
        };
        assert!(capabilities(&c).contains(&Capability::NetAdmin));
        assert!(!capabilities(&c).contains(&Capability::Chown));
        let none = ContainerConfig {
            drop_capabilities: vec!["ALL".into()],
            ..Default::default()
        };
        assert!(capabilities(&none).is_empty());
        let privileged = ContainerConfig {
            privileged: true,
            ..Default::default()
        };
        assert!(capabilities(&privileged).contains(&Capability::SysAdmin));
    }
}
