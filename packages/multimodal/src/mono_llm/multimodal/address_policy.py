"""Which network addresses a media fetch may connect to.

A server that fetches client-supplied URLs must not become a proxy into its own network
(server-side request forgery). Only globally routable unicast addresses are allowed; every
range below is refused, and IPv6 forms that embed an IPv4 address (IPv4-mapped,
IPv4-compatible, NAT64, 6to4, Teredo) are judged by the IPv4 address they carry.
"""

from __future__ import annotations

import ipaddress

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Ranges refused on top of what `ipaddress` already reports as private, loopback, link-local,
# multicast, reserved or unspecified. Listed explicitly so the policy does not depend on the
# Python version's idea of `is_global`.
_REFUSED_NETWORKS = tuple(
    ipaddress.ip_network(net)
    for net in (
        "0.0.0.0/8",  # "this network"
        "10.0.0.0/8",  # private
        "100.64.0.0/10",  # carrier-grade NAT (also Alibaba Cloud metadata 100.100.100.200)
        "127.0.0.0/8",  # loopback
        "169.254.0.0/16",  # link-local (cloud metadata 169.254.169.254)
        "172.16.0.0/12",  # private
        "192.0.0.0/24",  # IETF protocol assignments (Oracle Cloud metadata 192.0.0.192)
        "192.0.2.0/24",  # documentation
        "192.88.99.0/24",  # 6to4 relay anycast
        "192.168.0.0/16",  # private
        "198.18.0.0/15",  # benchmarking
        "198.51.100.0/24",  # documentation
        "203.0.113.0/24",  # documentation
        "224.0.0.0/4",  # multicast
        "240.0.0.0/4",  # reserved, and 255.255.255.255 broadcast
        "::/128",  # unspecified
        "::1/128",  # loopback
        "100::/64",  # discard
        "2001:db8::/32",  # documentation
        "fc00::/7",  # unique local (AWS IPv6 metadata fd00:ec2::254)
        "fe80::/10",  # link-local
        "fec0::/10",  # deprecated site-local
        "ff00::/8",  # multicast
    )
)

_IPV4_MAPPED = ipaddress.ip_network("::ffff:0:0/96")
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")
_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))


def embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address stands for, when it is one of the embedding forms."""
    if address in _IPV4_MAPPED or address in _IPV4_COMPATIBLE or any(address in n for n in _NAT64):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]  # the client address; the server half is public by design
    return None


def refusal_reason(address: IPAddress) -> str | None:
    """Why `address` must not be connected to, or None when it is a public unicast address."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.scope_id:
            return "a scoped IPv6 address"
        inner = embedded_ipv4(address)
        if inner is not None and inner != ipaddress.IPv4Address(0):
            reason = refusal_reason(inner)
            if reason is not None:
                return f"{reason} (embedded in {address})"
            if address in _IPV4_MAPPED or address in _IPV4_COMPATIBLE:
                return None
    if any(
        address in network for network in _REFUSED_NETWORKS if network.version == address.version
    ):
        return _describe(address)
    if (
        address.is_private
        or address.is_loopback
        or address.is_link_local
        or address.is_multicast
        or address.is_reserved
        or address.is_unspecified
        or not address.is_global
    ):
        return _describe(address)
    return None


def _describe(address: IPAddress) -> str:
    if address.is_loopback:
        kind = "loopback"
    elif address.is_link_local:
        kind = "link-local"
    elif address.is_multicast:
        kind = "multicast"
    elif address.is_private:
        kind = "private"
    else:
        kind = "non-public"
    return f"the {kind} address {address}"


def parse_ip(host: str) -> IPAddress | None:
    """`host` as an IP address when it is an IP literal (brackets allowed), else None."""
    host = host.strip("[]")
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None
