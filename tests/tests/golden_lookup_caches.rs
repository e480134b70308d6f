//! The arrays the program reads in place of a hash lookup: `VIP_FILTER`
//! (is the destination any VIP's address?), `VIP_CACHE` (which VIP, if
//! any, a key is) and `PORT_MAC_CACHE` (the ingress interface's MAC). A
//! clear bit, an empty slot or a cached MAC is trusted, so these tests
//! show that the program reads them, and that `Maps` keeps them true
//! through VIP and port changes and rebuilds them on adoption.

use aya::maps::{Array, Map, MapData};
use lb_common::{
    Reason,
    flow::*,
    maps::{
        CFG_F_LOOKUP_CACHES, CFG_F_VIP_CACHE, CFG_LOOKUP_CACHES, CachedPortMac, CachedVip,
        MAP_PORT_MAC_CACHE, MAP_VIP_CACHE, MAP_VIP_FILTER, PORT_MAC_CACHE_SLOTS, VIP_CACHE_EMPTY,
        VIP_CACHE_SHARED, VIP_CACHE_SLOTS, VIP_F_PORTLESS, VIP_FILTER_WORDS, VipKey,
    },
};
use lb_tests::{harness::*, packets::*};
use lb_userspace::{vip_cache, vip_filter};

fn vip_filter_of(lb: &Lb) -> Array<MapData, u64> {
    let id = lb.maps.lookup_cache_id(MAP_VIP_FILTER).unwrap();
    Array::try_from(Map::Array(MapData::from_id(id).unwrap())).unwrap()
}

fn port_mac_cache_of(lb: &Lb) -> Array<MapData, CachedPortMac> {
    let id = lb.maps.lookup_cache_id(MAP_PORT_MAC_CACHE).unwrap();
    Array::try_from(Map::Array(MapData::from_id(id).unwrap())).unwrap()
}

fn vip_cache_of(lb: &Lb) -> Array<MapData, CachedVip> {
    let id = lb.maps.lookup_cache_id(MAP_VIP_CACHE).unwrap();
    Array::try_from(Map::Array(MapData::from_id(id).unwrap())).unwrap()
}

/// Slots of the VIP cache in use (holding a VIP, or shared).
fn used_slots(cache: &Array<MapData, CachedVip>) -> usize {
    (0..VIP_CACHE_SLOTS)
        .filter(|i| cache.get(i, 0).unwrap().state != VIP_CACHE_EMPTY)
        .count()
}

/// The outer destination of an IPv4 tunnel the program sent.
fn tunnelled_to(out: &Outcome) -> [u8; 4] {
    assert_eq!(out.action, XDP_TX, "{out:?}");
    out.data[30..34].try_into().unwrap()
}

/// Write the configuration an older lbd would (no `CFG_F_LOOKUP_CACHES`);
/// the configuration before, to put back.
fn without_lookup_caches(lb: &mut Lb) -> lb_common::maps::LbConfig {
    let config = lb.maps.config().unwrap();
    lb.maps
        .set_config(&lb_common::maps::LbConfig {
            flags: config.flags & !CFG_LOOKUP_CACHES,
            ..config
        })
        .unwrap();
    config
}

fn set_bits(filter: &Array<MapData, u64>) -> u32 {
    (0..VIP_FILTER_WORDS)
        .map(|i| filter.get(&i, 0).unwrap().count_ones())
        .sum()
}

