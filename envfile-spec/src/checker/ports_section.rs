//! `[[ports]]` and `[network]`: published ports (clashes, protocols, host addresses) and the
//! network mode.

use std::net::{IpAddr, Ipv4Addr};

use super::toml_readers::Tbl;
use super::{Checker, Span};
use crate::diagnostic::ErrorKind;
use crate::keys;
use crate::plan::*;

impl Checker<'_> {
    pub(super) fn ports(&mut self, root: &Tbl<'_>, mode: NetworkMode) -> Vec<PortPlan> {
        let tables = self.table_array(root, "ports");
        let mut out: Vec<PortPlan> = Vec::new();
        let mut seen: Vec<(PortPlan, Span)> = Vec::new();
        for p in &tables {
            let port = |c: &mut Self, key: &str| -> Option<(u16, Span)> {
                let what = format!("ports.{key}");
                match p.get(key) {
                    None => {
                        c.error(
                            ErrorKind::MissingKey,
                            p.span.clone(),
                            format!("this port has no `{key}`"),
                            Some("give both ends, e.g. host = 8080 and guest = 80".into()),
                        );
                        None
                    }
                    Some((item, span)) => {
                        let n = c.integer(item, span.clone(), &what)?;
                        match u16::try_from(n) {
                            Ok(n) if n > 0 => Some((n, span)),
                            _ => {
                                c.error(
                                    ErrorKind::BadPort,
                                    span,
                                    format!("`{what}` is {n}; ports are 1 to 65535"),
                                    Some("choose a port between 1 and 65535".into()),
                                );
                                None
                            }
                        }
                    }
                }
            };
            let host = port(self, "host");
            let guest = port(self, "guest");
            let protocol = match p.get("protocol") {
                Some((item, span)) => self
                    .enumeration(item, span, "ports.protocol", keys::PROTOCOLS)
                    .map(|s| {
                        if s == "udp" {
                            Protocol::Udp
                        } else {
                            Protocol::Tcp
                        }
                    }),
                None => Some(Protocol::Tcp),
            };
            let address = match p.get("address") {
                Some((item, span)) => self.string(item, span.clone(), "ports.address").and_then(|a| {
                    match a.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>() {
                        Ok(ip) => Some(ip),
                        Err(_) => {
                            self.error(
                                ErrorKind::BadAddress,
                                span,
                                format!("`ports.address` is not an IP address: {a:?}"),
                                Some("use \"127.0.0.1\" (this machine only, the default) or \"0.0.0.0\" (every interface)".into()),
                            );
                            None
                        }
                    }
                }),
                None => Some(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            };
            let (Some((host, hspan)), Some(protocol), Some(address)) = (host, protocol, address)
            else {
                continue;
            };
            // Clashes are checked even when `guest` is wrong, so all errors show at once.
            let plan = PortPlan {
                host,
                guest: guest.as_ref().map_or(0, |g| g.0),
                protocol,
                address,
            };
            if let Some((_, first)) = seen.iter().find(|(q, _)| ports_clash(q, &plan)) {
                let (line, _) = crate::diagnostic::line_column(self.source, first.start);
                self.error(
                    ErrorKind::DuplicateHostPort,
                    hspan.clone(),
                    format!(
                        "host port {host}/{} on {address} is already forwarded",
                        protocol_str(protocol)
                    ),
                    Some(format!(
                        "the first forward of host port {host} is on line {line}; pick another host port"
                    )),
                );
            }
            seen.push((plan.clone(), hspan));
            if guest.is_some() {
                out.push(plan);
            }
        }
        if !tables.is_empty() && mode != NetworkMode::Isolated {
            let mode_str = if mode == NetworkMode::Host {
                "host"
            } else {
                "none"
            };
            let span = root.key_span("ports");
            self.warn(
                ErrorKind::IgnoredSetting,
                span,
                format!("ports are not forwarded with network mode \"{mode_str}\""),
                Some(if mode == NetworkMode::Host {
                    "with mode = \"host\" services listen on the host directly; remove [[ports]]"
                        .into()
                } else {
                    "mode = \"none\" has no network; remove [[ports]] or use mode = \"isolated\""
                        .into()
                }),
            );
        }
        out
    }

    pub(super) fn network(&mut self, root: &Tbl<'_>) -> NetworkPlan {
        let mut mode = NetworkMode::Isolated;
        if let Some(t) = self.sub_table(
            root,
            "network",
            "write `[network]` with mode = \"isolated\"",
        ) {
            if let Some((item, span)) = t.get("mode") {
                mode = match self.enumeration(item, span, "network.mode", keys::NETWORK_MODES) {
                    Some("host") => NetworkMode::Host,
                    Some("none") => NetworkMode::None,
                    _ => NetworkMode::Isolated,
                };
            }
        }
        NetworkPlan { mode }
    }
}

fn ports_clash(a: &PortPlan, b: &PortPlan) -> bool {
    a.host == b.host
        && a.protocol == b.protocol
        && a.address.is_ipv4() == b.address.is_ipv4()
        && (a.address == b.address || a.address.is_unspecified() || b.address.is_unspecified())
}

fn protocol_str(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
    }
}
