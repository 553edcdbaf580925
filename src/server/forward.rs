//! The lease calls that do not go through Raft (KeepAlive, TimeToLive) are answered by the
//! leader's lessor alone, the only one that knows expiries; MemberPromote by the leader alone,
//! the only one that knows whether the learner caught up. A follower forwards them to the
//! leader, as etcd does (over its peer HTTP `/leases` path; ringd over the leader's client
//! URL with its own gRPC client), and answers with its own header, as etcd's does.
//!
//! Each core keeps one connection to the leader it last forwarded to; a new leader, or a
//! broken connection, gets a new one. A forward is retried every 50 ms (etcd's throttle)
//! until it succeeds, the leader says the lease is gone, or the request timeout passes.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::api::errors::{self, Code, Status};
use crate::api::pb::etcdserverpb as pb;
use crate::client::{Channel, Endpoint};

use super::Core;

/// Bound on connecting to the leader, per attempt.
const DIAL_TIMEOUT: Duration = Duration::from_secs(1);
/// Pause between attempts (etcd's LeaseRenew throttle).
const RETRY_PAUSE: Duration = Duration::from_millis(50);

/// This core's connection to the leader: (leader's member ID, channel).
#[derive(Default)]
pub struct LeaderLink {
    channel: RefCell<Option<(u64, Rc<Channel>)>>,
}

impl Core {
    /// A keepalive of a lease this member's lessor does not own: the leader's answer.
    pub(super) async fn forward_keep_alive(&self, id: i64) -> Result<pb::LeaseKeepAliveResponse, Status> {
        let ttl = self
            .forward(|channel| async move {
                let mut stream = channel.lease_keep_alive().await?;
                stream.send(id)?;
                let reply = stream.next().await?;
                reply.map(|reply| reply.ttl).ok_or_else(|| crate::client::Error::unavailable("keepalive stream ended"))
            })
            .await?;
        Ok(pb::LeaseKeepAliveResponse { header: Some(self.forwarded_header()), id, ttl })
    }

    /// TimeToLive of a lease this member's lessor does not own: the leader's answer.
    pub(super) async fn forward_time_to_live(
        &self,
        request: pb::LeaseTimeToLiveRequest,
    ) -> Result<pb::LeaseTimeToLiveResponse, Status> {
        let mut response = self.forward(|channel| async move { channel.lease_time_to_live(&request).await }).await?;
        response.header = Some(self.forwarded_header());
        Ok(response)
    }

    /// MemberPromote on a follower: only the leader knows whether the learner caught up, so
    /// the follower asks it (etcd forwards over its peer HTTP `/members/promote` path) and
    /// answers with the leader's members and errors, under its own header.
    pub(super) async fn forward_member_promote(
        &self,
        request: pb::MemberPromoteRequest,
    ) -> Result<pb::MemberPromoteResponse, Status> {
        let mut response = self
            .forward(|channel| async move {
                channel.unary::<_, pb::MemberPromoteResponse>("/etcdserverpb.Cluster/MemberPromote", &request).await
            })
            .await?;
        response.header = self.membership_header();
        Ok(response)
    }

    fn forwarded_header(&self) -> pb::ResponseHeader {
        self.shared.header(self.shared.watch.published())
    }

    /// Runs `call` on a connection to the current leader until it succeeds or fails with
    /// an answer that retrying cannot change, at most the request timeout.
    async fn forward<T, F, Fut>(&self, call: F) -> Result<T, Status>
    where
        F: Fn(Rc<Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<T, crate::client::Error>>,
    {
        let deadline = std::time::Instant::now() + self.shared.request_timeout();
        loop {
            let failure = match self.leader_channel().await {
                Ok(channel) => match call(channel).await {
                    Ok(answer) => return Ok(answer),
                    Err(error) if !retryable(&error) => return Err(error.into()),
                    Err(error) => {
                        self.leader_link.channel.replace(None);
                        error.into()
                    }
                },
                Err(status) => status,
            };
            if std::time::Instant::now() + RETRY_PAUSE >= deadline {
                return Err(if failure == errors::NO_LEADER { failure } else { errors::TIMEOUT });
            }
            glommio::timer::sleep(RETRY_PAUSE).await;
        }
    }

    /// The connection to the leader this member knows of, opened if need be.
    async fn leader_channel(&self) -> Result<Rc<Channel>, Status> {
        let leader = self.shared.leader_id.load(Ordering::Acquire);
        if leader == crate::raft::NONE {
            return Err(errors::NO_LEADER);
        }
        if let Some((id, channel)) = self.leader_link.channel.borrow().as_ref() {
            if *id == leader {
                return Ok(channel.clone());
            }
        }
        let url = {
            let members = self.shared.members.read().unwrap();
            members.iter().find(|member| member.id == leader).and_then(|member| member.client_ur_ls.first().cloned())
        };
        // A leader that has not published its client URLs yet cannot be reached: retry.
        let url = url.ok_or(errors::LEADER_CHANGED)?;
        let endpoint = Endpoint::parse(&url).map_err(|message| Status::with_message(Code::Unavailable, message))?;
        let endpoint = endpoint.with_tls(self.shared.config.forward_tls.clone().map(crate::client::ClientTls));
        let channel = Rc::new(Channel::connect(&endpoint, DIAL_TIMEOUT).await?);
        self.leader_link.channel.replace(Some((leader, channel.clone())));
        Ok(channel)
    }
}

/// Whether another attempt (perhaps at another leader) may answer differently: transport
/// failures, and a member that is no longer the leader.
fn retryable(error: &crate::client::Error) -> bool {
    error.code == Code::Unavailable || error.message == errors::NOT_LEADER.message
}