#[test]
fn golden_vip_filter_is_read_and_rebuilt_from_the_vips() {
    let mut lb = Lb::new();
    let key = vip_key(VIP_V4, 80, PROTO_TCP);
    lb.add_vip(key, 0, &[BackendSpec::new(1, BACKEND_V4[0])]);
    let (word, mask) = vip_filter::position(&key);
    let mut filter = vip_filter_of(&lb);
    assert_eq!(filter.get(&word, 0).unwrap(), mask, "the VIP's bit, set");
    assert_eq!(set_bits(&filter), 1);

    let syn = to_lb(&tcp4(CLIENT_V4, 40000, VIP_V4, 80, Tcp::Syn, b""));
    assert_eq!(lb.run(&syn).action, XDP_TX);
    let other = to_lb(&tcp4(CLIENT_V4, 40000, "198.51.100.99", 80, Tcp::Syn, b""));
    assert_eq!(lb.run(&other).action, XDP_PASS);
    assert_eq!(lb.count(Reason::PassNonVip), 1);

    // A filter without the VIP's bit hides the VIP: the program trusts a
    // clear bit (which is why `Maps` sets it before the VIP is written).
    filter.set(word, 0, 0).unwrap();
    assert_eq!(lb.run(&syn).action, XDP_PASS);
    assert_eq!(lb.count(Reason::PassNonVip), 2);
    // Off (an older lbd's configuration) the filter is not read.
    let config = without_lookup_caches(&mut lb);
    assert_eq!(lb.run(&syn).action, XDP_TX);
    // What lbd does before it attaches: the filter rebuilt from VIPS.
    lb.maps.sync_vip_filter().unwrap();
    assert_eq!(filter.get(&word, 0).unwrap(), mask);
    lb.maps.set_config(&config).unwrap();
    assert_eq!(lb.run(&syn).action, XDP_TX);
    assert_eq!(lb.count(Reason::PassNonVip), 2);
}

#[test]
fn golden_removing_a_vip_keeps_the_bit_another_vip_on_its_address_needs() {
    let mut lb = Lb::new();
    let web = vip_key(VIP_V4, 80, PROTO_TCP);
    let dns = vip_key(VIP_V4, 53, PROTO_UDP);
    lb.add_vip(web, 0, &[BackendSpec::new(1, BACKEND_V4[0])]);
    lb.add_vip(dns, 0, &[BackendSpec::new(2, BACKEND_V4[1])]);
    let filter = vip_filter_of(&lb);
    let (word, mask) = vip_filter::position(&web);

    lb.maps.remove_vip(&web).unwrap();
    assert_eq!(
        filter.get(&word, 0).unwrap() & mask,
        mask,
        "DNS still needs it"
    );
    let query = to_lb(&udp4(CLIENT_V4, 5000, VIP_V4, 53, b"q"));
    assert_eq!(lb.run(&query).action, XDP_TX);

    lb.maps.remove_vip(&dns).unwrap();
    assert_eq!(set_bits(&filter), 0, "no VIP left, no bit left");
    assert_eq!(lb.run(&query).action, XDP_PASS);
    assert_eq!(lb.count(Reason::PassNonVip), 1);
}

/// Two VIP addresses can share a bit (a filter is not a set): removing one
/// must keep the bit the other needs.
#[test]
fn golden_removing_a_vip_keeps_the_bit_of_another_address_that_shares_it() {
    let mut lb = Lb::new();
    // The IPv6 fold XORs the address's words: these two fold alike.
    let one = vip_key("2001:db8::1", 443, PROTO_TCP);
    let other = vip_key("2001:db8::1:0:0", 443, PROTO_TCP);
    assert_eq!(vip_filter::position(&one), vip_filter::position(&other));
    lb.add_vip(one, 0, &[BackendSpec::new(1, BACKEND_V6[0])]);
    lb.add_vip(other, 0, &[BackendSpec::new(2, BACKEND_V6[1])]);
    lb.maps.remove_vip(&one).unwrap();
    let syn = to_lb(&tcp6(
        CLIENT_V6,
        40000,
        "2001:db8::1:0:0",
        443,
        Tcp::Syn,
        b"",
    ));
    assert_eq!(lb.run(&syn).action, XDP_TX);
    lb.maps.remove_vip(&other).unwrap();
    assert_eq!(set_bits(&vip_filter_of(&lb)), 0);
    assert_eq!(lb.run(&syn).action, XDP_PASS);
    assert_eq!(lb.count(Reason::PassNonVip), 1);
}

