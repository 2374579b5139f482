//! Micro-benchmark of the IP allocator in memory: allocate + release pairs per second on a
//! /16, against a naive baseline (a set of taken addresses scanned from the start) measured
//! in the same run. `cargo bench -p ests-core --bench allocator`.

use std::collections::BTreeSet;
use std::hint::black_box;
use std::net::IpAddr;
use std::time::Instant;

use ests_core::allocator::{Block, Holder};
use ipnet::IpNet;

const OPS: u64 = 2_000_000;

fn holders(n: u64) -> Vec<Holder> {
    (0..n)
        .map(|i| Holder {
            namespace: "bench".into(),
            name: format!("web-{i}"),
            uid: format!("uid-{i}"),
        })
        .collect()
}

/// Pairs per second of the real allocator on one /16 block, half full, churning one slot.
fn bitmap(cidr: IpNet) -> f64 {
    let mut block = Block::new(cidr, &[]).expect("block");
    let people = holders(32_769);
    for h in &people[..32_768] {
        block.allocate(h).expect("free");
    }
    let churn = &people[32_768];
    let start = Instant::now();
    for _ in 0..OPS {
        let ip = block.allocate(churn).expect("free");
        block.release(black_box(ip), churn).expect("held");
    }
    OPS as f64 / start.elapsed().as_secs_f64()
}

/// The baseline: lowest free address found by scanning a set of taken offsets.
fn naive(size: u32) -> f64 {
    let mut taken: BTreeSet<u32> = (1..=32_768).collect();
    let ops = OPS / 1000;
    let start = Instant::now();
    for _ in 0..ops {
        let free = (1..size - 1).find(|o| !taken.contains(o)).expect("free");
        taken.insert(free);
        taken.remove(&black_box(free));
    }
    ops as f64 / start.elapsed().as_secs_f64()
}

/// Pairs per second over a pool: a /16 split into /26 blocks, one block per step.
fn pool(cidr: IpNet) -> f64 {
    let mut blocks: Vec<Block> = ests_core::allocator::split(cidr, 26)
        .into_iter()
        .map(|b| Block::new(b, &[]).expect("block"))
        .collect();
    let people = holders(blocks.len() as u64);
    let start = Instant::now();
    for i in 0..OPS {
        let n = (i as usize) % blocks.len();
        let ip: IpAddr = blocks[n].allocate(&people[n]).expect("free");
        blocks[n].release(black_box(ip), &people[n]).expect("held");
    }
    OPS as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    let v4: IpNet = "10.40.0.0/16".parse().expect("cidr");
    let v6: IpNet = "fd00:40::/112".parse().expect("cidr");
    let base = naive(65_536);
    let one_v4 = bitmap(v4);
    let one_v6 = bitmap(v6);
    let blocks = pool(v4);
    println!("allocate+release pairs per second, in memory:");
    println!("  naive scan baseline, /16 half full:     {base:>12.0}");
    println!(
        "  Block, one IPv4 /16 half full:          {one_v4:>12.0}  ({:.0}x baseline)",
        one_v4 / base
    );
    println!(
        "  Block, one IPv6 /112 half full:         {one_v6:>12.0}  ({:.0}x baseline)",
        one_v6 / base
    );
    println!(
        "  Blocks, IPv4 /16 as 1,024 /26 blocks:   {blocks:>12.0}  ({:.0}x baseline)",
        blocks / base
    );
    println!("target: at least 1,000,000 pairs per second");
}
