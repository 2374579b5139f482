//! Which StaticIP record keeps each address, kept from the webhook's record watch: a pod's
//! CNI annotation is judged with one hash look-up per address it names, never a pass over
//! every record, and never a call to the API server.
//!
//! Fed the same watch events as the record store ([`KeptAddresses::event`]); a relist
//! replaces the index when it completes, so records deleted while the watch was down are
//! forgotten, and until then the old index answers (as the store does).

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;

use ests_api::StaticIP;
use ests_core::static_ip::record_ips;
use kube::ResourceExt;
use kube::runtime::watcher::Event;

/// `namespace/name` of a record.
fn key(record: &StaticIP) -> String {
    format!(
        "{}/{}",
        record.namespace().unwrap_or_default(),
        record.name_any()
    )
}

/// A record's addresses as the claims are read: canonical, so `::ffff:10.0.0.5` in a
/// record is found as `10.0.0.5`.
fn addresses(record: &StaticIP) -> Vec<IpAddr> {
    let mut ips: Vec<IpAddr> = record_ips(record)
        .into_iter()
        .map(|ip| ip.to_canonical())
        .collect();
    ips.sort();
    ips.dedup();
    ips
}

/// Address → the records keeping it (one, unless the invariant that no address is in two
/// records is broken; then every one of them is known).
#[derive(Debug, Default)]
pub struct KeptAddresses {
    by_ip: HashMap<IpAddr, BTreeSet<String>>,
    by_record: HashMap<String, Vec<IpAddr>>,
    /// The records of a relist under way.
    relisting: Option<HashMap<String, Vec<IpAddr>>>,
    listed: bool,
}

impl KeptAddresses {
    /// A record was created or changed: it keeps its current addresses, and only those.
    pub fn apply(&mut self, record: &StaticIP) {
        let key = key(record);
        self.forget(&key);
        let ips = addresses(record);
        if ips.is_empty() {
            return;
        }
        for ip in &ips {
            self.by_ip.entry(*ip).or_default().insert(key.clone());
        }
        self.by_record.insert(key, ips);
    }

    /// A record is gone: its addresses are no longer kept by it.
    pub fn delete(&mut self, record: &StaticIP) {
        self.forget(&key(record));
    }

    fn forget(&mut self, key: &str) {
        for ip in self.by_record.remove(key).into_iter().flatten() {
            if let Some(holders) = self.by_ip.get_mut(&ip) {
                holders.remove(key);
                if holders.is_empty() {
                    self.by_ip.remove(&ip);
                }
            }
        }
    }

    /// One watch event.
    pub fn event(&mut self, event: &Event<StaticIP>) {
        match event {
            Event::Apply(record) => self.apply(record),
            Event::Delete(record) => self.delete(record),
            Event::Init => self.relisting = Some(HashMap::new()),
            Event::InitApply(record) => {
                let ips = addresses(record);
                if !ips.is_empty() {
                    self.relisting
                        .get_or_insert_with(HashMap::new)
                        .insert(key(record), ips);
                }
            }
            Event::InitDone => {
                let records = self.relisting.take().unwrap_or_default();
                let mut by_ip: HashMap<IpAddr, BTreeSet<String>> = HashMap::new();
                for (key, ips) in &records {
                    for ip in ips {
                        by_ip.entry(*ip).or_default().insert(key.clone());
                    }
                }
                self.by_ip = by_ip;
                self.by_record = records;
                self.listed = true;
            }
        }
    }

    /// The record (`namespace/name`) keeping `ip`, if any.
    pub fn holder(&self, ip: &IpAddr) -> Option<&str> {
        self.by_ip
            .get(&ip.to_canonical())
            .and_then(|holders| holders.first())
            .map(String::as_str)
    }

    /// Whether the first list has completed: before, an address not found may yet be kept.
    pub fn listed(&self) -> bool {
        self.listed
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn record(ns: &str, name: &str, ips: &[&str]) -> StaticIP {
        let ips: Vec<_> = ips.iter().map(|ip| json!({"ip": ip})).collect();
        serde_json::from_value(json!({
            "apiVersion": "jke.jdcloud.com/v1alpha1", "kind": "StaticIP",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"workload": {"apiVersion": "jke.jdcloud.com/v1alpha1", "kind": "EnhancedStatefulSet", "name": "web", "uid": "set-1"},
                     "podName": name, "ips": ips}
        }))
        .expect("record")
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("address")
    }

    #[test]
    fn a_record_keeps_its_current_addresses_until_it_is_deleted() {
        let mut kept = KeptAddresses::default();
        kept.apply(&record("ns", "web-0", &["10.0.0.5", "fd00::5"]));
        assert_eq!(kept.holder(&ip("10.0.0.5")), Some("ns/web-0"));
        assert_eq!(kept.holder(&ip("fd00:0::5")), Some("ns/web-0"));
        assert_eq!(kept.holder(&ip("::ffff:10.0.0.5")), Some("ns/web-0"));
        // Its address changed: the old one is free.
        kept.apply(&record("ns", "web-0", &["10.0.0.6"]));
        assert_eq!(kept.holder(&ip("10.0.0.5")), None);
        assert_eq!(kept.holder(&ip("fd00::5")), None);
        assert_eq!(kept.holder(&ip("10.0.0.6")), Some("ns/web-0"));
        // A record of the same name in another namespace is another record.
        kept.apply(&record("other", "web-0", &["10.0.0.7"]));
        kept.delete(&record("ns", "web-0", &[]));
        assert_eq!(kept.holder(&ip("10.0.0.6")), None);
        assert_eq!(kept.holder(&ip("10.0.0.7")), Some("other/web-0"));
        assert_eq!(kept.by_ip.len(), 1);
    }

    #[test]
    fn an_address_in_two_records_stays_kept_until_both_let_it_go() {
        let mut kept = KeptAddresses::default();
        kept.apply(&record("ns", "a", &["10.0.0.5"]));
        kept.apply(&record("ns", "b", &["10.0.0.5"]));
        kept.delete(&record("ns", "a", &[]));
        assert_eq!(kept.holder(&ip("10.0.0.5")), Some("ns/b"));
        kept.apply(&record("ns", "b", &[]));
        assert!(kept.by_ip.is_empty() && kept.by_record.is_empty());
    }

    #[test]
    fn a_relist_replaces_the_index_when_it_completes() {
        let mut kept = KeptAddresses::default();
        assert!(!kept.listed());
        kept.event(&Event::Init);
        kept.event(&Event::InitApply(record("ns", "a", &["10.0.0.5"])));
        // Not answered from until the list completes.
        assert_eq!(kept.holder(&ip("10.0.0.5")), None);
        kept.event(&Event::InitDone);
        assert!(kept.listed());
        assert_eq!(kept.holder(&ip("10.0.0.5")), Some("ns/a"));
        // The watch restarts; "a" was deleted meanwhile, "b" created.
        kept.event(&Event::Init);
        kept.event(&Event::InitApply(record("ns", "b", &["10.0.0.6"])));
        assert_eq!(
            kept.holder(&ip("10.0.0.5")),
            Some("ns/a"),
            "the old index answers during the relist"
        );
        kept.event(&Event::InitDone);
        assert_eq!(kept.holder(&ip("10.0.0.5")), None);
        assert_eq!(kept.holder(&ip("10.0.0.6")), Some("ns/b"));
        kept.event(&Event::Apply(record("ns", "b", &["10.0.0.7"])));
        assert_eq!(kept.holder(&ip("10.0.0.6")), None);
        assert_eq!(kept.holder(&ip("10.0.0.7")), Some("ns/b"));
    }
}