/// The MAC check of every VIP frame (`pass_other_host`) reads the cached
/// MAC of the ingress interface; a cache that disagrees with
/// `TX_PORT_MACS` is repaired by `sync_lookup_caches`, and a removed port
/// leaves no slot behind.
#[test]
fn golden_port_mac_cache_answers_the_mac_check_and_follows_the_ports() {
    use lb_tests::netns::{Netns, veth};
    let ns = Netns::new("maccache");
    let peer = Netns::new("maccpeer");
    veth(&ns, "lb0", &peer, "p0");
    let ifindex = ns.ifindex("lb0");
    let slot = ifindex % PORT_MAC_CACHE_SLOTS;
    let mut lb = Lb::new();
    lb.add_vip(
        vip_key(VIP_V4, 80, PROTO_TCP),
        0,
        &[BackendSpec::new(1, BACKEND_V4[0])],
    );
    ns.enter(|| lb.maps.add_tx_port(ifindex, LB_MAC)).unwrap();
    let mut cache = port_mac_cache_of(&lb);
    let cached = CachedPortMac {
        ifindex,
        mac: LB_MAC,
        _pad: [0; 2],
    };
    assert_eq!(cache.get(&slot, 0).unwrap(), cached);
    let syn = to_lb(&tcp4(CLIENT_V4, 40000, VIP_V4, 80, Tcp::Syn, b""));
    assert_eq!(ns.enter(|| lb.run_on(ifindex, &syn)).action, XDP_TX);

    // The cache is what the check reads: a wrong MAC there passes the
    // frame as another host's, though TX_PORT_MACS has the right one.
    let wrong = CachedPortMac {
        mac: [0x02, 0, 0, 0, 0, 0x77],
        ..cached
    };
    cache.set(slot, wrong, 0).unwrap();
    assert_eq!(ns.enter(|| lb.run_on(ifindex, &syn)).action, XDP_PASS);
    assert_eq!(lb.count(Reason::PassOtherHost), 1);
    ns.enter(|| lb.maps.sync_lookup_caches()).unwrap();
    assert_eq!(cache.get(&slot, 0).unwrap(), cached);
    assert_eq!(ns.enter(|| lb.run_on(ifindex, &syn)).action, XDP_TX);

    ns.enter(|| lb.maps.remove_tx_port(ifindex)).unwrap();
    assert_eq!(cache.get(&slot, 0).unwrap(), CachedPortMac::default());
    // Not a port lbd wrote: any unicast frame is ours, as before the cache.
    assert_eq!(ns.enter(|| lb.run_on(ifindex, &syn)).action, XDP_TX);
    assert_eq!(lb.count(Reason::PassOtherHost), 1);
}

