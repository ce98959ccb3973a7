//! What a downstream target is, and which target (if any) a socket belongs to.
//!
//! Every source reports sockets; this module decides, in user space, which configured target a
//! socket is attributed to. The netlink source also compiles the same rules into a kernel filter
//! (`fix_monitor_kernel::bytecode`), so that unrelated sockets never reach user space; the user-space check
//! then only attributes the few matching sockets to their target. Both must agree: the tests in
//! `fix_monitor_kernel::bytecode` run the same cases through both.

use std::net::SocketAddr;

use ipnet::IpNet;

/// Index of a target in [`Targets`]; also the order in which targets were configured.
pub type TargetId = usize;

/// An inclusive range of TCP ports, `start <= end` (validated by the config module).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct PortRange {
    /// The first port.
    pub start: u16,
    /// The last port (included).
    pub end: u16,
}

impl PortRange {
    /// Whether `port` lies in the range.
    pub fn contains(&self, port: u16) -> bool {
        self.start <= port && port <= self.end
    }
}

impl std::fmt::Display for PortRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.start, self.end)
    }
}

/// One downstream the gateway talks to: a remote address or block, optionally one remote port,
/// optionally a range of local ports the gateway's FIX sessions bind to.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Target {
    /// Value of the `target` attribute on every metric of this target.
    pub name: String,
    /// Remote address (a single address is a /32 or /128 network).
    pub net: IpNet,
    /// Remote port; `None` means any.
    pub port: Option<u16>,
    /// Local ports; `None` means any.
    pub local_ports: Option<PortRange>,
    /// The FIX sessions' HeartBtInt (tag 108), as configured; `None`: not given.
    #[serde(skip)]
    pub heartbeat: Option<std::time::Duration>,
    /// After how long without data received a session is stale: `stale_after` as configured,
    /// else twice the heartbeat; `None`: staleness is not judged for this target.
    #[serde(skip)]
    pub stale_after: Option<std::time::Duration>,
}

impl Target {
    /// The default name of a target: `ADDRESS:PORT`, `ADDRESS` when any port matches. A single
    /// address is written without its prefix length, an IPv6 address in brackets with a port.
    pub fn default_name(net: &IpNet, port: Option<u16>) -> String {
        let single = net.prefix_len() == net.max_prefix_len();
        let addr = if single {
            net.addr().to_string()
        } else {
            net.to_string()
        };
        match (port, net) {
            (None, _) => addr,
            (Some(p), IpNet::V6(_)) if single => format!("[{addr}]:{p}"),
            (Some(p), _) => format!("{addr}:{p}"),
        }
    }

    /// Does a connection from `local` to `remote` belong to this target? IPv4-mapped IPv6
    /// addresses (`::ffff:a.b.c.d`, what a dual-stack socket shows) match IPv4 targets.
    pub fn matches(&self, local: &SocketAddr, remote: &SocketAddr) -> bool {
        if let Some(p) = self.port {
            if remote.port() != p {
                return false;
            }
        }
        if let Some(r) = self.local_ports {
            if !r.contains(local.port()) {
                return false;
            }
        }
        self.net.contains(&remote.ip().to_canonical())
    }
}

#[cfg(any(test, feature = "test-support"))]
impl Target {
    /// A target with its default name, for tests: `Target::test("10.0.0.0/24", Some(9876),
    /// Some((5000, 6000)))` (feature `test-support`).
    #[doc(hidden)]
    pub fn test(net: &str, port: Option<u16>, local: Option<(u16, u16)>) -> Target {
        let net: IpNet = net.parse().unwrap();
        Target {
            name: Target::default_name(&net, port),
            net,
            port,
            local_ports: local.map(|(start, end)| PortRange { start, end }),
            heartbeat: None,
            stale_after: None,
        }
    }
}

/// The configured targets, in order. A socket belongs to the first target that matches it, so
/// overlapping targets never count one connection twice.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Targets(Vec<Target>);

impl Targets {
    /// The targets, in the configured order.
    pub fn new(targets: Vec<Target>) -> Self {
        Targets(targets)
    }

    /// The first target a connection from `local` to `remote` belongs to, if any.
    pub fn classify(&self, local: &SocketAddr, remote: &SocketAddr) -> Option<TargetId> {
        self.0.iter().position(|t| t.matches(local, remote))
    }

    /// The target `id` names (panics on an id that is not one).
    pub fn get(&self, id: TargetId) -> &Target {
        &self.0[id]
    }

    /// The targets, in order.
    pub fn iter(&self) -> std::slice::Iter<'_, Target> {
        self.0.iter()
    }

    /// How many targets there are.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// True when some target can match an IPv4 peer (so the AF_INET table must be read).
    pub fn wants_ipv4(&self) -> bool {
        self.0.iter().any(|t| matches!(t.net, IpNet::V4(_)))
    }

    /// True when some target can match a socket in the AF_INET6 table: any IPv6 target, and any
    /// IPv4 target too, since dual-stack sockets show IPv4 peers as IPv4-mapped IPv6 addresses.
    pub fn wants_ipv6(&self) -> bool {
        self.wants_ipv4() || self.0.iter().any(|t| matches!(t.net, IpNet::V6(_)))
    }
}

/// How a running sidecar's targets map onto a reloaded list: by name. A target whose name stays
/// keeps its counts; its sessions stay where the new definition still gives them to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Remap {
    /// By old id: the same target's new id, `None` where it was removed.
    pub old_to_new: Vec<Option<TargetId>>,
    /// By new id: added, or its definition changed (address, ports): the sessions it holds now
    /// were not all watched as its own before.
    pub widened: Vec<bool>,
}

