//! Why a packet got its verdict: the names operators read in `lbctl stats`
//! and in metrics.
//!
//! Every packet the load balancer sees is counted under exactly one verdict
//! reason. Event reasons are counted in addition, for things worth knowing
//! (a connection-table hit, a fragment) that are not verdicts.

macro_rules! reasons {
    ($enum:ident, $count:ident { $($variant:ident = $name:literal, $kind:ident, $doc:literal;)* }) => {
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum $enum {
            $(#[doc = $doc] $variant,)*
        }
        impl $enum {
            pub const ALL: &'static [$enum] = &[$($enum::$variant,)*];
            /// The counter's name: stable, snake_case, shown to operators.
            pub const fn name(self) -> &'static str {
                match self { $($enum::$variant => $name,)* }
            }
            /// Inlined: the packet path asks it for every verdict, and a
            /// BPF-to-BPF call costs more than the match.
            #[inline(always)]
            pub const fn kind(self) -> ReasonKind {
                match self { $($enum::$variant => ReasonKind::$kind,)* }
            }
            pub const fn help(self) -> &'static str {
                match self { $($enum::$variant => $doc,)* }
            }
        }
        pub const $count: u32 = $enum::ALL.len() as u32;
    };
}

/// What a reason's counter means for the packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReasonKind {
    /// Sent on to a backend.
    Forwarded,
    /// Handed to the kernel untouched (XDP_PASS).
    Passed,
    /// Dropped (XDP_DROP).
    Dropped,
    /// Answered by the load balancer itself instead of forwarded: an ICMP
    /// error sent back to the client (XDP_TX).
    Answered,
    /// Not a verdict: counted in addition to one.
    Event,
}

reasons!(Reason, REASON_COUNT {
    Tx = "tx", Forwarded, "forwarded back out of the ingress interface (XDP_TX)";
    Redirect = "redirect", Forwarded, "forwarded to another interface (XDP_REDIRECT)";
    PassNotIp = "pass_not_ip", Passed, "not IPv4 or IPv6 (ARP, stacked VLANs, ...)";
    PassNotConfigured = "pass_not_configured", Passed, "no configuration written yet";
    PassShortFrame = "pass_short_frame", Passed, "frame shorter than its Ethernet/VLAN header";
    PassBadIpHeader = "pass_bad_ip_header", Passed, "truncated IP header, bad version, IHL or length";
    PassBadL4Header = "pass_bad_l4_header", Passed, "truncated TCP/UDP/ICMP header";
    PassIpv6ExtHeaders = "pass_ipv6_ext_headers", Passed, "IPv6 extension header chain longer than four, or an extension header cut short";
    PassNonVip = "pass_non_vip", Passed, "not addressed to a VIP";
    PassFragUntracked = "pass_frag_untracked", Passed, "non-first fragment whose first fragment was not seen";
    DropNoBackend = "drop_no_backend", Dropped, "VIP has no backend in service";
    DropBackendDown = "drop_backend_down", Dropped, "ring still points at a backend marked down";
    DropTooBig = "drop_too_big", Dropped, "encapsulated packet would exceed the MTU, not answered (no DF, rate limit, ICMP inside)";
    DropNoRoute = "drop_no_route", Dropped, "no next hop (FIB lookup failed, no gateway MAC)";
    DropNoTxPort = "drop_no_tx_port", Dropped, "egress interface not in the TX port map";
    DropEncapFailed = "drop_encap_failed", Dropped, "could not grow the packet headroom";
    ConnHit = "conn_hit", Event, "connection table hit";
    ConnMiss = "conn_miss", Event, "connection table miss: backend chosen from the ring";
    ConnRescheduled = "conn_rescheduled", Event, "entry's backend was down or removed, or the entry was another VIP's: flow moved";
    SynNotTracked = "syn_not_tracked", Event, "TCP SYN: not entered until the handshake's ACK (SYN-flood guard)";
    NewFlow = "new_flow", Event, "new flow (TCP SYN, or first UDP packet)";
    IcmpTooBig = "icmp_too_big", Event, "ICMP too-big about a VIP flow, sent to that flow's backend";
    Fragment = "fragment", Event, "IP fragment, of VIP traffic or not";
    PassIcmpQuotedFragment = "pass_icmp_quoted_fragment", Passed, "ICMP too-big quoting a non-first fragment: it holds no ports to find the flow by";
    DropL2DsrOffLink = "drop_l2_dsr_off_link", Dropped, "l2_dsr backend not on the LB's link: the FIB's next hop is a router, which would send the frame back to the VIP";
    ConnProbation = "conn_probation", Event, "first non-SYN packet of an unknown flow: entered in the probation table, not the connection table";
    ConnPromoted = "conn_promoted", Event, "second packet of a flow in probation: flow moved into the connection table";
    AnswerTooBig = "answer_too_big", Answered, "encapsulated packet would exceed the MTU: answered with ICMP too-big";
    ConnPromotionDeferred = "conn_promotion_deferred", Event, "second or later packet of a flow in probation, promotion rate limit reached: flow left in the probation table";
    SecondChance = "second_chance", Event, "TCP packet (or ICMP too-big about a TCP flow) of a flow in neither table, on a ring slot whose owner changed within the VIP's second-chance window: sent to the slot's owner in GUE with the previous owner as a second hop";
    PassOtherHost = "pass_other_host", Passed, "VIP packet in a frame addressed to another host's MAC (a switch flooding unknown unicast, a promiscuous NIC) or to a group address: not balanced here, the host it was sent to balances it";
    CaptureLost = "capture_lost", Event, "packet chosen for `lbctl capture` whose record found the capture ring buffer full: not in the capture (its verdict is unchanged)";
});

