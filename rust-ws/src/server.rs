//! The state one server instance shares between its routes and connections: [`Server`] (config,
//! metrics, hub, the broker when there is one, and the connection count WS_MAX_CONNECTIONS
//! limits) and the [`Slot`] a connection holds.
//!
//! Twin: python-ws/python_ws/app.py, whose `App` carries the same state for its handlers.
//!
//! Apart from lib.rs (which builds the server and so depends on every module), so that routes and
//! connections can use it without depending on the crate root: dependencies go one way
//! (tests/module_graph.rs checks it).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::broker::Broker;
use crate::config::Config;
use crate::hub::Hub;
use crate::metrics::Metrics;

/// State shared by every route and connection of one server instance.
pub struct Server {
    pub config: Config,
    pub metrics: Arc<Metrics>,
    pub hub: Arc<Hub>,
    /// `Some` with `WS_BROKER_URL`: broadcasts go through Redis (PROTOCOL.md §5).
    pub broker: Option<Arc<Broker>>,
    /// Connections open or being upgraded; what WS_MAX_CONNECTIONS limits.
    open: AtomicUsize,
}

impl Server {
    pub fn new(config: Config, metrics: Arc<Metrics>) -> Server {
        let broker_kind = if config.broker_url.is_some() {
            "redis"
        } else {
            "none"
        };
        metrics.set_node_info(&config.node_id, broker_kind);
        let (hub, broker) = match &config.broker_url {
            None => (Arc::new(Hub::new(config.send_queue)), None),
            Some(url) => {
                let hub = Arc::new(Hub::with_node(config.send_queue, &config.node_id));
                let broker = Broker::new(url.clone(), hub.clone(), metrics.clone());
                (hub, Some(Arc::new(broker)))
            }
        };
        Server {
            hub,
            broker,
            config,
            metrics,
            open: AtomicUsize::new(0),
        }
    }

    /// Reserves a connection slot, or `None` at WS_MAX_CONNECTIONS. The check and the increment
    /// are one atomic step, so concurrent upgrades cannot overshoot the limit.
    pub(crate) fn reserve(self: &Arc<Self>) -> Option<Slot> {
        let max = self.config.max_connections;
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (max == 0 || n < max).then_some(n + 1)
            })
            .ok()?;
        Some(Slot(self.clone()))
    }

    /// `/readyz`: no broker, or its connections up and subscribed.
    pub fn ready(&self) -> bool {
        self.broker.as_ref().is_none_or(|b| b.is_up())
    }

    pub fn open_connections(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// Waits (bounded) until every connection task has finished its closing handshake.
    pub async fn wait_idle(&self, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        while self.open_connections() > 0 {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        true
    }
}

/// One reserved connection slot; released on drop, including when an upgrade never completes.
pub struct Slot(Arc<Server>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}
