use std::collections::BTreeMap;

use proptest::prelude::*;
use serde_json::json;

use super::*;

const CALICO: &str = "cni.projectcalico.org/ipAddrs";
const OTHER: &str = "example.com/ip";

fn cni() -> Vec<CniAnnotation> {
    vec![
        CniAnnotation::calico(),
        CniAnnotation::parse("example.com/ip={ipv4}").expect("valid"),
    ]
}

fn pod(labelled: bool, annotations: &[(&str, &str)]) -> Pod {
    let labels = if labelled {
        json!({"staticip.jke.jdcloud.com/enabled": "true"})
    } else {
        json!({"app": "web"})
    };
    let annotations: BTreeMap<&str, &str> = annotations.iter().copied().collect();
    serde_json::from_value(json!({
        "metadata": {"name": "mine", "namespace": "ns", "labels": labels, "annotations": annotations},
        "spec": {"containers": [{"name": "app", "image": "app:v1"}]}
    }))
    .expect("pod")
}

/// What the webhook's index answers: which record keeps an address.
fn records(kept: &'static [(&'static str, &'static str)]) -> impl Fn(&IpAddr) -> Option<String> {
    move |ip| {
        kept.iter()
            .find(|(a, _)| a.parse::<IpAddr>().ok() == Some(*ip))
            .map(|(_, record)| record.to_string())
    }
}

const KEPT: &[(&str, &str)] = &[("10.0.0.5", "ns/db-0"), ("fd00::5", "ns/db-1")];

