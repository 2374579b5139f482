use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Mutex;

use futures::executor::block_on;

use proptest::prelude::{ProptestConfig, any, prop_assert, prop_assert_eq, proptest};

use super::*;

fn net(s: &str) -> IpNet {
    s.parse().expect("cidr")
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

fn holder(n: u32) -> Holder {
    Holder {
        namespace: "ns".into(),
        name: format!("web-{n}"),
        uid: format!("uid-{n}"),
    }
}

#[test]
fn pools_split_into_blocks_of_the_configured_size() {
    let blocks = split(net("10.10.0.0/24"), 26);
    assert_eq!(blocks.len(), 4);
    assert_eq!(blocks[1], net("10.10.0.64/26"));
    assert_eq!(split(net("10.10.0.0/28"), 26), vec![net("10.10.0.0/28")]);
    let v6 = split(net("fd00::/120"), 122);
    assert_eq!((v6.len(), v6[3]), (4, net("fd00::c0/122")));
}

#[test]
fn network_broadcast_and_reserved_addresses_are_never_handed_out() {
    let mut block = Block::new(net("10.0.0.0/29"), &[ip("10.0.0.1")]).expect("block");
    assert_eq!(block.capacity(), 5);
    let got: Vec<IpAddr> = (0..5)
        .map(|n| block.allocate(&holder(n)).expect("free"))
        .collect();
    assert_eq!(
        got,
        ["10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5", "10.0.0.6"].map(ip)
    );
    assert_eq!(
        block.allocate(&holder(9)),
        Err(AllocError::BlockFull(net("10.0.0.0/29")))
    );
}

#[test]
fn a_holder_gets_the_same_address_again_and_only_it_can_release_it() {
    let mut block = Block::new(net("fd00::/124"), &[]).expect("block");
    let a = block.allocate(&holder(1)).expect("free");
    assert_eq!(a, ip("fd00::1"));
    assert_eq!(block.allocate(&holder(1)), Ok(a));
    let stranger = Holder {
        uid: "other-uid".into(),
        ..holder(1)
    };
    assert!(matches!(
        block.release(a, &stranger),
        Err(AllocError::NotHolder { .. })
    ));
    block.release(a, &holder(1)).expect("released");
    block
        .release(a, &holder(1))
        .expect("releasing twice is a no-op");
    assert!(matches!(
        block.release(ip("fd01::1"), &holder(1)),
        Err(AllocError::OutsideBlock { .. })
    ));
    assert_eq!(
        block.allocate(&holder(2)),
        Ok(a),
        "freed addresses are handed out again"
    );
}

#[test]
fn blocks_read_back_from_their_allocations_equal_the_originals() {
    let mut block = Block::new(net("10.1.0.0/26"), &[ip("10.1.0.10")]).expect("block");
    for n in 0..20 {
        block.allocate(&holder(n)).expect("free");
    }
    block.release(ip("10.1.0.5"), &holder(4)).expect("release");
    let copied: Vec<(IpAddr, Holder)> = block.allocations().map(|(a, h)| (a, h.clone())).collect();
    let reread =
        Block::with_allocations(net("10.1.0.0/26"), &[ip("10.1.0.10")], copied).expect("reread");
    assert_eq!(reread, block);
}

/// The API server, for blocks: versions bumped on every write, writes refused when stale.
#[derive(Default)]
struct MemoryStore {
    blocks: Mutex<BTreeMap<String, (Block, u64)>>,
}

impl MemoryStore {
    fn insert(&self, name: &str, block: Block, version: u64) {
        self.lock().insert(name.into(), (block, version));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, (Block, u64)>> {
        self.blocks.lock().expect("store lock")
    }

    fn get(&self, name: &str) -> (Block, u64) {
        self.lock()[name].clone()
    }

    fn bump(&self, name: &str) {
        if let Some(entry) = self.lock().get_mut(name) {
            entry.1 += 1;
        }
    }
}

impl BlockStore for MemoryStore {
    type Version = u64;

    async fn read(&self, name: &str) -> Result<(Block, u64), AllocError> {
        self.lock()
            .get(name)
            .cloned()
            .ok_or_else(|| AllocError::Store(StoreError::NotFound(format!("no block {name}"))))
    }

    async fn compare_and_swap(
        &self,
        name: &str,
        version: u64,
        block: Block,
    ) -> Result<bool, AllocError> {
        let mut blocks = self.lock();
        let entry = blocks
            .get_mut(name)
            .ok_or_else(|| AllocError::Store(StoreError::NotFound(format!("no block {name}"))))?;
        if entry.1 != version {
            return Ok(false);
        }
        *entry = (block, version + 1);
        Ok(true)
    }
}

/// An allocator mid-operation: it has read a block and will write it later, after the other
/// allocator may have written in between (a deposed leader, a second manager).
enum Pending {
    Idle,
    Allocating {
        block: String,
        read: Block,
        version: u64,
        holder: Holder,
        ip: IpAddr,
    },
    Releasing {
        block: String,
        read: Block,
        version: u64,
        holder: Holder,
        ip: IpAddr,
    },
}

struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// Runs `steps` interleaved operations of two allocators over one store and checks after
/// every step that no address has two holders and every address is inside its block.
fn race(
    cidr: &str,
    block_prefix: u8,
    seed: u64,
    steps: usize,
) -> Result<(MemoryStore, usize), String> {
    let mut rng = XorShift(seed | 1);
    let store = MemoryStore::default();
    let names: Vec<String> = split(net(cidr), block_prefix)
        .into_iter()
        .take(4)
        .enumerate()
        .map(|(i, b)| {
            let name = format!("block-{i}");
            store.insert(&name, Block::new(b, &[]).expect("block"), 1);
            name
        })
        .collect();
    // Ground truth: what successful writes handed out.
    let mut held: HashMap<IpAddr, Holder> = HashMap::new();
    let mut actors = [Pending::Idle, Pending::Idle];
    let mut writes = 0;
    for _ in 0..steps {
        let actor = rng.below(2) as usize;
        match std::mem::replace(&mut actors[actor], Pending::Idle) {
            Pending::Idle => {
                let block = names[rng.below(names.len() as u64) as usize].clone();
                let (mut read, version) =
                    block_on(store.read(&block)).map_err(|e| e.to_string())?;
                let h = holder(rng.below(300) as u32);
                let existing = read.allocations().find(|(_, x)| *x == &h).map(|(a, _)| a);
                actors[actor] = match existing {
                    Some(ip) if rng.below(2) == 0 => {
                        read.release(ip, &h).map_err(|e| e.to_string())?;
                        Pending::Releasing {
                            block,
                            read,
                            version,
                            holder: h,
                            ip,
                        }
                    }
                    _ => match read.allocate(&h) {
                        Ok(ip) => Pending::Allocating {
                            block,
                            read,
                            version,
                            holder: h,
                            ip,
                        },
                        Err(_) => Pending::Idle,
                    },
                };
            }
            Pending::Allocating {
                block,
                read,
                version,
                holder: h,
                ip,
            } => {
                let cidr = read.cidr;
                if block_on(store.compare_and_swap(&block, version, read))
                    .map_err(|e| e.to_string())?
                {
                    writes += 1;
                    if !cidr.contains(&ip) {
                        return Err(format!("{ip} handed out from {cidr}"));
                    }
                    if let Some(other) = held.get(&ip)
                        && other != &h
                    {
                        return Err(format!("{ip} handed to {h:?} while {other:?} holds it"));
                    }
                    held.insert(ip, h);
                }
            }
            Pending::Releasing {
                block,
                read,
                version,
                holder: h,
                ip,
            } => {
                if block_on(store.compare_and_swap(&block, version, read))
                    .map_err(|e| e.to_string())?
                {
                    writes += 1;
                    if held.get(&ip) == Some(&h) {
                        held.remove(&ip);
                    }
                }
            }
        }
        // Re-home: a block changes owner now and then, which is one more write racing the
        // allocators (here only its version moves).
        if rng.below(50) == 0 {
            store.bump(&names[rng.below(names.len() as u64) as usize]);
        }
    }
    // The store alone is the truth: read back, it says exactly what the writes handed out.
    let mut from_store: HashMap<IpAddr, Holder> = HashMap::new();
    for (block, _) in store.lock().values() {
        for (a, h) in block.allocations() {
            if from_store.insert(a, h.clone()).is_some() {
                return Err(format!("{a} allocated twice in the store"));
            }
        }
    }
    if from_store != held {
        return Err("state read back from the blocks differs from what was handed out".into());
    }
    Ok((store, writes))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// 64 cases x 2,000 steps per family: more than 100,000 operations by two racing
    /// allocators on IPv4 and on IPv6.
    #[test]
    fn racing_allocators_never_hand_out_an_address_twice(seed in any::<u64>()) {
        for (cidr, prefix) in [("10.20.0.0/16", 26u8), ("fd00:20::/112", 122u8)] {
            let result = race(cidr, prefix, seed, 2000);
            prop_assert!(result.is_ok(), "{cidr}: {:?}", result.err());
        }
    }

    /// Blocks survive a restart: re-reading each block from its allocations gives it back.
    #[test]
    fn state_read_after_a_restart_equals_state_before(seed in any::<u64>()) {
        let (store, _) = race("10.30.0.0/22", 26, seed, 500).map_err(proptest::test_runner::TestCaseError::fail)?;
        for (block, _) in store.lock().values() {
            let copied: Vec<(IpAddr, Holder)> = block.allocations().map(|(a, h)| (a, h.clone())).collect();
            let reread = Block::with_allocations(block.cidr, &[], copied);
            prop_assert_eq!(reread.as_ref(), Ok(block));
        }
    }
}

#[test]
fn allocate_and_release_retry_on_conflicts() {
    let store = MemoryStore::default();
    store.insert("b", Block::new(net("10.0.0.0/26"), &[]).expect("block"), 7);
    let a = block_on(allocate_in(&store, "b", &holder(1))).expect("allocated");
    assert_eq!(block_on(allocate_in(&store, "b", &holder(1))), Ok(a));
    block_on(release_in(&store, "b", a, &holder(1))).expect("released");
    let (block, version) = store.get("b");
    assert_eq!(block.allocated(), 0);
    assert_eq!(version, 9, "two writes: the allocation and the release");
}

#[test]
fn a_stale_write_is_refused() {
    let store = MemoryStore::default();
    store.insert("b", Block::new(net("10.0.0.0/26"), &[]).expect("block"), 1);
    let (mut mine, version) = store.get("b");
    let theirs_ip = block_on(allocate_in(&store, "b", &holder(2))).expect("other allocator");
    let mine_ip = mine.allocate(&holder(1)).expect("free in my stale copy");
    assert_eq!(mine_ip, theirs_ip, "both picked the same lowest address");
    assert_eq!(
        block_on(store.compare_and_swap("b", version, mine)),
        Ok(false),
        "the stale write loses"
    );
}

#[test]
fn blocks_are_named_and_listed_lazily() {
    let v4: IpNet = "10.20.0.0/24".parse().expect("cidr");
    let names: Vec<String> = blocks_of(v4, 26).map(|b| block_name("blue", &b)).collect();
    assert_eq!(
        names,
        [
            "blue-10-20-0-0-26",
            "blue-10-20-0-64-26",
            "blue-10-20-0-128-26",
            "blue-10-20-0-192-26"
        ]
    );
    // 2^58 blocks: only the first few are ever produced.
    let v6: IpNet = "fd00::/64".parse().expect("cidr");
    let first: Vec<String> = blocks_of(v6, 122)
        .take(2)
        .map(|b| block_name("blue", &b))
        .collect();
    assert_eq!(first, ["blue-fd00---122", "blue-fd00--40-122"]);
    let small: IpNet = "10.30.0.0/28".parse().expect("cidr");
    assert_eq!(blocks_of(small, 26).collect::<Vec<_>>(), vec![small]);
}

fn view(name: &str, node: Option<&str>, held: bool) -> BlockView {
    BlockView {
        name: name.into(),
        node: node.map(Into::into),
        held,
    }
}

#[test]
fn only_the_nodes_blocks_are_tried_those_the_record_holds_on_first() {
    let blocks = vec![
        view("b0", Some("n1"), false),
        view("b1", Some("n2"), true),
        view("b2", Some("n1"), true),
        view("b3", None, true),
        view("b4", Some("n1"), false),
    ];
    let cases: Vec<(&str, &str, Vec<&str>)> = vec![
        (
            "an earlier allocation on this node is reused first",
            "n1",
            vec!["b2", "b0", "b4"],
        ),
        (
            "an earlier allocation on another node or a free block is never reused",
            "n3",
            vec![],
        ),
        ("the node's own blocks, held or not", "n2", vec!["b1"]),
    ];
    for (what, node, want) in cases {
        assert_eq!(blocks_to_try(&blocks, node), want, "{what}");
    }
}

proptest! {
    #[test]
    fn blocks_tried_are_exactly_the_nodes_held_ones_first(
        blocks in proptest::collection::vec((0u8..4, any::<bool>()), 0..12),
    ) {
        let views: Vec<BlockView> = blocks
            .iter()
            .enumerate()
            .map(|(i, (node, held))| {
                let node = (*node > 0).then(|| format!("n{node}"));
                view(&format!("b{i}"), node.as_deref(), *held)
            })
            .collect();
        let tried = blocks_to_try(&views, "n1");
        let on_node: Vec<&BlockView> = views.iter().filter(|b| b.node.as_deref() == Some("n1")).collect();
        prop_assert_eq!(tried.len(), on_node.len());
        let held_first = on_node.iter().filter(|b| b.held).count();
        for (i, name) in tried.iter().enumerate() {
            let block = views.iter().find(|b| &b.name == name);
            prop_assert!(block.is_some_and(|b| b.node.as_deref() == Some("n1")));
            prop_assert_eq!(block.is_some_and(|b| b.held), i < held_first);
        }
    }
}

/// Every block size a StaticIPPool accepts, the allocator serves, down to the last address.
#[test]
fn every_block_size_a_pool_accepts_is_served() {
    use ests_api::ip_pool::{
        MAX_IPV4_BLOCK_PREFIX, MAX_IPV6_BLOCK_PREFIX, MIN_IPV4_BLOCK_PREFIX, MIN_IPV6_BLOCK_PREFIX,
    };
    let cases = [
        ("10.0.0.0/8", MIN_IPV4_BLOCK_PREFIX..=MAX_IPV4_BLOCK_PREFIX),
        ("fd00::/64", MIN_IPV6_BLOCK_PREFIX..=MAX_IPV6_BLOCK_PREFIX),
    ];
    for (cidr, prefixes) in cases {
        for prefix in prefixes {
            let first = blocks_of(net(cidr), prefix).next().expect("a block");
            let mut block =
                Block::new(first, &[]).unwrap_or_else(|e| panic!("{cidr} /{prefix}: {e}"));
            let usable = (1u64 << (first.max_prefix_len() - prefix)) - 2;
            assert_eq!(block.capacity(), usable, "{cidr} /{prefix}");
            for n in 0..usable {
                block
                    .allocate(&holder(n as u32))
                    .unwrap_or_else(|e| panic!("{cidr} /{prefix}: {e}"));
            }
            assert_eq!(
                block.allocate(&holder(u32::MAX)),
                Err(AllocError::BlockFull(first))
            );
        }
    }
}

#[test]
fn a_deleted_pool_goes_only_once_no_address_of_it_is_held() {
    let blocks = |held: &[usize]| -> Vec<(String, usize)> {
        held.iter()
            .enumerate()
            .map(|(i, n)| (format!("b{i}"), *n))
            .collect()
    };
    /// (deleting, protected, blocks, step)
    type Case = (bool, bool, Vec<(String, usize)>, PoolStep);
    let cases: Vec<Case> = vec![
        (false, false, blocks(&[]), PoolStep::Protect),
        (false, false, blocks(&[3]), PoolStep::Protect),
        (false, true, blocks(&[3, 0]), PoolStep::None),
        // Deleted before the manager protected it: nothing is the manager's to hold back.
        (true, false, blocks(&[3]), PoolStep::None),
        (
            true,
            true,
            blocks(&[2, 0, 1]),
            PoolStep::Wait { held: 3, blocks: 2 },
        ),
        (
            true,
            true,
            blocks(&[0, 0]),
            PoolStep::DeleteBlocks(vec!["b0".into(), "b1".into()]),
        ),
        (true, true, blocks(&[]), PoolStep::Release),
    ];
    for (deleting, protected, blocks, want) in cases {
        assert_eq!(
            pool_step(deleting, protected, &blocks),
            want,
            "deleting {deleting}, protected {protected}, {blocks:?}"
        );
    }
}

#[test]
fn only_empty_blocks_of_deleted_nodes_return_to_the_pool() {
    let gone = |n: &str| n == "gone";
    for (node, allocated, back) in [
        (Some("gone"), 0, true),
        (Some("gone"), 1, false),
        (Some("here"), 0, false),
        (None, 0, false),
    ] {
        assert_eq!(
            returns_to_pool(node, allocated, &gone),
            back,
            "node {node:?}, {allocated} allocated"
        );
    }
}
