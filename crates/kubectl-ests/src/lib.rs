//! `kubectl ests`: a kubectl plugin for EnhancedStatefulSets.
//!
//! The decisions live in pure modules with table tests — [`progress`] (is a rollout done, how
//! far is it), [`history`] (which revision an undo goes to), [`scale_in`] (reserve ordinals
//! and lower replicas), [`ranges`] (non-overlapping ordinal ranges for Karmada members) and
//! [`moving`] (the steps that move the boundary ordinal between clusters). The modules
//! [`rollout`], [`move_cmd`], [`migrate_node`] and [`cluster`] are the thin kube I/O around
//! them, and [`cli`] the flags.
#![forbid(unsafe_code)]

pub mod cli;
pub mod cluster;
pub mod duration;
pub mod history;
pub mod migrate_node;
pub mod move_cmd;
pub mod moving;
pub mod progress;
pub mod ranges;
pub mod rollout;
pub mod scale_in;

pub use cli::{Cli, run};