#[test]
fn ordinary_pods_naming_a_kept_address_are_refused_in_every_format() {
    struct Case {
        name: &'static str,
        annotations: &'static [(&'static str, &'static str)],
        refused: Option<&'static str>,
    }
    let cases = [
        Case {
            name: "calico's JSON list",
            annotations: &[(CALICO, r#"["10.0.0.5"]"#)],
            refused: Some(
                "annotation cni.projectcalico.org/ipAddrs names 10.0.0.5, an address kept",
            ),
        },
        Case {
            name: "a kept address beside a free one",
            annotations: &[(CALICO, r#"["10.0.0.9","fd00::5"]"#)],
            refused: Some("names fd00::5, an address kept"),
        },
        Case {
            name: "comma-separated, with spaces",
            annotations: &[(CALICO, "10.0.0.9, 10.0.0.5")],
            refused: Some("names 10.0.0.5, an address kept"),
        },
        Case {
            name: "a single address in another configured annotation",
            annotations: &[(OTHER, "10.0.0.5")],
            refused: Some("annotation example.com/ip names 10.0.0.5, an address kept"),
        },
        Case {
            name: "with a prefix length",
            annotations: &[(CALICO, r#"["10.0.0.5/32"]"#)],
            refused: Some("names 10.0.0.5,"),
        },
        Case {
            name: "IPv6 spelled out in capitals",
            annotations: &[(CALICO, r#"["FD00:0:0:0:0:0:0:5"]"#)],
            refused: Some("names fd00::5, an address kept"),
        },
        Case {
            name: "IPv4-mapped IPv6, which Go reads as IPv4",
            annotations: &[(CALICO, r#"["::ffff:10.0.0.5"]"#)],
            refused: Some("names 10.0.0.5,"),
        },
        Case {
            name: "JSON escapes, which the CNI decodes",
            annotations: &[(CALICO, r#"["\u0031\u0030.0.0.5"]"#)],
            refused: Some("names 10.0.0.5,"),
        },
        Case {
            name: "inside a CNI's own JSON object",
            annotations: &[(
                OTHER,
                r#"{"ips": ["10.0.0.5"], "mac": "0a:58:0a:00:00:05"}"#,
            )],
            refused: Some("names 10.0.0.5,"),
        },
        Case {
            name: "both kept addresses in two annotations",
            annotations: &[(CALICO, r#"["fd00::5"]"#), (OTHER, "10.0.0.5")],
            refused: Some(
                "annotation cni.projectcalico.org/ipAddrs names fd00::5 and annotation example.com/ip names 10.0.0.5, addresses kept for static-IP identities; only pods created by the ests controller may use them",
            ),
        },
        Case {
            name: "free addresses",
            annotations: &[(CALICO, r#"["10.0.0.6","fd00::6"]"#), (OTHER, "10.0.0.7")],
            refused: None,
        },
        Case {
            name: "no annotations",
            annotations: &[],
            refused: None,
        },
        Case {
            name: "a kept address in an annotation no CNI is configured to read",
            annotations: &[("example.com/unrelated", "10.0.0.5")],
            refused: None,
        },
        Case {
            name: "tokens that are not addresses",
            annotations: &[(CALICO, r#"["10.0.0", "10.0.0.5.6", "fd00::5::1", "", "x"]"#)],
            refused: None,
        },
    ];
    for case in cases {
        let verdict =
            kept_address_claims(&pod(false, case.annotations), None, &cni(), records(KEPT));
        match (case.refused, verdict) {
            (None, None) => {}
            (Some(want), Some(denial)) => {
                assert!(
                    denial.message.contains(want),
                    "{}: {:?} lacks {want:?}",
                    case.name,
                    denial.message
                );
                assert!(
                    denial.detail.contains("StaticIP ns/db-"),
                    "{}: the log names the record: {:?}",
                    case.name,
                    denial.detail
                );
            }
            (want, got) => panic!("{}: wanted a refusal {want:?}, got {got:?}", case.name),
        }
    }
}

#[test]
fn static_ip_pods_are_left_to_the_pin() {
    // The webhook writes a static-IP pod's CNI annotation from its own record, which keeps it.
    let p = pod(true, &[(CALICO, r#"["10.0.0.5"]"#)]);
    assert_eq!(kept_address_claims(&p, None, &cni(), records(KEPT)), None);
    assert!(claims(&p, None, &cni()).is_empty());
}

/// Under ests's own IPAM no CNI annotation is configured: ests-cni reads none of them (only
/// ests's own `staticip.jke.jdcloud.com/ip`, which an admission policy keeps to static-IP
/// pods), so an ordinary pod naming a kept address in Calico's asks nobody for it.
#[test]
fn with_no_cni_annotation_configured_nothing_is_claimed() {
    let p = pod(false, &[(CALICO, r#"["10.0.0.5"]"#), (OTHER, "10.0.0.5")]);
    assert!(claims(&p, None, &[]).is_empty());
    assert_eq!(kept_address_claims(&p, None, &[], records(KEPT)), None);
    // The same pod is refused where Calico reads the annotation.
    assert!(kept_address_claims(&p, None, &cni(), records(KEPT)).is_some());
}

#[test]
fn an_update_is_judged_on_what_it_changes() {
    let kept = pod(false, &[(CALICO, r#"["10.0.0.5"]"#)]);
    let free = pod(false, &[(CALICO, r#"["10.0.0.6"]"#)]);
    // A pod released from its set (label removed) keeps the annotation it had.
    let released_from = pod(true, &[(CALICO, r#"["10.0.0.5"]"#)]);
    assert_eq!(
        kept_address_claims(&kept, Some(&released_from), &cni(), records(KEPT)),
        None
    );
    // Changing a free address into a kept one is refused; so is adding one.
    assert!(kept_address_claims(&kept, Some(&free), &cni(), records(KEPT)).is_some());
    assert!(kept_address_claims(&kept, Some(&pod(false, &[])), &cni(), records(KEPT)).is_some());
    // Unrelated changes to a pod that names no kept address pass.
    assert_eq!(
        kept_address_claims(&free, Some(&free), &cni(), records(KEPT)),
        None
    );
}

#[test]
fn refusals_tell_the_caller_nothing_it_did_not_send() {
    let denial = kept_address_claims(
        &pod(false, &[(CALICO, r#"["10.0.0.5"]"#)]),
        None,
        &cni(),
        records(KEPT),
    )
    .expect("refused");
    // The record that keeps it, and the other kept address, are the webhook's to log.
    for secret in ["db-0", "db-1", "ns/", "fd00::5"] {
        assert!(
            !denial.message.contains(secret),
            "{:?} tells {secret:?}",
            denial.message
        );
    }
    assert_eq!(denial.detail, "10.0.0.5 is kept by StaticIP ns/db-0");
}

#[test]
fn addresses_are_read_from_any_text() {
    let read =
        |v: &str| -> Vec<String> { addresses_in(v).iter().map(|ip| ip.to_string()).collect() };
    assert_eq!(read(r#"["10.0.0.5","fd00::5"]"#), ["10.0.0.5", "fd00::5"]);
    assert_eq!(read("10.0.0.5,fd00::5"), ["10.0.0.5", "fd00::5"]);
    assert_eq!(read("[fe80::1%eth0]:80"), ["fe80::1"]);
    assert!(read("").is_empty());
    assert!(read("not an address").is_empty());
}

fn address() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<[u8; 4]>().prop_map(IpAddr::from),
        any::<[u16; 8]>().prop_map(IpAddr::from),
    ]
    .prop_map(|ip| ip.to_canonical())
}

/// Which of the addresses rendered into a format the value names.
type Named = fn(&[IpAddr]) -> Vec<IpAddr>;

/// A supported format, and which of the rendered addresses it names.
fn format() -> impl Strategy<Value = (&'static str, Named)> {
    fn all(ips: &[IpAddr]) -> Vec<IpAddr> {
        ips.to_vec()
    }
    fn first_v4(ips: &[IpAddr]) -> Vec<IpAddr> {
        ips.iter()
            .copied()
            .filter(IpAddr::is_ipv4)
            .take(1)
            .collect()
    }
    fn first_v6(ips: &[IpAddr]) -> Vec<IpAddr> {
        ips.iter()
            .copied()
            .filter(IpAddr::is_ipv6)
            .take(1)
            .collect()
    }
    fn firsts(ips: &[IpAddr]) -> Vec<IpAddr> {
        first_v4(ips).into_iter().chain(first_v6(ips)).collect()
    }
    prop_oneof![
        Just(("{ips-json}", all as Named)),
        Just(("{ips}", all as Named)),
        Just((
            r#"{"ips": {ips-json}, "ifname": "eth0"}"#,
            all as fn(&[IpAddr]) -> Vec<IpAddr>
        )),
        Just(("{ipv4}", first_v4 as Named)),
        Just(("{ipv6}", first_v6 as Named)),
        Just((
            "{ipv4}/32,{ipv6}/128",
            firsts as fn(&[IpAddr]) -> Vec<IpAddr>
        )),
    ]
}

proptest! {
    /// Whatever the format, a pod naming a kept address is refused, naming exactly the kept
    /// addresses it sent and nothing of the records; one naming only free ones is admitted.
    #[test]
    fn kept_addresses_are_refused_and_free_ones_admitted(
        named in proptest::collection::vec(address(), 1..4),
        kept_mask in proptest::collection::vec(any::<bool>(), 4),
        others in proptest::collection::vec(address(), 0..4),
        (format, names) in format(),
    ) {
        let annotation = CniAnnotation::parse(&format!("example.com/ips={format}")).expect("valid");
        let value = annotation.render(&named);
        let sent = names(&named);
        // Kept: a chosen part of what the pod names, and addresses of other records.
        let kept: BTreeSet<IpAddr> = named
            .iter()
            .zip(&kept_mask)
            .filter(|(_, k)| **k)
            .map(|(ip, _)| *ip)
            .chain(others.iter().copied())
            .collect();
        let p = pod(false, &[("example.com/ips", value.as_str())]);
        let verdict = kept_address_claims(&p, None, &[annotation], |ip| {
            kept.contains(ip).then_some("ns/secret-record")
        });
        let refused: BTreeSet<IpAddr> = sent.iter().copied().filter(|ip| kept.contains(ip)).collect();
        match verdict {
            None => prop_assert!(refused.is_empty(), "{value:?} admitted though {refused:?} are kept"),
            Some(denial) => {
                prop_assert!(!refused.is_empty(), "{value:?} refused: {}", denial.message);
                for ip in &refused {
                    prop_assert!(denial.message.contains(&ip.to_string()), "{} lacks {ip}", denial.message);
                }
                for ip in kept.difference(&sent.iter().copied().collect()) {
                    // An address the pod did not send is not told (unless it is one of
                    // those it sent, spelled within another: 10.0.0.1 in 10.0.0.10).
                    let told = denial.message.split(|c: char| !(c.is_ascii_hexdigit() || c == '.' || c == ':'))
                        .any(|token| token == ip.to_string());
                    prop_assert!(!told, "{} tells {ip}", denial.message);
                }
                prop_assert!(!denial.message.contains("secret-record"));
            }
        }
    }

    /// Any text at all is read without a panic, and an address nobody keeps is never refused.
    #[test]
    fn any_value_is_read_and_nothing_unkept_is_refused(value in ".{0,200}") {
        let p = pod(false, &[(CALICO, value.as_str())]);
        prop_assert_eq!(kept_address_claims(&p, None, &cni(), |_| None::<String>), None);
        let _ = addresses_in(&value);
    }
}