reasons!(DecapReason, DECAP_REASON_COUNT {
    Decapsulated = "decapsulated", Passed, "outer header stripped, inner packet passed up";
    PassNotTunnel = "pass_not_tunnel", Passed, "not an IP-in-IP packet, nor UDP to the GUE port (with second chance on)";
    PassNotOurAddress = "pass_not_our_address", Passed, "tunnel packet for an address not in DECAP_ADDRS, or routed on past ours by an IPv6 routing header";
    PassMalformed = "pass_malformed", Passed, "truncated or inconsistent outer, UDP, GUE or inner header (a GUE header of another version, with flags, not our hop list or more hops than one), an IPv6 extension-header chain not walkable to its end, or a fragmented tunnel";
    DropUntrustedSource = "drop_untrusted_source", Dropped, "tunnel (or IPv6 packet whose extension headers may hide one) for one of our addresses from an outer source not allowed, or GUE with a hop left from a peer (only the allowed sources, the load balancers, may send those)";
    DropBadOuterChecksum = "drop_bad_outer_checksum", Dropped, "tunnel whose outer IPv4 header checksum is wrong";
    DropCeNotEct = "drop_ce_not_ect", Dropped, "outer ECN CE over an inner packet that is not ECN-capable (RFC 6040)";
    SecondChanceReceived = "second_chance_received", Passed, "GUE packet with no hop left (sent on by the flow's new ring owner to this backend, its previous one): stripped, passed up";
    SecondChanceLocal = "second_chance_local", Passed, "GUE packet with a second hop that stays here: this backend has a socket for the flow (established, request or time-wait; for an ICMP too-big, for the connection it quotes), the ACK carries a valid SYN cookie, or it is neither a TCP segment of a connection nor a too-big about one (a SYN, other ICMP, not TCP): stripped, passed up";
    SecondChanceForwarded = "second_chance_forwarded", Forwarded, "GUE packet with a second hop and no socket here: sent on to the hop with the hop list shortened, from this backend's address (XDP_TX)";
    DropSecondHopNotPeer = "drop_second_hop_not_peer", Dropped, "GUE packet with a second hop not in DECAP_PEERS (lb-decap --peer): dropped before any socket lookup, never sent on outside the configured backends";
    DropSecondHopNoRoute = "drop_second_hop_no_route", Dropped, "GUE packet to send on, but the kernel has no route to the second hop out of the interface it came in on";
    DropSecondHopRewriteFailed = "drop_second_hop_rewrite_failed", Dropped, "GUE packet to send on whose new headers could not be written once its head was moved (not expected to happen): dropped rather than passed up half rewritten";
});

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discriminants_are_dense_indices() {
        for (i, r) in Reason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i, "{}", r.name());
        }
        assert_eq!(REASON_COUNT as usize, Reason::ALL.len());
        for (i, r) in DecapReason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i, "{}", r.name());
        }
        assert_eq!(DECAP_REASON_COUNT as usize, DecapReason::ALL.len());
    }

    #[test]
    fn decap_reasons_are_verdicts() {
        for r in DecapReason::ALL {
            assert!(
                matches!(
                    r.kind(),
                    ReasonKind::Passed | ReasonKind::Dropped | ReasonKind::Forwarded
                ),
                "{}",
                r.name()
            );
        }
    }
}
