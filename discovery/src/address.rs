//! Which address an instance tells Consul to reach it on. Binding to a wildcard address says
//! nothing about how peers reach us, so that case needs a configured or detected address.

use std::net::IpAddr;

#[derive(Debug, thiserror::Error)]
#[error(
    "bound to {0}, which peers cannot dial, and no non-loopback interface address was found: \
     set the advertise address"
)]
pub struct NoAdvertiseAddress(pub IpAddr);

/// The address to advertise and a few words on where it came from, for the log.
pub fn advertise_address(
    bind: IpAddr,
    configured: Option<IpAddr>,
) -> Result<(IpAddr, &'static str), NoAdvertiseAddress> {
    if let Some(ip) = configured {
        return Ok((ip, "configured advertise address"));
    }
    if !bind.is_unspecified() {
        return Ok((bind, "bind address"));
    }
    primary_interface_address(bind.is_ipv6())
        .map(|ip| {
            (
                ip,
                "first non-loopback interface address (bound to a wildcard)",
            )
        })
        .ok_or(NoAdvertiseAddress(bind))
}

/// The first address of an up, non-loopback interface, IPv4 preferred unless `v6`.
fn primary_interface_address(v6: bool) -> Option<IpAddr> {
    let addrs = nix::ifaddrs::getifaddrs().ok()?;
    let mut found: Vec<IpAddr> = addrs
        .filter(|a| {
            a.flags.contains(nix::net::if_::InterfaceFlags::IFF_UP)
                && !a
                    .flags
                    .contains(nix::net::if_::InterfaceFlags::IFF_LOOPBACK)
        })
        .filter_map(|a| {
            let addr = a.address?;
            if let Some(v4) = addr.as_sockaddr_in() {
                Some(IpAddr::V4(v4.ip()))
            } else {
                addr.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip()))
            }
        })
        .filter(|ip| !ip.is_loopback() && !ip.is_unspecified())
        .collect();
    found.sort_by_key(|ip| ip.is_ipv6() != v6);
    found.into_iter().next()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_concrete_bind_address_is_advertised_as_is() {
        let bind: IpAddr = "127.0.0.1".parse().expect("ip");
        assert_eq!(
            advertise_address(bind, None).ok(),
            Some((bind, "bind address"))
        );
    }

    #[test]
    fn a_configured_address_wins_over_a_wildcard_bind() {
        let bind: IpAddr = "0.0.0.0".parse().expect("ip");
        let adv: IpAddr = "10.1.2.3".parse().expect("ip");
        assert_eq!(
            advertise_address(bind, Some(adv)).map(|a| a.0).ok(),
            Some(adv)
        );
    }

    #[test]
    fn a_wildcard_bind_never_advertises_the_wildcard() {
        let bind: IpAddr = "0.0.0.0".parse().expect("ip");
        // Either a routable address was detected, or the answer is the error that says to
        // configure one; both are checked, neither is skipped.
        match advertise_address(bind, None) {
            Ok((ip, _)) => assert!(!ip.is_unspecified() && !ip.is_loopback(), "{ip}"),
            Err(e) => assert!(e.to_string().contains("advertise"), "{e}"),
        }
    }
}
