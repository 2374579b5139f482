//! The server side of [`ests_cni::protocol`]: one request, the facts of the node, and the
//! attachment table, to one response. The decision itself is [`ests_core::cni`]; this maps
//! the wire onto it and its outcome back onto the wire. The agent and the CNI tests'
//! stand-in agent both answer with this function, so they cannot drift apart.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use ests_api::StaticIP;
use ests_cni::protocol::{
    AttachmentId, Command, Failure, FailureKind, IpEntry, PROTOCOL_VERSION, Request, Response,
    Success,
};
use ests_core::cni::{self as decide, Add, Attachment, AttachmentKey, CniPod, NodeView};
use ipnet::IpNet;

/// The attachments an agent holds, keyed as the CNI keys them.
pub type Attachments = BTreeMap<AttachmentKey, Attachment>;

/// Which record (`namespace/name`) keeps each address, out of every StaticIP: what
/// [`Facts::kept_by`] reads. Built once per request from the cache (a few ms at 10,000
/// records; see `cargo bench -p ests-node --bench add`).
pub fn kept_addresses<'a>(
    records: impl IntoIterator<Item = &'a StaticIP>,
) -> HashMap<IpAddr, String> {
    let mut kept = HashMap::new();
    for record in records {
        let holder = format!(
            "{}/{}",
            kube::ResourceExt::namespace(record).unwrap_or_default(),
            kube::ResourceExt::name_any(record)
        );
        for ip in ests_core::static_ip::record_ips(record) {
            kept.insert(ip, holder.clone());
        }
    }
    kept
}

/// What the node knows when a request arrives (from the agent's caches).
pub struct Facts<'a> {
    pub node: &'a str,
    /// The pod named `namespace`, `name`, as the cache has it.
    pub pod: &'a dyn Fn(&str, &str) -> Option<CniPod>,
    /// The StaticIP record named `namespace`, `name`, as the cache has it.
    pub record: &'a dyn Fn(&str, &str) -> Option<StaticIP>,
    /// CIDRs of the IP blocks this node owns.
    pub owned_blocks: &'a [IpNet],
    /// The node's pod ranges.
    pub pod_ranges: &'a [IpNet],
    /// Which record (`namespace/name`) keeps an address.
    pub kept_by: &'a dyn Fn(&IpAddr) -> Option<String>,
    /// Whether the caches have listed and the node's pod ranges are known.
    pub ready: bool,
}

/// What came of a request.
#[derive(Debug)]
pub struct Outcome {
    pub response: Response,
    /// The CNI verb, for metrics and logs.
    pub verb: &'static str,
    /// The table changed: it must be saved before the plugin hears the answer.
    pub changed: bool,
    /// Refused for a reason that may pass once the caches catch up (a pod or record not
    /// seen yet, an old attachment whose DEL has not come yet): worth asking again soon.
    pub retryable: bool,
}

impl Outcome {
    /// The metric label of the outcome: `ok` or the failure's kind.
    pub fn result(&self) -> &'static str {
        match &self.response {
            Response::Ok(_) => "ok",
            Response::Error(f) => match f.kind {
                FailureKind::TryAgainLater => "try_again_later",
                FailureKind::Refused => "refused",
                FailureKind::CheckFailed => "check_failed",
                FailureKind::NotReady => "not_ready",
                FailureKind::BadRequest => "bad_request",
                FailureKind::UnsupportedVersion => "unsupported_version",
                FailureKind::Internal => "internal",
                FailureKind::Unknown => "unknown",
            },
        }
    }
}

fn key(id: &AttachmentId) -> AttachmentKey {
    AttachmentKey {
        container_id: id.container_id.clone(),
        ifname: id.ifname.clone(),
    }
}

fn verb(command: &Command) -> &'static str {
    match command {
        Command::Add(_) => "ADD",
        Command::Del(_) => "DEL",
        Command::Check(_) => "CHECK",
        Command::Status { .. } => "STATUS",
        Command::Gc { .. } => "GC",
    }
}

fn failure(verb: &'static str, kind: FailureKind, message: String) -> Outcome {
    Outcome {
        response: Response::Error(Failure { kind, message }),
        verb,
        changed: false,
        retryable: kind == FailureKind::TryAgainLater,
    }
}

fn success(verb: &'static str, ips: Vec<IpEntry>, changed: bool) -> Outcome {
    Outcome {
        response: Response::Ok(Success { ips }),
        verb,
        changed,
        retryable: false,
    }
}

