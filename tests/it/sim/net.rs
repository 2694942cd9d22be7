//! An in-process network for clusters inside one test process: the fault seam, plugged
//! into each node as its peer [`Transport`] (a test-only implementation of it).
//!
//! Members register a [`PeerHandler`]; every call goes through a directed link whose
//! faults the test sets: cut (partition, one-way or both), a probability of losing the
//! request or the response, and a delay range. All randomness comes from one seeded RNG,
//! so a schedule can be replayed from its seed. Messages are JSON round-tripped, as on
//! the wire, so encoding bugs show up here too.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;
use palisade::peer::{PeerHandler, PeerRequest, PeerResponse, Transport, TransportError};
use palisade::raft::{Member, NodeId};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Faults of one directed link.
#[derive(Debug, Clone, Default)]
pub struct LinkFaults {
    /// Probability that a request is lost before the target sees it.
    pub drop_request: f64,
    /// Probability that the target's response is lost (the target did act).
    pub drop_response: f64,
    /// Delay added in each direction, drawn uniformly from this range (ms).
    pub delay_ms: (u64, u64),
}

#[derive(Default)]
struct State {
    members: HashMap<NodeId, Arc<dyn PeerHandler>>,
    /// Directed links that deliver nothing.
    cut: HashSet<(NodeId, NodeId)>,
    faults: HashMap<(NodeId, NodeId), LinkFaults>,
    /// Applied to every link without its own entry.
    default_faults: LinkFaults,
    /// Requests larger than this (JSON bytes) are refused, as a peer listener refuses them.
    max_message_bytes: Option<usize>,
    /// The largest request delivered so far (JSON bytes).
    largest_delivered: usize,
}

/// The simulated network.
pub struct SimNet {
    state: Mutex<State>,
    rng: Mutex<StdRng>,
    seed: u64,
}

impl SimNet {
    pub fn new(seed: u64) -> Arc<SimNet> {
        Arc::new(SimNet {
            state: Mutex::new(State::default()),
            rng: Mutex::new(StdRng::seed_from_u64(seed)),
            seed,
        })
    }

    /// The seed this network's randomness came from.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes member `id` reachable through `handler`.
    pub fn register(&self, id: NodeId, handler: Arc<dyn PeerHandler>) {
        self.state().members.insert(id, handler);
    }

    /// Takes member `id` off the network (a crash: calls to it fail as unreachable).
    pub fn unregister(&self, id: NodeId) {
        self.state().members.remove(&id);
    }

    /// Cuts the link from `from` to `to` (one way).
    pub fn cut(&self, from: NodeId, to: NodeId) {
        self.state().cut.insert((from, to));
    }

    /// Splits the members into groups that cannot reach each other (both ways).
    pub fn partition(&self, groups: &[&[NodeId]]) {
        let mut st = self.state();
        for (i, a) in groups.iter().enumerate() {
            for (j, b) in groups.iter().enumerate() {
                if i != j {
                    for x in a.iter() {
                        for y in b.iter() {
                            st.cut.insert((*x, *y));
                        }
                    }
                }
            }
        }
    }

    /// Cuts `id` off from every other registered member, both ways.
    pub fn isolate(&self, id: NodeId) {
        let mut st = self.state();
        let others: Vec<NodeId> = st.members.keys().copied().filter(|m| *m != id).collect();
        for o in others {
            st.cut.insert((id, o));
            st.cut.insert((o, id));
        }
    }

    /// Restores every link and clears all faults.
    pub fn heal(&self) {
        let mut st = self.state();
        st.cut.clear();
        st.faults.clear();
        st.default_faults = LinkFaults::default();
    }

    /// Sets the faults of one directed link.
    pub fn set_faults(&self, from: NodeId, to: NodeId, faults: LinkFaults) {
        self.state().faults.insert((from, to), faults);
    }

    /// Refuses requests larger than `bytes` (JSON), as a member's peer listener does.
    pub fn set_max_message_bytes(&self, bytes: usize) {
        self.state().max_message_bytes = Some(bytes);
    }

    /// The largest request delivered so far (JSON bytes).
    pub fn largest_delivered(&self) -> usize {
        self.state().largest_delivered
    }

    /// Sets the faults of every link that has none of its own.
    pub fn set_default_faults(&self, faults: LinkFaults) {
        self.state().default_faults = faults;
    }

    fn draw(&self, p: f64) -> bool {
        p > 0.0 && self.rng.lock().unwrap_or_else(|e| e.into_inner()).gen_bool(p.min(1.0))
    }

    fn delay(&self, (lo, hi): (u64, u64)) -> Duration {
        if hi == 0 {
            return Duration::ZERO;
        }
        let ms = self.rng.lock().unwrap_or_else(|e| e.into_inner()).gen_range(lo..=hi.max(lo));
        Duration::from_millis(ms)
    }

    /// Delivers `req` from `from` to `to` through the link's faults.
    pub async fn call(
        &self,
        from: NodeId,
        to: NodeId,
        req: PeerRequest,
        timeout: Duration,
    ) -> Result<PeerResponse, TransportError> {
        let (handler, faults, cut_there, cut_back) = {
            let st = self.state();
            let faults = st.faults.get(&(from, to)).cloned().unwrap_or_else(|| st.default_faults.clone());
            (st.members.get(&to).cloned(), faults, st.cut.contains(&(from, to)), st.cut.contains(&(to, from)))
        };
        let Some(handler) = handler else {
            return Err(TransportError::Unreachable(format!("member {to} is down")));
        };
        if cut_there {
            return Err(TransportError::Unreachable(format!("link {from}->{to} is cut")));
        }
        // Round-trip through JSON, as the wire does.
        let wire = serde_json::to_vec(&req).map_err(|e| TransportError::Unreachable(e.to_string()))?;
        {
            let mut st = self.state();
            if st.max_message_bytes.is_some_and(|max| wire.len() > max) {
                return Err(TransportError::Unreachable(format!(
                    "a message of {} bytes is over the limit",
                    wire.len()
                )));
            }
            st.largest_delivered = st.largest_delivered.max(wire.len());
        }
        let req: PeerRequest =
            serde_json::from_slice(&wire).map_err(|e| TransportError::Unreachable(e.to_string()))?;
        let lose_request = self.draw(faults.drop_request);
        let lose_response = self.draw(faults.drop_response);
        let there = self.delay(faults.delay_ms);
        let back = self.delay(faults.delay_ms);
        let exchange = async {
            tokio::time::sleep(there).await;
            if lose_request {
                std::future::pending::<()>().await;
            }
            let resp = handler.handle(from, req).await;
            tokio::time::sleep(back).await;
            if lose_response || cut_back {
                std::future::pending::<()>().await;
            }
            let wire = serde_json::to_vec(&resp).map_err(|e| TransportError::Unreachable(e.to_string()))?;
            serde_json::from_slice(&wire).map_err(|e| TransportError::Unreachable(e.to_string()))
        };
        tokio::time::timeout(timeout, exchange).await.map_err(|_| TransportError::Timeout)?
    }
}

/// One member's view of the network: its [`Transport`].
pub struct SimTransport {
    pub net: Arc<SimNet>,
    /// The member this transport speaks for.
    pub from: NodeId,
}

impl Transport for SimTransport {
    fn call(
        &self,
        target: NodeId,
        _member: &Member,
        req: PeerRequest,
        timeout: Duration,
    ) -> BoxFuture<'static, Result<PeerResponse, TransportError>> {
        let (net, from) = (self.net.clone(), self.from);
        async move { net.call(from, target, req, timeout).await }.boxed()
    }
}