/// The program answers which VIP a key is from `VIP_CACHE`: the slot's
/// VIP entry is the one it uses, an empty slot is no VIP (`VIPS` is not
/// asked), a shared slot sends it to `VIPS`, and without
/// `CFG_F_LOOKUP_CACHES` the cache is not read. `sync_lookup_caches`
/// repairs a slot that disagrees with `VIPS`.
#[test]
fn golden_vip_cache_is_what_the_program_reads_and_is_rebuilt_from_the_vips() {
    let mut lb = Lb::new();
    let web = vip_key(VIP_V4, 80, PROTO_TCP);
    let dns = vip_key(VIP_V4, 53, PROTO_UDP);
    let web_meta = lb.add_vip(web, 0, &[BackendSpec::new(1, BACKEND_V4[0])]);
    let dns_meta = lb.add_vip(dns, 0, &[BackendSpec::new(2, BACKEND_V4[1])]);
    assert_ne!(vip_cache::slot(&web), vip_cache::slot(&dns));
    let slot = vip_cache::slot(&web);
    let mut cache = vip_cache_of(&lb);
    assert_eq!(
        cache.get(&slot, 0).unwrap(),
        CachedVip::holding(&web, &web_meta),
        "the VIP in its slot, with its live ring"
    );
    assert_eq!(used_slots(&cache), 2);
    let syn = to_lb(&tcp4(CLIENT_V4, 40000, VIP_V4, 80, Tcp::Syn, b""));
    let web_backend = v4(BACKEND_V4[0]);
    assert_eq!(tunnelled_to(&lb.run(&syn)), web_backend);

    // The slot's entry is what the packet is placed by: DNS's entry in
    // web's slot sends web's SYN through DNS's ring.
    let as_dns = CachedVip::holding(&web, &dns_meta);
    cache.set(slot, as_dns, 0).unwrap();
    assert_eq!(tunnelled_to(&lb.run(&syn)), v4(BACKEND_V4[1]));
    // An empty slot is no VIP, though VIPS has it.
    cache.set(slot, CachedVip::default(), 0).unwrap();
    assert_eq!(lb.run(&syn).action, XDP_PASS);
    assert_eq!(lb.count(Reason::PassNonVip), 1);
    // A shared slot is looked up in VIPS.
    let shared = CachedVip {
        state: VIP_CACHE_SHARED,
        ..CachedVip::default()
    };
    cache.set(slot, shared, 0).unwrap();
    assert_eq!(tunnelled_to(&lb.run(&syn)), web_backend);
    // Off (an older lbd's configuration), the cache is not read; nor with
    // the filter's bit alone, as lbds from before the cache write it.
    cache.set(slot, CachedVip::default(), 0).unwrap();
    let config = without_lookup_caches(&mut lb);
    assert_eq!(tunnelled_to(&lb.run(&syn)), web_backend);
    lb.maps
        .set_config(&lb_common::maps::LbConfig {
            flags: (config.flags & !CFG_F_VIP_CACHE) | CFG_F_LOOKUP_CACHES,
            ..config
        })
        .unwrap();
    assert_eq!(tunnelled_to(&lb.run(&syn)), web_backend);
    // What lbd does before it attaches: the cache rebuilt from VIPS.
    lb.maps.sync_lookup_caches().unwrap();
    assert_eq!(
        cache.get(&slot, 0).unwrap(),
        CachedVip::holding(&web, &web_meta)
    );
    lb.maps.set_config(&config).unwrap();
    assert_eq!(tunnelled_to(&lb.run(&syn)), web_backend);
    assert_eq!(lb.count(Reason::PassNonVip), 1);
}

/// Two VIPs whose keys fall in one slot: the slot is marked shared and
/// both are found in `VIPS`; removing one leaves the slot holding the
/// other, and removing both leaves no slot in use.
#[test]
fn golden_vips_sharing_a_cache_slot_are_found_and_removing_one_keeps_the_other() {
    let first = vip_key(VIP_V4, 443, PROTO_TCP);
    let port = (1..=u16::MAX)
        .find(|&p| {
            p != 443 && vip_cache::slot(&vip_key(VIP_V4, p, PROTO_TCP)) == vip_cache::slot(&first)
        })
        .expect("4,096 slots: some port shares 443's");
    let second = vip_key(VIP_V4, port, PROTO_TCP);
    let mut lb = Lb::new();
    lb.add_vip(first, 0, &[BackendSpec::new(1, BACKEND_V4[0])]);
    let second_meta = lb.add_vip(second, 0, &[BackendSpec::new(2, BACKEND_V4[1])]);
    let cache = vip_cache_of(&lb);
    let slot = vip_cache::slot(&first);
    assert_eq!(cache.get(&slot, 0).unwrap().state, VIP_CACHE_SHARED);
    assert_eq!(used_slots(&cache), 1);
    let to_first = to_lb(&tcp4(CLIENT_V4, 40000, VIP_V4, 443, Tcp::Syn, b""));
    let to_second = to_lb(&tcp4(CLIENT_V4, 40000, VIP_V4, port, Tcp::Syn, b""));
    assert_eq!(tunnelled_to(&lb.run(&to_first)), v4(BACKEND_V4[0]));
    assert_eq!(tunnelled_to(&lb.run(&to_second)), v4(BACKEND_V4[1]));

    lb.maps.remove_vip(&first).unwrap();
    assert_eq!(
        cache.get(&slot, 0).unwrap(),
        CachedVip::holding(&second, &second_meta),
        "the slot holds the VIP left in it"
    );
    assert_eq!(lb.run(&to_first).action, XDP_PASS);
    assert_eq!(lb.count(Reason::PassNonVip), 1);
    assert_eq!(tunnelled_to(&lb.run(&to_second)), v4(BACKEND_V4[1]));
    lb.maps.remove_vip(&second).unwrap();
    assert_eq!(used_slots(&cache), 0);
    assert_eq!(lb.run(&to_second).action, XDP_PASS);
}

