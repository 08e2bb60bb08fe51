//! The nodes of `loadtest reset`: `can-sync daemon`s on their own embedded
//! stores, in a full mesh with access closed, each of which can be stopped,
//! emptied and started again as the same node.
//!
//! Each pair of nodes has one dialer, as a user would set it up: node `i`
//! dials every node before it (`--peer` with its ticket, which also admits
//! it) and `--allow`s the ids of every node after it, which will dial it.
//! Every node listens on a loopback port of its own, picked once: started
//! again, a node keeps its key (its data folder) and its address, hence its
//! ticket, so the nodes that dial it find it again by themselves, with the
//! flags they were started with.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use can_sync::can::HttpCan;

use crate::agents::{self, Daemon, Launcher, Node};
use crate::settle;

/// One node of the mesh, running or not.
struct Member {
    /// `node-1`, `node-2`, …
    name: String,
    /// Its data folder: key, ticket, and the store in [`agents::node_store`].
    data_dir: PathBuf,
    /// The loopback address its endpoint binds at every start.
    listen: SocketAddr,
    /// Its endpoint id, what `--allow` takes.
    id: String,
    /// The ticket it printed at its first start (the same at every start:
    /// same key, same address).
    ticket: Option<String>,
    /// Processes started so far; names each start's log.
    starts: u32,
    /// The running daemon.
    node: Option<Node>,
}

/// The whole mesh.
pub(crate) struct Mesh {
    launcher: Launcher,
    members: Vec<Member>,
}

impl Mesh {
    /// `count` nodes' data folders, keys and listen addresses, none started.
    pub(crate) async fn prepare(launcher: &Launcher, count: usize) -> Result<Self> {
        let mut members = Vec::with_capacity(count);
        for index in 1..=count {
            let name = format!("node-{index}");
            let data_dir = launcher.dir.join(&name);
            let id = launcher
                .endpoint_id(&format!("{name}-id"), &data_dir)
                .await?;
            members.push(Member {
                name,
                data_dir,
                listen: agents::free_udp_addr()?,
                id,
                ticket: None,
                starts: 0,
                node: None,
            });
        }
        Ok(Self {
            launcher: launcher.clone(),
            members,
        })
    }

    /// Nodes in the mesh.
    pub(crate) fn len(&self) -> usize {
        self.members.len()
    }

    /// The name of node `index` (from 0).
    pub(crate) fn name(&self, index: usize) -> &str {
        &self.members[index].name
    }

    /// Every node's embedded store, in order.
    pub(crate) fn stores(&self) -> Vec<PathBuf> {
        self.members
            .iter()
            .map(|m| agents::node_store(&m.data_dir))
            .collect()
    }

    /// Starts node `index`: it dials every node before it, whose tickets
    /// must be known (started once), and admits every node after it.
    pub(crate) async fn start(&mut self, index: usize) -> Result<()> {
        let tickets: Vec<String> = self.members[..index]
            .iter()
            .map(|m| {
                m.ticket
                    .clone()
                    .with_context(|| format!("{} was never started", m.name))
            })
            .collect::<Result<_>>()?;
        let peers: Vec<&str> = tickets.iter().map(String::as_str).collect();
        let allow: Vec<String> = self.members[index + 1..]
            .iter()
            .map(|m| m.id.clone())
            .collect();
        let member = &mut self.members[index];
        ensure!(member.node.is_none(), "{} is already running", member.name);
        member.starts += 1;
        let log_name = format!("{}-start-{}", member.name, member.starts);
        let node = self
            .launcher
            .node_on(
                &log_name,
                &member.data_dir,
                &member.listen.to_string(),
                &peers,
                &allow,
            )
            .await?;
        member.ticket = Some(node.daemon.ticket.clone());
        member.node = Some(node);
        Ok(())
    }

    /// Starts every node, in order (each dials those before it).
    pub(crate) async fn start_all(&mut self) -> Result<()> {
        for index in 0..self.len() {
            self.start(index).await?;
        }
        Ok(())
    }

    /// Stops node `index` by SIGTERM; an error if it did not exit 0.
    pub(crate) async fn stop(&mut self, index: usize) -> Result<()> {
        let member = &mut self.members[index];
        let node = member
            .node
            .take()
            .with_context(|| format!("{} is not running", member.name))?;
        node.daemon.stop().await?;
        Ok(())
    }

    /// Deletes node `index`'s store, stopped: its key and ticket stay, so
    /// it comes back as the same node with nothing.
    pub(crate) fn wipe_store(&self, index: usize) -> Result<()> {
        let member = &self.members[index];
        ensure!(member.node.is_none(), "{} is still running", member.name);
        let store = agents::node_store(&member.data_dir);
        std::fs::remove_dir_all(&store).with_context(|| format!("deleting {}", store.display()))
    }

    /// The running node `index`.
    pub(crate) fn node(&self, index: usize) -> Result<&Node> {
        let member = &self.members[index];
        member
            .node
            .as_ref()
            .with_context(|| format!("{} is not running", member.name))
    }

    /// Every running node's name and CAN client.
    pub(crate) fn cans(&self) -> Vec<(&str, &HttpCan)> {
        self.members
            .iter()
            .filter_map(|m| Some((m.name.as_str(), &*m.node.as_ref()?.can)))
            .collect()
    }

    /// Every node's name and daemon; an error if one is not running.
    pub(crate) fn daemons(&self) -> Result<Vec<(&str, &Daemon)>> {
        (0..self.len())
            .map(|index| Ok((self.name(index), &self.node(index)?.daemon)))
            .collect()
    }

    /// Waits until every node has one live link to each other node: every
    /// initial session is over. An error naming the nodes that had not by
    /// `deadline`.
    pub(crate) async fn await_live(&self, http: &reqwest::Client, deadline: Instant) -> Result<()> {
        let links = self.len() as u64 - 1;
        let mut behind = Vec::new();
        for (name, daemon) in self.daemons()? {
            if !settle::live_links(daemon, http, links, deadline).await {
                let now = daemon.metric(http, "cansync_live_links").await;
                behind.push(format!(
                    "{name} ({} live links)",
                    now.map_or("?".into(), |n| n.to_string())
                ));
            }
        }
        if !behind.is_empty() {
            bail!(
                "waited for {links} live links on every node; at the deadline: {}",
                behind.join(", ")
            );
        }
        Ok(())
    }

    /// Stops every running node by SIGTERM; what did not exit cleanly.
    pub(crate) async fn stop_all(&mut self) -> Vec<String> {
        let mut problems = Vec::new();
        for index in 0..self.len() {
            if self.members[index].node.is_some() {
                if let Err(err) = self.stop(index).await {
                    problems.push(format!("{}: {err:#}", self.name(index)));
                }
            }
        }
        problems
    }
}
