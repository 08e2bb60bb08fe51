//! `HELLO`: what each side announces, and the limits both settle on.
//!
//! Each limit is the smaller of both sides' (streams, inline limit); on top
//! of that, a sender keeps every frame it writes within the frame limit its
//! peer announced, so a peer with a small reader is never sent a frame it
//! must refuse.

use super::{FEATURE_LIVE, FEATURE_RANGES, FEATURE_READ_ONLY, FEATURE_SPLIT, VERSION};
use crate::can::store::ranges;
use crate::engine::config::FRAME_ENVELOPE;
use crate::engine::EngineConfig;
use crate::pb;
use crate::recon::coded;
use crate::wire::{Violation, DEFAULT_MAX_FRAME_LEN};

/// The limits both sides settled on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Negotiated {
    /// Data streams each side opens.
    pub streams: u32,
    /// Inline limit for assets: the smaller of both sides'.
    pub inline_limit: u64,
    /// The largest frame payload the peer reads: every frame this side sends
    /// stays within it.
    pub peer_max_frame_len: u32,
    /// Both sides keep the connection for live sync.
    pub live: bool,
    /// Both sides reconcile with coded cells ([`crate::recon::coded`]).
    pub coded: bool,
    /// Both sides page their full lists ([`super::paged`]).
    pub paged: bool,
    /// Both sides pull: assets move only when their receiver asks
    /// ([`super::pull`]).
    pub pull: bool,
    /// Both sides move large assets by verified ranges, and a group fits
    /// the frames of both ([`super::FEATURE_RANGES`]).
    pub ranges: bool,
    /// Both sides take one large asset from several sources: an asset may
    /// be asked for again, by another run of its groups
    /// ([`super::FEATURE_SPLIT`]).
    pub split: bool,
    /// The peer takes nothing from this side ([`FEATURE_READ_ONLY`] in its
    /// `HELLO`): we may only read from it, so we send it nothing.
    pub peer_takes_nothing: bool,
}

/// Settles on the smaller of each limit. A peer offering zero streams, a zero
/// inline limit or a frame limit too small for any asset is refused.
pub fn negotiate(ours: &pb::Hello, theirs: &pb::Hello) -> Result<Negotiated, Violation> {
    if theirs.version < VERSION {
        return Err(Violation::Version(theirs.version));
    }
    let streams = ours.max_streams.min(theirs.max_streams);
    let inline_limit = ours.inline_limit.min(theirs.inline_limit);
    if streams == 0 {
        return Err(Violation::Limit("zero streams"));
    }
    if inline_limit == 0 {
        return Err(Violation::Limit("a zero inline limit"));
    }
    // A peer that announces no frame limit reads the format's default.
    let peer_max_frame_len = match theirs.max_frame_len {
        0 => DEFAULT_MAX_FRAME_LEN,
        announced => announced,
    };
    if u64::from(peer_max_frame_len) <= FRAME_ENVELOPE {
        return Err(Violation::Limit("a frame limit below the frame envelope"));
    }
    let both = |feature: &str| {
        [ours, theirs]
            .iter()
            .all(|hello| hello.features.iter().any(|f| f == feature))
    };
    let ranges = both(FEATURE_RANGES)
        && u64::from(peer_max_frame_len) >= ranges::GROUP_BYTES + FRAME_ENVELOPE
        && u64::from(ours.max_frame_len) >= ranges::GROUP_BYTES + FRAME_ENVELOPE;
    Ok(Negotiated {
        streams,
        inline_limit,
        peer_max_frame_len,
        live: both(FEATURE_LIVE),
        coded: both(coded::FEATURE),
        paged: both(super::paged::FEATURE),
        pull: both(super::pull::FEATURE),
        ranges,
        split: ranges && both(FEATURE_SPLIT),
        peer_takes_nothing: theirs.features.iter().any(|f| f == FEATURE_READ_ONLY),
    })
}

