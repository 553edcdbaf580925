//! The one table of etcd's API methods: each method's gRPC path, its JSON gateway path, and
//! the call into the server. gRPC (protobuf) and the gateway (JSON) share `call`; only the
//! codec differs, so a method behaves the same on both.

use bytes::Bytes;

use crate::api::errors::Status;
use crate::api::pb::etcdserverpb as pb;
use crate::api::pb::{v3electionpb as election, v3lockpb as lock};
use crate::server::Core;

/// How a request body becomes a message and a response message becomes bytes.
pub trait Codec {
    fn decode<M>(&self, body: &Bytes) -> Result<M, Status>
    where
        M: prost::Message + Default + serde::de::DeserializeOwned;
    fn encode<M>(&self, message: &M) -> Bytes
    where
        M: prost::Message + serde::Serialize;
}

/// The unary methods ringd routes; streaming methods are handled by the transport.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Range,
    Put,
    DeleteRange,
    Txn,
    Compact,
    Status,
    MemberList,
    MemberAdd,
    MemberRemove,
    MemberUpdate,
    MemberPromote,
    MoveLeader,
    LeaseGrant,
    LeaseRevoke,
    LeaseTimeToLive,
    LeaseLeases,
    Hash,
    HashKv,
    Defragment,
    Alarm,
    Lock,
    Unlock,
    Campaign,
    Proclaim,
    Leader,
    Resign,
}

/// (gRPC path, gateway path, method). Gateway paths are etcd's (`google.api.http` bindings).
const ROUTES: &[(&str, &str, Method)] = &[
    ("/etcdserverpb.KV/Range", "/v3/kv/range", Method::Range),
    ("/etcdserverpb.KV/Put", "/v3/kv/put", Method::Put),
    ("/etcdserverpb.KV/DeleteRange", "/v3/kv/deleterange", Method::DeleteRange),
    ("/etcdserverpb.KV/Txn", "/v3/kv/txn", Method::Txn),
    ("/etcdserverpb.KV/Compact", "/v3/kv/compaction", Method::Compact),
    ("/etcdserverpb.Maintenance/Status", "/v3/maintenance/status", Method::Status),
    ("/etcdserverpb.Cluster/MemberList", "/v3/cluster/member/list", Method::MemberList),
    ("/etcdserverpb.Cluster/MemberAdd", "/v3/cluster/member/add", Method::MemberAdd),
    ("/etcdserverpb.Cluster/MemberRemove", "/v3/cluster/member/remove", Method::MemberRemove),
    ("/etcdserverpb.Cluster/MemberUpdate", "/v3/cluster/member/update", Method::MemberUpdate),
    ("/etcdserverpb.Cluster/MemberPromote", "/v3/cluster/member/promote", Method::MemberPromote),
    ("/etcdserverpb.Maintenance/MoveLeader", "/v3/maintenance/transfer-leadership", Method::MoveLeader),
    ("/etcdserverpb.Lease/LeaseGrant", "/v3/lease/grant", Method::LeaseGrant),
    ("/etcdserverpb.Lease/LeaseRevoke", "/v3/lease/revoke", Method::LeaseRevoke),
    ("/etcdserverpb.Lease/LeaseTimeToLive", "/v3/lease/timetolive", Method::LeaseTimeToLive),
    ("/etcdserverpb.Lease/LeaseLeases", "/v3/lease/leases", Method::LeaseLeases),
    ("/etcdserverpb.Maintenance/Hash", "/v3/maintenance/hash", Method::Hash),
    ("/etcdserverpb.Maintenance/HashKV", "/v3/maintenance/hashkv", Method::HashKv),
    ("/etcdserverpb.Maintenance/Defragment", "/v3/maintenance/defragment", Method::Defragment),
    ("/etcdserverpb.Maintenance/Alarm", "/v3/maintenance/alarm", Method::Alarm),
    ("/v3lockpb.Lock/Lock", "/v3/lock/lock", Method::Lock),
    ("/v3lockpb.Lock/Unlock", "/v3/lock/unlock", Method::Unlock),
    ("/v3electionpb.Election/Campaign", "/v3/election/campaign", Method::Campaign),
    ("/v3electionpb.Election/Proclaim", "/v3/election/proclaim", Method::Proclaim),
    ("/v3electionpb.Election/Leader", "/v3/election/leader", Method::Leader),
    ("/v3electionpb.Election/Resign", "/v3/election/resign", Method::Resign),
];

