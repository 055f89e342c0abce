use super::*;
use crate::net::forward::ForwardSpec;
use std::net::SocketAddr;

fn fwd(bound: &str, protocol: Protocol, guest: u16) -> ForwardedPort {
    let bound: SocketAddr = bound.parse().unwrap();
    ForwardedPort {
        spec: ForwardSpec {
            protocol,
            host: bound,
            guest_port: guest,
            shared: false,
        },
        bound,
    }
}

fn rules(ports: &[ForwardedPort]) -> KernelForward<'_> {
    KernelForward {
        bridge: "berth0",
        port: "bv0123456789",
        address: "10.88.0.7".parse().unwrap(),
        ports,
    }
}

#[test]
fn loopback_and_wildcard_ports_are_redirected_from_local_clients_only() {
    let ports = [
        fwd("127.0.0.1:8080", Protocol::Tcp, 80),
        fwd("0.0.0.0:5353", Protocol::Tcp, 53),
        fwd("0.0.0.0:5354", Protocol::Udp, 54),
        fwd("[::1]:9090", Protocol::Tcp, 90),
    ];
    let host = rules(&ports).host_ruleset().unwrap();
    assert!(
        host.starts_with("table ip berthp_bv0123456789 {}\nflush table ip berthp_bv0123456789\n")
    );
    assert!(host.contains("ip daddr 127.0.0.1 tcp dport 8080 dnat to 10.88.0.7:80\n"));
    assert!(host.contains("fib daddr type local tcp dport 5353 dnat to 10.88.0.7:53\n"));
    // The IPv6 and UDP ports stay with the forwarder; nothing comes from other hosts.
    assert!(!host.contains("9090") && !host.contains("5354"), "{host}");
    assert!(
        !host.contains("udp") && !host.contains("prerouting"),
        "{host}"
    );
    assert!(host.contains("oifname \"berth0\" ip daddr 10.88.0.7 ct status dnat masquerade"));
    assert!(host.contains("ip daddr 10.88.0.7 tcp dport 80 ct state new drop"));
    // Packets conntrack cannot place would skip NAT and reset the connection: dropped.
    assert!(host.contains("ip daddr 127.0.0.1 tcp dport 8080 ct state invalid drop\n"));
    assert!(
        host.contains("iifname \"berth0\" ip saddr 10.88.0.7 tcp sport 80 ct state invalid drop\n")
    );
    let env = rules(&ports).env_ruleset();
    assert!(env.contains("iifname \"eth0\" ip daddr 10.88.0.7 tcp dport 80 dnat to 127.0.0.1:80"));
    assert!(env.contains("iifname \"eth0\" ip daddr 10.88.0.7 tcp dport 53 dnat to 127.0.0.1:53"));
    assert!(!env.contains("udp"), "{env}");
    assert!(env.contains("iifname \"eth0\" ip daddr 10.88.0.7 tcp dport 80 ct state invalid drop"));
    assert!(env.contains("iifname \"eth0\" ip daddr 127.0.0.0/8 ct status & dnat == 0 drop"));
    assert!(!env.contains("dport 90 "), "{env}");
}

#[test]
fn only_ipv6_or_udp_ports_need_no_rules() {
    let ports = [
        fwd("[::]:9090", Protocol::Tcp, 90),
        fwd("127.0.0.1:5353", Protocol::Udp, 53),
    ];
    assert_eq!(rules(&ports).host_ruleset(), None);
}

#[test]
fn a_guest_port_behind_two_host_ports_is_redirected_once_inside() {
    let ports = [
        fwd("127.0.0.1:8080", Protocol::Tcp, 80),
        fwd("127.0.0.2:8080", Protocol::Tcp, 80),
    ];
    let env = rules(&ports).env_ruleset();
    assert_eq!(env.matches("dnat to 127.0.0.1:80").count(), 1, "{env}");
    let host = rules(&ports).host_ruleset().unwrap();
    assert_eq!(host.matches("dnat to 10.88.0.7:80").count(), 2, "{host}");
}

#[test]
fn names_that_are_not_berths_own_are_refused() {
    assert!(plain_name("bv0123456789"));
    assert!(!plain_name("../../etc"));
    assert!(!plain_name("bv0123456789abcdef"));
    assert!(!plain_name(""));
    // Removing by such a name touches nothing.
    remove("../x").unwrap();
}
