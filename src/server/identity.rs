//! Member and cluster IDs derived exactly as etcd derives them (etcd's membership/member.go
//! and cluster.go), so the IDs of a ringd member match those of an etcd member started with
//! the same flags: member ID = first 8 bytes (big-endian) of sha1(peer URLs sorted and
//! joined, then the cluster token); cluster ID = first 8 bytes of sha1 of the sorted member
//! IDs, each as 8 big-endian bytes. A member added to a running cluster (MemberAdd) gets
//! the time, in Unix seconds, hashed in after the token, as etcd's; it learns its ID from a
//! peer when it first starts and keeps it in `member/id`.

pub fn member_id(peer_urls: &[String], cluster_token: &str) -> u64 {
    let mut urls = peer_urls.to_vec();
    urls.sort();
    let mut hasher = sha1_smol::Sha1::new();
    hasher.update(urls.concat().as_bytes());
    hasher.update(cluster_token.as_bytes());
    first_u64(&hasher.digest().bytes())
}

/// The ID etcd's MemberAdd gives a new member: as `member_id`, with the time (Unix seconds,
/// in decimal) after the token.
pub fn member_id_at(peer_urls: &[String], cluster_token: &str, unix_seconds: u64) -> u64 {
    let mut urls = peer_urls.to_vec();
    urls.sort();
    let mut hasher = sha1_smol::Sha1::new();
    hasher.update(urls.concat().as_bytes());
    hasher.update(cluster_token.as_bytes());
    hasher.update(unix_seconds.to_string().as_bytes());
    first_u64(&hasher.digest().bytes())
}

pub fn cluster_id(member_ids: &[u64]) -> u64 {
    let mut ids = member_ids.to_vec();
    ids.sort_unstable();
    let mut hasher = sha1_smol::Sha1::new();
    for id in ids {
        hasher.update(&id.to_be_bytes());
    }
    first_u64(&hasher.digest().bytes())
}

fn first_u64(digest: &[u8; 20]) -> u64 {
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The IDs real etcd 3.4 reported for `--name ref` with the default peer URL and token.
    #[test]
    fn ids_match_etcds_defaults() {
        let member = member_id(&["http://localhost:2380".to_owned()], "etcd-cluster");
        assert_eq!(member, 10276657743932975437);
        assert_eq!(cluster_id(&[member]), 14841639068965178418);
    }

    /// MemberAdd's ID: the time goes into the hash, so a peer URL added again gets a new ID.
    #[test]
    fn an_added_members_id_depends_on_the_time() {
        let urls = ["http://10.0.0.4:2380".to_owned()];
        let first = member_id_at(&urls, "etcd-cluster", 1_700_000_000);
        assert_eq!(first, member_id_at(&urls, "etcd-cluster", 1_700_000_000));
        assert_ne!(first, member_id_at(&urls, "etcd-cluster", 1_700_000_001));
        assert_ne!(first, member_id(&urls, "etcd-cluster"));
    }
}