/// Answers `request`, changing `table` as the decision says.
pub fn handle(table: &mut Attachments, facts: &Facts<'_>, request: Request) -> Outcome {
    let verb = verb(&request.command);
    if request.version != PROTOCOL_VERSION {
        return failure(
            verb,
            FailureKind::UnsupportedVersion,
            format!(
                "the node agent speaks protocol version {PROTOCOL_VERSION}, not {}",
                request.version
            ),
        );
    }
    match request.command {
        Command::Add(attach) => {
            if !facts.ready {
                return failure(
                    verb,
                    FailureKind::TryAgainLater,
                    "the node agent's caches have not listed yet".into(),
                );
            }
            let Some(pod_ref) = attach.pod else {
                return failure(
                    verb,
                    FailureKind::BadRequest,
                    "ADD names no pod (CNI_ARGS lacks K8S_POD_NAMESPACE, K8S_POD_NAME or K8S_POD_UID)"
                        .into(),
                );
            };
            let Some(pod) =
                (facts.pod)(&pod_ref.namespace, &pod_ref.name).filter(|p| p.uid == pod_ref.uid)
            else {
                return failure(
                    verb,
                    FailureKind::TryAgainLater,
                    format!(
                        "pod {}/{} (uid {}) is not in the node agent's cache of node {} yet",
                        pod_ref.namespace, pod_ref.name, pod_ref.uid, facts.node
                    ),
                );
            };
            let k = key(&attach.id);
            let record = (facts.record)(&pod.namespace, &pod.name);
            let decision = decide::add(
                &k,
                &pod,
                &NodeView {
                    node: facts.node,
                    record: record.as_ref(),
                    owned_blocks: facts.owned_blocks,
                    pod_ranges: facts.pod_ranges,
                    kept_by: facts.kept_by,
                    attachments: table,
                },
            );
            let attachment = decision.attachment(&pod);
            let changed = attachment.is_some();
            match decision {
                Add::New { addresses, .. } | Add::Existing(addresses) => {
                    let mut ips = Vec::with_capacity(addresses.len());
                    for a in &addresses {
                        // An address lies in its network, so the prefix length fits it.
                        let Ok(address) = IpNet::new(a.ip, a.network.prefix_len()) else {
                            return failure(
                                verb,
                                FailureKind::Internal,
                                format!("{} does not fit network {}", a.ip, a.network),
                            );
                        };
                        ips.push(IpEntry {
                            address,
                            gateway: decide::gateway(a, facts.pod_ranges),
                        });
                    }
                    if let Some(attachment) = attachment {
                        table.insert(k, attachment);
                    }
                    success(verb, ips, changed)
                }
                Add::Refused(refusal) => failure(
                    verb,
                    if refusal.retryable() {
                        FailureKind::TryAgainLater
                    } else {
                        FailureKind::Refused
                    },
                    refusal.to_string(),
                ),
            }
        }
        Command::Del(attach) => {
            let k = key(&attach.id);
            let forget = decide::del(&k, table, facts.kept_by).forget;
            if forget {
                table.remove(&k);
            }
            success(verb, Vec::new(), forget)
        }
        Command::Check(attach) => {
            let k = key(&attach.id);
            let record = table
                .get(&k)
                .and_then(|a| (facts.record)(&a.pod.namespace, &a.pod.name));
            match decide::check(&k, table, record.as_ref()) {
                Ok(()) => success(verb, Vec::new(), false),
                Err(e) => failure(verb, FailureKind::CheckFailed, e.to_string()),
            }
        }
        Command::Status { .. } if facts.ready => success(verb, Vec::new(), false),
        Command::Status { .. } => failure(
            verb,
            FailureKind::NotReady,
            "the node agent's caches have not listed yet".into(),
        ),
        Command::Gc { valid, .. } => {
            let valid: Vec<AttachmentKey> = valid.iter().map(key).collect();
            let gone = decide::gc(Some(&valid), table);
            let changed = !gone.is_empty();
            for k in gone {
                table.remove(&k);
            }
            success(verb, Vec::new(), changed)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ests_cni::protocol::{Attach, Pod};

    fn pod(name: &str, uid: &str) -> CniPod {
        CniPod {
            namespace: "ns".into(),
            name: name.into(),
            uid: uid.into(),
            ..CniPod::default()
        }
    }

    fn add(container: &str, name: &str, uid: &str) -> Request {
        Request {
            version: PROTOCOL_VERSION,
            command: Command::Add(Attach {
                network: "n".into(),
                id: AttachmentId {
                    container_id: container.into(),
                    ifname: "eth0".into(),
                },
                netns: Some("/run/netns/x".into()),
                pod: Some(Pod {
                    namespace: "ns".into(),
                    name: name.into(),
                    uid: uid.into(),
                }),
            }),
        }
    }

    fn del(container: &str) -> Request {
        Request {
            version: PROTOCOL_VERSION,
            command: Command::Del(Attach {
                network: "n".into(),
                id: AttachmentId {
                    container_id: container.into(),
                    ifname: "eth0".into(),
                },
                netns: None,
                pod: None,
            }),
        }
    }

    fn answer(table: &mut Attachments, pods: &[CniPod], ready: bool, request: Request) -> Outcome {
        let ranges: Vec<IpNet> = vec!["10.1.0.0/29".parse().expect("cidr")];
        let find = |ns: &str, name: &str| {
            pods.iter()
                .find(|p| p.namespace == ns && p.name == name)
                .cloned()
        };
        let facts = Facts {
            node: "n1",
            pod: &find,
            record: &|_, _| None,
            owned_blocks: &[],
            pod_ranges: &ranges,
            kept_by: &|_| None,
            ready,
        };
        handle(table, &facts, request)
    }

    fn ips(outcome: &Outcome) -> Vec<String> {
        match &outcome.response {
            Response::Ok(s) => s.ips.iter().map(|e| e.address.to_string()).collect(),
            Response::Error(f) => panic!("failed: {f:?}"),
        }
    }

    #[test]
    fn an_add_changes_the_table_once_and_a_repeated_add_answers_the_same() {
        let mut table = Attachments::new();
        let pods = [pod("a", "u1")];
        let first = answer(&mut table, &pods, true, add("c1", "a", "u1"));
        assert!(first.changed);
        let again = answer(&mut table, &pods, true, add("c1", "a", "u1"));
        assert!(!again.changed, "a repeated ADD writes nothing");
        assert_eq!(ips(&first), ips(&again));
        assert_eq!(table.len(), 1);
    }

    #[test]
    fn unseen_pods_and_unlisted_caches_are_retryable_and_change_nothing() {
        let mut table = Attachments::new();
        let unseen = answer(&mut table, &[], true, add("c1", "a", "u1"));
        assert!(unseen.retryable);
        assert_eq!(unseen.result(), "try_again_later");
        let other_uid = answer(&mut table, &[pod("a", "old")], true, add("c1", "a", "u1"));
        assert!(
            other_uid.retryable,
            "a pod of the same name but another uid"
        );
        let not_listed = answer(&mut table, &[pod("a", "u1")], false, add("c1", "a", "u1"));
        assert!(not_listed.retryable);
        assert!(table.is_empty());
    }

    #[test]
    fn del_forgets_once_and_a_repeated_del_succeeds_unchanged() {
        let mut table = Attachments::new();
        let pods = [pod("a", "u1")];
        answer(&mut table, &pods, true, add("c1", "a", "u1"));
        let first = answer(&mut table, &pods, true, del("c1"));
        assert!(first.changed && table.is_empty());
        let again = answer(&mut table, &pods, true, del("c1"));
        assert_eq!(again.result(), "ok");
        assert!(!again.changed);
    }

    #[test]
    fn another_protocol_version_is_refused_by_name() {
        let mut table = Attachments::new();
        let mut request = add("c1", "a", "u1");
        request.version = 9;
        let out = answer(&mut table, &[pod("a", "u1")], true, request);
        assert_eq!(out.result(), "unsupported_version");
        assert!(table.is_empty());
    }

    #[test]
    fn a_pod_range_runs_out_and_says_so() {
        let mut table = Attachments::new();
        let pods: Vec<CniPod> = (0..8)
            .map(|i| pod(&format!("p{i}"), &format!("u{i}")))
            .collect();
        let mut given = Vec::new();
        let mut last = None;
        for i in 0..8 {
            let out = answer(
                &mut table,
                &pods,
                true,
                add(&format!("c{i}"), &format!("p{i}"), &format!("u{i}")),
            );
            match &out.response {
                Response::Ok(_) => given.extend(ips(&out)),
                Response::Error(_) => last = Some(out),
            }
        }
        let mut unique = given.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), given.len(), "no address twice: {given:?}");
        assert!(
            last.is_some(),
            "a /29 cannot hold 8 pods besides its gateway"
        );
    }
}