/// Every method of etcd's API (services and the methods of each) that clients may call.
/// A path in here that `ROUTES` lacks is answered "not implemented"; any other path is
/// "unknown service" / "unknown method", as grpc-go answers.
const SERVICES: &[(&str, &[&str])] = &[
    ("etcdserverpb.KV", &["Range", "Put", "DeleteRange", "Txn", "Compact"]),
    ("etcdserverpb.Watch", &["Watch"]),
    ("etcdserverpb.Lease", &["LeaseGrant", "LeaseRevoke", "LeaseKeepAlive", "LeaseTimeToLive", "LeaseLeases"]),
    ("etcdserverpb.Cluster", &["MemberAdd", "MemberRemove", "MemberUpdate", "MemberList", "MemberPromote"]),
    (
        "etcdserverpb.Maintenance",
        &["Alarm", "Status", "Defragment", "Hash", "HashKV", "Snapshot", "MoveLeader", "Downgrade"],
    ),
    (
        "etcdserverpb.Auth",
        &[
            "AuthEnable",
            "AuthDisable",
            "AuthStatus",
            "Authenticate",
            "UserAdd",
            "UserGet",
            "UserList",
            "UserDelete",
            "UserChangePassword",
            "UserGrantRole",
            "UserRevokeRole",
            "RoleAdd",
            "RoleGet",
            "RoleList",
            "RoleDelete",
            "RoleGrantPermission",
            "RoleRevokePermission",
        ],
    ),
    ("v3lockpb.Lock", &["Lock", "Unlock"]),
    ("v3electionpb.Election", &["Campaign", "Proclaim", "Leader", "Observe", "Resign"]),
];

/// How many methods `SERVICES` lists: the slots of the call counters (`api::metrics`).
pub const METHODS_COUNT: usize = {
    let mut count = 0;
    let mut service = 0;
    while service < SERVICES.len() {
        count += SERVICES[service].1.len();
        service += 1;
    }
    count
};

/// Every (service, method) of etcd's API, in slot order.
pub fn methods() -> impl Iterator<Item = (&'static str, &'static str)> {
    SERVICES.iter().flat_map(|&(service, methods)| methods.iter().map(move |&method| (service, method)))
}

/// The slot of the method a gRPC path names, if it is one of etcd's.
pub fn method_slot(path: &str) -> Option<usize> {
    let (service, method) = path.strip_prefix('/')?.rsplit_once('/')?;
    methods().position(|entry| entry == (service, method))
}

/// The slot of a method ringd routes (no search: a table made once).
pub fn routed_slot(method: Method) -> usize {
    static SLOTS: std::sync::LazyLock<Vec<usize>> = std::sync::LazyLock::new(|| {
        let mut slots = vec![usize::MAX; ROUTES.len()];
        for &(path, _, method) in ROUTES {
            slots[method as usize] = method_slot(path).expect("every routed path is one of etcd's methods");
        }
        assert!(slots.iter().all(|&slot| slot < METHODS_COUNT), "every method has a route");
        slots
    });
    SLOTS[method as usize]
}

/// The type go-grpc-prometheus gives a method (its `grpc_type` label).
pub fn grpc_type(service: &str, method: &str) -> &'static str {
    match (service, method) {
        ("etcdserverpb.Watch", "Watch") | ("etcdserverpb.Lease", "LeaseKeepAlive") => "bidi_stream",
        ("etcdserverpb.Maintenance", "Snapshot") | ("v3electionpb.Election", "Observe") => "server_stream",
        _ => "unary",
    }
}

/// The method a gRPC path names, or the status grpc-go would answer for it.
pub fn route_grpc(path: &str) -> Result<Method, Status> {
    if let Some(&(_, _, method)) = ROUTES.iter().find(|(grpc, _, _)| *grpc == path) {
        return Ok(method);
    }
    let trimmed = path.trim_start_matches('/');
    let (service, method) = trimmed.rsplit_once('/').unwrap_or((trimmed, ""));
    match SERVICES.iter().find(|(name, _)| *name == service) {
        Some((_, methods)) if methods.contains(&method) => Err(Status::not_implemented(method)),
        Some(_) => Err(Status::unknown_path(path, true)),
        None => Err(Status::unknown_path(path, false)),
    }
}