impl Remap {
    /// The session of `old` target between `local` and `remote`, under the new `targets`: its
    /// new id where the same target (by name) still holds it; `None` where it was removed or
    /// the session now belongs elsewhere (or nowhere).
    pub fn keep(
        &self,
        old: TargetId,
        targets: &Targets,
        local: &SocketAddr,
        remote: &SocketAddr,
    ) -> Option<TargetId> {
        let new = (self.old_to_new.get(old).copied()).flatten()?;
        (targets.classify(local, remote) == Some(new)).then_some(new)
    }
}

impl Targets {
    /// How these targets map onto `new` ([`Remap`]).
    pub fn remap(&self, new: &Targets) -> Remap {
        let old_to_new = (self.0.iter())
            .map(|t| new.0.iter().position(|n| n.name == t.name))
            .collect();
        let widened = (new.0.iter())
            .map(|n| {
                let old = self.0.iter().find(|t| t.name == n.name);
                old.is_none_or(|t| (t.net, t.port, t.local_ports) != (n.net, n.port, n.local_ports))
            })
            .collect();
        Remap {
            old_to_new,
            widened,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(net: &str, port: Option<u16>, local: Option<(u16, u16)>) -> Target {
        Target::test(net, port, local)
    }

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn address_port_and_local_range_all_apply() {
        let x = t("10.0.0.5/32", Some(9876), Some((5000, 6000)));
        assert!(x.matches(&sa("10.1.1.1:5000"), &sa("10.0.0.5:9876")));
        assert!(x.matches(&sa("10.1.1.1:6000"), &sa("10.0.0.5:9876")));
        assert!(!x.matches(&sa("10.1.1.1:4999"), &sa("10.0.0.5:9876")));
        assert!(!x.matches(&sa("10.1.1.1:6001"), &sa("10.0.0.5:9876")));
        assert!(!x.matches(&sa("10.1.1.1:5000"), &sa("10.0.0.5:9877")));
        assert!(!x.matches(&sa("10.1.1.1:5000"), &sa("10.0.0.6:9876")));
    }

    #[test]
    fn cidr_blocks_match_every_address_inside() {
        let x = t("10.0.0.0/24", None, None);
        assert!(x.matches(&sa("1.1.1.1:1"), &sa("10.0.0.255:1")));
        assert!(!x.matches(&sa("1.1.1.1:1"), &sa("10.0.1.0:1")));
    }

    #[test]
    fn ipv4_mapped_ipv6_peers_match_ipv4_targets() {
        let x = t("127.0.0.2/32", Some(9000), None);
        assert!(x.matches(
            &sa("[::ffff:127.0.0.1]:5000"),
            &sa("[::ffff:127.0.0.2]:9000")
        ));
        assert!(!x.matches(&sa("[::1]:5000"), &sa("[::1]:9000")));
    }

    #[test]
    fn ipv6_targets_do_not_match_ipv4_peers() {
        let x = t("::1/128", None, None);
        assert!(x.matches(&sa("[::1]:5000"), &sa("[::1]:9000")));
        assert!(!x.matches(&sa("127.0.0.1:5000"), &sa("127.0.0.1:9000")));
    }

    #[test]
    fn first_matching_target_wins() {
        let ts = Targets::new(vec![
            t("10.0.0.5/32", Some(1), None),
            t("10.0.0.0/8", None, None),
        ]);
        assert_eq!(ts.classify(&sa("1.1.1.1:1"), &sa("10.0.0.5:1")), Some(0));
        assert_eq!(ts.classify(&sa("1.1.1.1:1"), &sa("10.0.0.5:2")), Some(1));
        assert_eq!(ts.classify(&sa("1.1.1.1:1"), &sa("11.0.0.5:2")), None);
    }

    #[test]
    fn default_names_read_like_addresses() {
        assert_eq!(
            Target::default_name(&"10.0.0.5/32".parse().unwrap(), Some(9876)),
            "10.0.0.5:9876"
        );
        assert_eq!(
            Target::default_name(&"10.0.0.0/24".parse().unwrap(), None),
            "10.0.0.0/24"
        );
        assert_eq!(
            Target::default_name(&"::1/128".parse().unwrap(), Some(9)),
            "[::1]:9"
        );
    }

    #[test]
    fn a_reloaded_list_maps_by_name() {
        let named = |name: &str, net: &str, port: Option<u16>| Target {
            name: name.into(),
            ..t(net, port, None)
        };
        let old = Targets::new(vec![
            named("a", "10.0.0.1/32", Some(9000)),
            named("b", "10.0.0.2/32", Some(9000)),
            named("c", "10.0.0.3/32", Some(9000)),
        ]);
        let new = Targets::new(vec![
            named("d", "10.0.0.4/32", None),
            named("c", "10.0.0.3/32", Some(9001)),
            named("a", "10.0.0.1/32", Some(9000)),
        ]);
        let r = old.remap(&new);
        assert_eq!(r.old_to_new, [Some(2), None, Some(1)]);
        assert_eq!(r.widened, [true, true, false]);
        let local = sa("192.168.0.1:40000");
        assert_eq!(r.keep(0, &new, &local, &sa("10.0.0.1:9000")), Some(2));
        assert_eq!(r.keep(1, &new, &local, &sa("10.0.0.2:9000")), None);
        // c moved to port 9001: its session on 9000 is not c's any more.
        assert_eq!(r.keep(2, &new, &local, &sa("10.0.0.3:9000")), None);
        assert_eq!(r.keep(2, &new, &local, &sa("10.0.0.3:9001")), Some(1));
    }
}
