//! Label and annotation keys that ests reads or writes.
//!
//! The `staticip.jke.jdcloud.com/*` keys are the source document's; the pod labels are the
//! upstream StatefulSet ones, so tools written for StatefulSets keep working on ests pods.

/// Set annotation: `"true"` turns static IPs on for every pod of the set.
pub const STATIC_IP_ENABLE: &str = "staticip.jke.jdcloud.com/enable";
/// Set annotation: the `StaticIPPool` whose blocks the set's IPs come from (IP range mode).
/// Without it a static-IP set is in record mode: the CNI picks the first IP and ests keeps it.
pub const STATIC_IP_POOL: &str = "staticip.jke.jdcloud.com/pool";
/// Set annotation: when a set's records release their IPs (see [`crate::ReleasePolicy`]).
pub const STATIC_IP_RELEASE_POLICY: &str = "staticip.jke.jdcloud.com/release-policy";
/// Set annotation: with release policy `TTL`, seconds an identity may be without a pod
/// before its IP is released.
pub const STATIC_IP_RELEASE_TTL_SECONDS: &str = "staticip.jke.jdcloud.com/release-ttl-seconds";

/// Pod label carried by every static-IP pod ests creates; the Pod webhook is scoped to it.
pub const STATIC_IP_POD_LABEL: &str = "staticip.jke.jdcloud.com/enabled";
/// Pod annotation: the pinned IP (comma-separated for dual-stack).
pub const STATIC_IP_POD_IP: &str = "staticip.jke.jdcloud.com/ip";
/// Pod annotation: the pinned node.
pub const STATIC_IP_POD_NODE: &str = "staticip.jke.jdcloud.com/node";
/// Pod annotation: UID of the StaticIP record the controller read when creating the pod.
pub const STATIC_IP_RECORD_UID: &str = "staticip.jke.jdcloud.com/record-uid";
/// Pod annotation: resourceVersion of that record.
pub const STATIC_IP_RECORD_VERSION: &str = "staticip.jke.jdcloud.com/record-resource-version";
/// StaticIP annotation: when the set controller last claimed the record for a pod it is about
/// to create (RFC 3339). Written with the record's resourceVersion before every pod creation;
/// the StaticIP manager releases no record while a claim is fresh.
pub const STATIC_IP_RECORD_CLAIMED_AT: &str = "staticip.jke.jdcloud.com/claimed-at";
/// Extended resource that range-mode static-IP pods request, so that only they are sent to
/// the extender's bind verb (`managedResources`, `ignoredByScheduler`).
pub const STATIC_IP_RESOURCE: &str = "jke.jdcloud.com/static-ip";

/// Upstream pod label: the revision the pod was created from.
pub const CONTROLLER_REVISION_HASH: &str = "controller-revision-hash";
/// Upstream pod label: the pod's own name.
pub const POD_NAME_LABEL: &str = "statefulset.kubernetes.io/pod-name";
/// Upstream pod label: the pod's ordinal.
pub const POD_INDEX_LABEL: &str = "apps.kubernetes.io/pod-index";

/// Finalizer on static-IP sets: before the set goes, the records its release policy keeps
/// are orphaned, so garbage collection does not take them (and their IPs) with it.
pub const SET_RECORDS_FINALIZER: &str = "jke.jdcloud.com/static-ip-records";
/// Finalizer on IP-range-mode records: the record goes only after its addresses are freed
/// on their blocks, once no pod of the identity runs.
pub const RECORD_RELEASE_FINALIZER: &str = "jke.jdcloud.com/release-ip";
/// Finalizer on StaticIPPools, added by the StaticIP manager: a deleted pool stays
/// (Terminating) until no record holds an address of it; then its IPBlocks are deleted and
/// the pool goes. No address is handed out of a pool being deleted.
pub const POOL_PROTECTION_FINALIZER: &str = "jke.jdcloud.com/pool-protection";

/// Label on a node that replaces another in node migration: the value is the name of the
/// node it replaces.
pub const REPLACEMENT_FOR_LABEL: &str = "jke.jdcloud.com/replacement-for";
/// The standard taint that releases a fenced node's pods and volumes.
pub const OUT_OF_SERVICE_TAINT: &str = "node.kubernetes.io/out-of-service";
/// Label on the NodeMigrations ests creates by itself (automatic mode): the source node.
pub const AUTO_MIGRATION_LABEL: &str = "jke.jdcloud.com/auto-migration-of";

/// Pod annotation a NodeMigration sets on a pod of an EnhancedStatefulSet that must leave
/// its node; the value names the migration. The set's controller, the only writer that takes
/// its pods down, evicts the pod within the set's maxUnavailable, counted together with its
/// rollout.
pub const EVICT_FOR: &str = "jke.jdcloud.com/evict-for";
/// With [`EVICT_FOR`]: the pods of one set carrying the same value are evicted at once or
/// not at all (pods using one node's IP blocks, whose routes move together).
pub const EVICT_TOGETHER: &str = "jke.jdcloud.com/evict-together";
