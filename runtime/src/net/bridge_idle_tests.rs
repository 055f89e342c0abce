//! The idle bridge a last detach leaves for its caller ([`LastUser::LeavesIdle`], `berth
//! run`, `berth down`): used again by the next attach, removed only when no lease uses it,
//! also when the removal races an attach, and not by the remover of an earlier round.

use super::*;
use crate::net::lease_store::LeaseStore;
use crate::net::nat::NatRules;
use crate::net::netlink::Netlink;
use crate::net::network::{assert_released, master_of, test_network, DetachOnDrop};
use crate::net::Network;
use crate::state::BerthHome;

/// Runs `test` with a bridge of its own (when root and nft are there), detaching the
/// environments `ids` at the end whatever happens.
fn with_test_network(tag: &str, ids: &[&'static str], test: impl FnOnce(&Network)) {
    let d = tempfile::tempdir().unwrap();
    let home = BerthHome::at(d.path()).unwrap();
    let Some(net) = test_network(&home, tag) else {
        return;
    };
    let _detach: Vec<DetachOnDrop> = ids
        .iter()
        .map(|env_id| DetachOnDrop { net: &net, env_id })
        .collect();
    test(&net);
}

fn leases_of(bridge: &str) -> Option<usize> {
    LeaseStore::for_bridge(bridge)
        .peek()
        .unwrap()
        .map(|st| st.leases.len())
}

/// Makes `env_id` the bridge's only user and leaves the bridge idle as its last detach;
/// returns the bridge to remove.
fn leave_idle(net: &Network, env_id: &str) -> IdleBridge {
    let t = net.plumb_tap(env_id).unwrap();
    let idle = net
        .leave_bridge_idle(env_id)
        .unwrap()
        .expect("an environment on the bridge");
    net.detach(env_id).unwrap();
    let mut nl = Netlink::open().unwrap();
    assert_eq!(nl.link_index(&t.tap).unwrap(), None, "tap removed");
    assert!(nl.link_index(&idle.name).unwrap().is_some(), "bridge kept");
    assert_eq!(leases_of(&idle.name), Some(0), "a record of no leases");
    idle
}

#[test]
fn an_idle_bridge_is_used_again_by_the_next_attach_and_removed_only_when_unused() {
    with_test_network("i", &["idle-a", "idle-b"], |net| {
        used_again_and_removed_only_when_unused(net)
    });
}

fn used_again_and_removed_only_when_unused(net: &Network) {
    let name = net.options().bridge.name.clone();
    let idle = leave_idle(net, "idle-a");
    assert_eq!(idle.name, name);
    assert!(NatRules::exists(&idle.nft_table), "NAT table kept");
    let mut nl = Netlink::open().unwrap();
    let index = nl.link_index(&name).unwrap();

    // The next attach plugs into it as it is.
    let b = net.plumb_tap("idle-b").unwrap();
    assert_eq!(nl.link_index(&name).unwrap(), index, "made anew");
    assert_eq!(master_of(&b.tap).as_deref(), Some(name.as_str()));
    assert!(
        !idle.remove_if_idle_for(Duration::ZERO).unwrap(),
        "removed a bridge in use"
    );
    assert_eq!(master_of(&b.tap).as_deref(), Some(name.as_str()));
    assert_eq!(leases_of(&name), Some(1));

    // Left idle again by its last user; unused now, it goes with its table and record.
    net.leave_bridge_idle("idle-b").unwrap();
    net.detach("idle-b").unwrap();
    assert!(idle.remove_if_idle_for(Duration::ZERO).unwrap());
    assert_released(net, "idle-b", &b.tap);
    assert!(
        !idle.remove_if_idle_for(Duration::ZERO).unwrap(),
        "idempotent"
    );
}

/// The removal of an idle bridge races an environment attaching to it, one or the other
/// starting a little later each round: whichever takes the bridge's lock first, the
/// environment ends plugged into a bridge that exists, with its NAT table, and nothing is
/// left after it. Both orders must have happened.
#[test]
fn removing_an_idle_bridge_never_takes_it_from_an_environment_attaching_meanwhile() {
    with_test_network("r", &["race-prev", "race-next"], race_removal_and_attach);
}

fn race_removal_and_attach(net: &Network) {
    let name = net.options().bridge.name.clone();
    let mut outcomes = [0usize; 2];
    for round in 0..16u64 {
        let idle = leave_idle(net, "race-prev");
        let delay = Duration::from_micros(round / 2 * 400);
        let (remover_waits, attach_waits) = if round % 2 == 0 {
            (delay, Duration::ZERO)
        } else {
            (Duration::ZERO, delay + Duration::from_millis(1))
        };
        let remover = std::thread::spawn(move || {
            std::thread::sleep(remover_waits);
            idle.remove_if_idle_for(Duration::ZERO).unwrap()
        });
        std::thread::sleep(attach_waits);
        let t = net.plumb_tap("race-next").unwrap();
        let removed = remover.join().unwrap();
        outcomes[usize::from(removed)] += 1;
        assert_eq!(
            master_of(&t.tap).as_deref(),
            Some(name.as_str()),
            "round {round} (bridge removed first: {removed}): the environment lost its bridge"
        );
        assert!(NatRules::exists(&name), "round {round}: NAT table gone");
        assert_eq!(leases_of(&name), Some(1), "round {round}");
        net.detach("race-next").unwrap();
        assert_released(net, "race-next", &t.tap);
    }
    assert!(
        outcomes.iter().all(|n| *n > 0),
        "one order never happened (attach first, removal first): {outcomes:?}"
    );
}

/// `up`/`down` (or `run`s) in a loop: the remover of an earlier round wakes after its grace
/// while a later round has used the bridge and left it idle again moments ago. It leaves the
/// bridge to the later round's remover (which removes it once idle for the grace), and so
/// does garbage collection; otherwise the next attach would wait for the bridge's removal
/// and make it again. Fails on a remover that removes any unused bridge.
#[test]
fn an_earlier_rounds_remover_leaves_a_bridge_idled_again_since_to_the_later_one() {
    with_test_network("g", &["round-1", "round-2"], |net| {
        let earlier = leave_idle(net, "round-1");
        let later = leave_idle(net, "round-2");
        assert!(
            !earlier.remove_if_idle_for(IDLE_BRIDGE_GRACE).unwrap(),
            "an earlier round's remover removed a bridge idle for moments"
        );
        let bridge = Bridge::new(
            &BerthHome::at(tempfile::tempdir().unwrap().path()).unwrap(),
            net.options().bridge.clone(),
        );
        assert_eq!(bridge.collect_departed().unwrap(), 0);
        assert_eq!(
            leases_of(&later.name),
            Some(0),
            "garbage collection removed it"
        );
        std::thread::sleep(IDLE_BRIDGE_GRACE);
        assert!(later.remove_if_idle_for(IDLE_BRIDGE_GRACE).unwrap());
        assert_eq!(leases_of(&later.name), None, "removed with its record");
    });
}