/// This side's `HELLO` for `config`; `live` asks to keep the connection.
pub fn hello(config: &EngineConfig, live: bool) -> pb::Hello {
    pb::Hello {
        version: VERSION,
        max_streams: config.streams,
        codecs: vec!["zstd".into(), "raw".into()],
        inline_limit: config.inline_limit,
        features: [
            (live, FEATURE_LIVE),
            (config.coded_recon, coded::FEATURE),
            (config.paged_lists, super::paged::FEATURE),
            (config.pull, super::pull::FEATURE),
            (config.ranges, FEATURE_RANGES),
            (config.ranges && config.split, FEATURE_SPLIT),
            (config.read_only_peer, FEATURE_READ_ONLY),
        ]
        .into_iter()
        .filter(|(on, _)| *on)
        .map(|(_, feature)| feature.to_owned())
        .collect(),
        max_frame_len: config.max_frame_len(),
        capability: Default::default(),
    }
}

/// The engine settings of a session: what this side receives with
/// (`receive`) and what it sends with (`send`, within the peer's frame limit).
pub(crate) fn session_configs(
    ours: &EngineConfig,
    limits: &Negotiated,
) -> (EngineConfig, EngineConfig) {
    let mut receive = ours.clone();
    receive.streams = limits.streams;
    receive.ranges = limits.ranges;
    receive.inline_limit = limits.inline_limit;
    let mut send = receive.clone();
    let room = u64::from(limits.peer_max_frame_len) - FRAME_ENVELOPE;
    send.inline_limit = send.inline_limit.min(room);
    // Chunks never exceed the inline limit, so they fit the peer's frames too.
    send.chunk_bytes = send.chunk_bytes.min(send.inline_limit as usize).max(1);
    (receive, send)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::v2::FEATURE_LIVE;

    #[test]
    fn negotiation_takes_the_smaller_limits_and_refuses_unusable_ones() {
        let ours = hello(&EngineConfig::default(), true);
        let mut theirs = hello(&EngineConfig::default(), false);
        theirs.max_streams = 2;
        theirs.inline_limit = 4096;
        theirs.max_frame_len = 512 * 1024;
        assert_eq!(
            negotiate(&ours, &theirs).unwrap(),
            Negotiated {
                streams: 2,
                inline_limit: 4096,
                peer_max_frame_len: 512 * 1024,
                live: false,
                coded: true,
                paged: true,
                pull: true,
                ranges: false,
                split: false,
                peer_takes_nothing: false,
            }
        );
        theirs.features = vec![FEATURE_LIVE.into()];
        let settled = negotiate(&ours, &theirs).unwrap();
        assert!(settled.live);
        assert!(!settled.peer_takes_nothing);
        theirs.features.push(FEATURE_READ_ONLY.into());
        assert!(
            negotiate(&ours, &theirs).unwrap().peer_takes_nothing,
            "a peer that grants us read only takes nothing"
        );
        let read_only = EngineConfig {
            read_only_peer: true,
            ..EngineConfig::default()
        };
        assert!(hello(&read_only, false)
            .features
            .contains(&FEATURE_READ_ONLY.to_string()));
        assert!(
            !settled.coded,
            "a peer without the feature reconciles in full"
        );
        theirs.max_streams = 0;
        assert!(matches!(
            negotiate(&ours, &theirs),
            Err(Violation::Limit("zero streams"))
        ));
        theirs.max_streams = 2;
        theirs.max_frame_len = 1024;
        assert!(matches!(
            negotiate(&ours, &theirs),
            Err(Violation::Limit(_))
        ));
        theirs.max_frame_len = 0;
        assert_eq!(
            negotiate(&ours, &theirs).unwrap().peer_max_frame_len,
            DEFAULT_MAX_FRAME_LEN,
            "no announced limit: the format's default"
        );
        theirs.version = 1;
        assert!(matches!(
            negotiate(&ours, &theirs),
            Err(Violation::Version(1))
        ));
    }

    #[test]
    fn a_sender_keeps_every_frame_within_the_peers_limit() {
        let ours = EngineConfig::default();
        let limits = Negotiated {
            streams: 4,
            inline_limit: ours.inline_limit,
            peer_max_frame_len: 512 * 1024,
            live: false,
            coded: false,
            paged: false,
            pull: false,
            ranges: false,
            split: false,
            peer_takes_nothing: false,
        };
        let (receive, send) = session_configs(&ours, &limits);
        assert!(send.max_frame_len() <= limits.peer_max_frame_len);
        assert!(send.chunk_bytes as u64 <= send.inline_limit);
        assert_eq!(
            receive.inline_limit, ours.inline_limit,
            "we still accept ours"
        );
    }
}