/// A published ring reaches the cache: the slot follows the VIP's
/// active ring, so new flows go to the new ring's backends.
#[test]
fn golden_a_published_ring_is_the_one_the_cached_vip_uses() {
    let mut lb = Lb::new();
    let web = vip_key(VIP_V4, 80, PROTO_TCP);
    lb.add_vip(web, 0, &[BackendSpec::new(1, BACKEND_V4[0])]);
    let cache = vip_cache_of(&lb);
    let slot = vip_cache::slot(&web);
    let before = cache.get(&slot, 0).unwrap().meta.active_ring;
    lb.set_backends(&web, &[BackendSpec::new(2, BACKEND_V4[1])]);
    let meta = lb.maps.vip(&web).unwrap().unwrap();
    assert_ne!(meta.active_ring, before);
    assert_eq!(
        cache.get(&slot, 0).unwrap(),
        CachedVip::holding(&web, &meta)
    );
    let syn = to_lb(&tcp4(CLIENT_V4, 40000, VIP_V4, 80, Tcp::Syn, b""));
    assert_eq!(tunnelled_to(&lb.run(&syn)), v4(BACKEND_V4[1]));
}

/// A port-less VIP is found through its own slot (port 0) when the exact
/// key's slot says no VIP.
#[test]
fn golden_a_portless_vip_is_found_through_the_cache() {
    let mut lb = Lb::new();
    let any_port: VipKey = vip_key(VIP_V4, 0, PROTO_TCP);
    lb.add_vip(
        any_port,
        VIP_F_PORTLESS,
        &[BackendSpec::new(1, BACKEND_V4[0])],
    );
    let mut cache = vip_cache_of(&lb);
    let slot = vip_cache::slot(&any_port);
    assert_eq!(
        cache.get(&slot, 0).unwrap().meta.flags & VIP_F_PORTLESS,
        VIP_F_PORTLESS
    );
    let syn = to_lb(&tcp4(CLIENT_V4, 40000, VIP_V4, 8080, Tcp::Syn, b""));
    assert_eq!(tunnelled_to(&lb.run(&syn)), v4(BACKEND_V4[0]));
    cache.set(slot, CachedVip::default(), 0).unwrap();
    assert_eq!(lb.run(&syn).action, XDP_PASS);
    assert_eq!(lb.count(Reason::PassNonVip), 1);
}

/// An IPv6 VIP's key is found in its slot the way userspace placed it
/// there (the program reads the address a word at a time).
#[test]
fn golden_an_ipv6_vip_is_found_through_its_cache_slot() {
    let mut lb = Lb::new();
    let key = vip_key(VIP_V6, 443, PROTO_TCP);
    let meta = lb.add_vip(key, 0, &[BackendSpec::new(1, BACKEND_V6[0])]);
    let mut cache = vip_cache_of(&lb);
    let slot = vip_cache::slot(&key);
    assert_eq!(
        cache.get(&slot, 0).unwrap(),
        CachedVip::holding(&key, &meta)
    );
    let syn = to_lb(&tcp6(CLIENT_V6, 40000, VIP_V6, 443, Tcp::Syn, b""));
    let out = lb.run(&syn);
    assert_eq!(out.action, XDP_TX, "{out:?}");
    assert_eq!(
        &out.data[14 + 24..14 + 40],
        &v6(BACKEND_V6[0]),
        "outer destination"
    );
    cache.set(slot, CachedVip::default(), 0).unwrap();
    assert_eq!(lb.run(&syn).action, XDP_PASS);
    assert_eq!(lb.count(Reason::PassNonVip), 1);
}