/// The method a gateway path names, if ringd serves it.
pub fn route_gateway(path: &str) -> Option<Method> {
    ROUTES.iter().find(|(_, gateway, _)| *gateway == path).map(|&(_, _, method)| method)
}

/// Whether a gateway path is one of etcd's (served by ringd or not yet).
pub fn is_known_gateway_path(path: &str) -> bool {
    const LATER: &[&str] = &[
        "/v3/kv/lease/revoke",
        "/v3/kv/lease/timetolive",
        "/v3/kv/lease/leases",
        "/v3/maintenance/snapshot",
        "/v3/maintenance/downgrade",
    ];
    path.starts_with("/v3/auth/") || LATER.contains(&path)
}

/// Decodes the request, calls the server, encodes the response. `cancelled` resolves if the
/// client gives up on the request; the calls that wait (Lock, Campaign) then clean up.
pub async fn call<C: Codec>(
    core: &Core,
    method: Method,
    body: &Bytes,
    codec: &C,
    cancelled: impl std::future::Future<Output = ()>,
) -> Result<Bytes, Status> {
    macro_rules! unary {
        ($request:ty, |$req:ident| $call:expr) => {{
            let $req: $request = codec.decode(body)?;
            let response = $call?;
            Ok(codec.encode(&response))
        }};
    }
    // The arms whose futures are over 1 KiB (lease time-to-live, lock, campaign, proclaim:
    // 1.2 to 2.8 KiB) are boxed, so that every request's future is not that large (see
    // `grpc::serve_stream`).
    match method {
        Method::Range => unary!(pb::RangeRequest, |req| core.range(req).await),
        Method::Put => unary!(pb::PutRequest, |req| core.put(req).await),
        Method::DeleteRange => unary!(pb::DeleteRangeRequest, |req| core.delete_range(req).await),
        Method::Txn => unary!(pb::TxnRequest, |req| core.txn(req).await),
        Method::Compact => unary!(pb::CompactionRequest, |req| core.compact(req).await),
        Method::Status => unary!(pb::StatusRequest, |_req| core.status()),
        Method::MemberList => unary!(pb::MemberListRequest, |_req| core.member_list()),
        Method::MemberAdd => unary!(pb::MemberAddRequest, |req| core.member_add(req).await),
        Method::MemberRemove => unary!(pb::MemberRemoveRequest, |req| core.member_remove(req).await),
        Method::MemberUpdate => unary!(pb::MemberUpdateRequest, |req| core.member_update(req).await),
        Method::MemberPromote => unary!(pb::MemberPromoteRequest, |req| core.member_promote(req).await),
        Method::MoveLeader => unary!(pb::MoveLeaderRequest, |req| core.move_leader(req).await),
        Method::LeaseGrant => unary!(pb::LeaseGrantRequest, |req| core.lease_grant(req).await),
        Method::LeaseRevoke => unary!(pb::LeaseRevokeRequest, |req| core.lease_revoke(req).await),
        Method::LeaseTimeToLive => {
            unary!(pb::LeaseTimeToLiveRequest, |req| Box::pin(core.lease_time_to_live(req)).await)
        }
        Method::LeaseLeases => unary!(pb::LeaseLeasesRequest, |_req| core.lease_leases().await),
        Method::Hash => unary!(pb::HashRequest, |_req| core.hash().await),
        Method::HashKv => unary!(pb::HashKvRequest, |req| core.hash_kv(req).await),
        Method::Defragment => unary!(pb::DefragmentRequest, |_req| core.defragment().await),
        Method::Alarm => unary!(pb::AlarmRequest, |req| core.alarm(req).await),
        Method::Lock => unary!(lock::LockRequest, |req| Box::pin(core.lock(req, cancelled)).await),
        Method::Unlock => unary!(lock::UnlockRequest, |req| core.unlock(req).await),
        Method::Campaign => unary!(election::CampaignRequest, |req| Box::pin(core.campaign(req, cancelled)).await),
        Method::Proclaim => unary!(election::ProclaimRequest, |req| Box::pin(core.proclaim(req)).await),
        Method::Leader => unary!(election::LeaderRequest, |req| core.election_leader(req).await),
        Method::Resign => unary!(election::ResignRequest, |req| core.resign(req).await),
    }
}
