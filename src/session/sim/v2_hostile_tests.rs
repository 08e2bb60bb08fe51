//! Protocol v2 on the simulated pair against a scripted peer: the deadlines,
//! and every hostile control message or data stream.

use std::time::Duration;

use bytes::Bytes;
use prost::Message;

use super::net::{Net, Path};
use super::store::SimStore;
use super::v2_tests::{config, peer, World};
use crate::asset::{AssetHash, MetaVersion, Summary};
use crate::pb;
use crate::recon::compact;
use crate::session::v2::{hello, Outcome, MAX_HELLO_FRAME};
use crate::session::{Role, SessionError};
use crate::wire::data_stream::{encode_done, frame};
use crate::wire::{FrameError, FrameType, Violation, CLOSE_DONE};

/// What a scripted peer sends: control frames (then a finish when
/// `finish`), and whole data streams.
struct Script {
    control: Vec<Bytes>,
    finish: bool,
    data: Vec<Vec<Bytes>>,
}

/// An honest initiator against `script`; returns its outcome and when.
fn against(script: Script) -> (Result<Outcome, SessionError>, Duration) {
    let mut net = Net::new(Path::clean(), 9);
    let (ab, ba) = (net.open(), net.open());
    let now = net.now;
    for frame in &script.control {
        net.send(ba, now, frame);
    }
    if script.finish {
        net.finish(ba, now);
    }
    let mut data = Vec::new();
    for stream in &script.data {
        let id = net.open();
        for frame in stream {
            net.send(id, now, frame);
        }
        net.finish(id, now);
        data.push(id);
    }
    let victim = peer(
        &mut net,
        Role::Initiator,
        config(1),
        false,
        ab,
        ba,
        SimStore::default(),
    );
    let mut world = World {
        net,
        peers: vec![victim],
        data_towards: [data, Vec::new()],
        due: Vec::new(),
        opened: [0, 0],
        wants_towards: Default::default(),
        reading_wants: [false; 2],
    };
    world.run(9);
    let outcome = world.peers[0].side.outcome.take().expect("over");
    (outcome, world.net.elapsed())
}

/// The `HELLO` of a scripted peer: one that sends what it decides unasked
/// (no `pull`), the mode these scripts speak.
fn hello_frame(edit: impl FnOnce(&mut pb::Hello)) -> Bytes {
    let pushes = crate::engine::EngineConfig {
        pull: false,
        ..config(1)
    };
    let mut theirs = hello(&pushes, false);
    edit(&mut theirs);
    frame(FrameType::Hello, &theirs.encode_to_vec())
}

fn recon_frame() -> Bytes {
    let round = pb::Recon {
        packed_summaries: Bytes::from(compact::encode(&[], 3)),
        wants: Bytes::new(),
        done: true,
        ..Default::default()
    };
    frame(FrameType::Recon, &round.encode_to_vec())
}

fn summary_frame(rejected: Vec<pb::Rejection>) -> Bytes {
    let summary = pb::SessionSummary {
        received: 0,
        rejected,
    };
    frame(FrameType::Summary, &summary.encode_to_vec())
}

fn violation(outcome: Result<Outcome, SessionError>) -> Violation {
    match outcome {
        Err(SessionError::Peer(violation)) => violation,
        other => panic!("expected a violation, got {other:?}"),
    }
}

#[test]
fn a_peer_that_never_says_hello_fails_at_the_idle_deadline() {
    let (outcome, at) = against(Script {
        control: vec![],
        finish: false,
        data: vec![],
    });
    assert!(matches!(
        violation(outcome),
        Violation::Silent {
            during: "waiting for HELLO",
            ..
        }
    ));
    assert_eq!(at, config(1).idle_timeout);
}

#[test]
fn a_peer_that_never_reconciles_fails_one_idle_timeout_after_hello() {
    let (outcome, at) = against(Script {
        control: vec![hello_frame(|_| {})],
        finish: false,
        data: vec![],
    });
    assert!(matches!(
        violation(outcome),
        Violation::Silent {
            during: "waiting for RECON",
            ..
        }
    ));
    let hello_arrives = Path::clean().latency;
    assert_eq!(at, hello_arrives + config(1).idle_timeout);
}

#[test]
fn a_peer_that_never_sends_its_summary_fails_after_the_grace() {
    let (outcome, at) = against(Script {
        control: vec![hello_frame(|_| {}), recon_frame()],
        finish: false,
        data: vec![vec![encode_done(0, 0)]],
    });
    let grace = config(1).idle_timeout * crate::session::v2::SUMMARY_GRACE;
    assert!(matches!(
        violation(outcome),
        Violation::Silent {
            during: "waiting for SUMMARY",
            waited,
        } if waited == grace
    ));
    assert!(at >= grace, "failed after {at:?}, before the grace");
    assert!(
        at < grace + Duration::from_secs(1),
        "failed only after {at:?}"
    );
}

/// Found by the `control_messages` fuzz target
/// (`fuzz/regressions/control_messages-1.bin`): a full-list RECON with an
/// empty payload once made the decoder reserve its whole 3.5 GB bound. It is
/// a violation like any other undecodable list, and costs what was sent.
#[test]
fn an_empty_summary_list_is_a_violation_not_an_allocation() {
    let empty = pb::Recon {
        packed_summaries: Bytes::new(),
        wants: Bytes::new(),
        done: true,
        ..Default::default()
    };
    let (outcome, _) = against(Script {
        control: vec![
            hello_frame(|_| {}),
            frame(FrameType::Recon, &empty.encode_to_vec()),
        ],
        finish: false,
        data: vec![],
    });
    violation(outcome);
}

#[test]
fn a_complete_scripted_peer_is_a_complete_session() {
    let (outcome, _) = against(Script {
        control: vec![
            hello_frame(|_| {}),
            recon_frame(),
            summary_frame(vec![]),
            encode_done(0, 0),
        ],
        finish: true,
        data: vec![vec![encode_done(0, 0)]],
    });
    let outcome = outcome.expect("the session completes");
    assert_eq!(outcome.close, Some(CLOSE_DONE));
}

#[test]
fn every_hostile_control_message_is_its_own_violation() {
    let good_data = || vec![vec![encode_done(0, 0)]];
    type Check = fn(&Violation) -> bool;
    let short_hash = pb::Rejection {
        hash: Bytes::from_static(&[1; 31]),
        reason: "x".into(),
    };
    let cases: Vec<(&str, Vec<Bytes>, Check)> = vec![
        (
            "an old version",
            vec![hello_frame(|h| h.version = 1)],
            |v| matches!(v, Violation::Version(1)),
        ),
        (
            "zero streams",
            vec![hello_frame(|h| h.max_streams = 0)],
            |v| matches!(v, Violation::Limit("zero streams")),
        ),
        (
            "a tiny frame limit",
            vec![hello_frame(|h| h.max_frame_len = 10)],
            |v| matches!(v, Violation::Limit(_)),
        ),
        (
            "a garbage HELLO",
            vec![frame(FrameType::Hello, &[0xff, 0xff])],
            |v| {
                matches!(
                    v,
                    Violation::Decode {
                        message: "Hello",
                        ..
                    }
                )
            },
        ),
        ("RECON first", vec![recon_frame()], |v| {
            matches!(
                v,
                Violation::Unexpected {
                    expected: "HELLO",
                    got: FrameType::Recon,
                    ..
                }
            )
        }),
        (
            "garbage summaries",
            vec![
                hello_frame(|_| {}),
                frame(
                    FrameType::Recon,
                    &pb::Recon {
                        packed_summaries: Bytes::from_static(b"not zstd"),
                        wants: Bytes::new(),
                        done: true,
                        ..Default::default()
                    }
                    .encode_to_vec(),
                ),
            ],
            |v| matches!(v, Violation::Summaries(_)),
        ),
        (
            "a refusal naming a 31-byte hash",
            vec![
                hello_frame(|_| {}),
                recon_frame(),
                summary_frame(vec![short_hash]),
            ],
            |v| matches!(v, Violation::MalformedHash(_)),
        ),
        (
            "DONE before SUMMARY",
            vec![hello_frame(|_| {}), recon_frame(), encode_done(0, 0)],
            |v| {
                matches!(
                    v,
                    Violation::Unexpected {
                        expected: "SUMMARY",
                        ..
                    }
                )
            },
        ),
        (
            "a frame after DONE",
            vec![
                hello_frame(|_| {}),
                recon_frame(),
                summary_frame(vec![]),
                encode_done(0, 0),
                summary_frame(vec![]),
            ],
            |v| matches!(v, Violation::AfterDone(FrameType::Summary)),
        ),
        (
            "the end before SUMMARY",
            vec![hello_frame(|_| {}), recon_frame()],
            |v| {
                matches!(
                    v,
                    Violation::EndedEarly {
                        missing: "SUMMARY",
                        ..
                    }
                )
            },
        ),
    ];
    for (name, control, expected) in cases {
        let (outcome, _) = against(Script {
            control,
            finish: true,
            data: good_data(),
        });
        let violation = violation(outcome);
        assert!(expected(&violation), "{name}: {violation:?}");
    }
}

#[test]
fn a_broken_data_stream_fails_the_session_as_the_peers_fault() {
    let (outcome, _) = against(Script {
        control: vec![hello_frame(|_| {}), recon_frame()],
        finish: false,
        data: vec![vec![frame(FrameType::Hello, &[])]],
    });
    assert!(matches!(
        violation(outcome),
        Violation::Unexpected {
            got: FrameType::Hello,
            ..
        }
    ));
}

/// A page of the paged full exchange holding `summaries`.
fn page_frame(summaries: &[Summary], done: bool) -> Bytes {
    let round = pb::Recon {
        packed_summaries: Bytes::from(compact::encode(summaries, 3)),
        done,
        ..Default::default()
    };
    frame(FrameType::Recon, &round.encode_to_vec())
}

#[test]
fn hostile_pages_are_violations_before_anything_is_merged() {
    use crate::session::v2::paged::MAX_PAGE;
    let summary = |i: u32| Summary {
        hash: AssetHash::of(&i.to_le_bytes()),
        created_at_ms: 1,
        size: 1,
        version: MetaVersion {
            updated_at_ms: 1,
            digest: [0; 32],
        },
    };
    let mut sorted: Vec<Summary> = (0..3).map(summary).collect();
    sorted.sort_by_key(|s| s.hash);
    let backwards = vec![sorted[2], sorted[0]];
    let oversized: Vec<Summary> = (0..=MAX_PAGE as u32).map(summary).collect();
    type Check = fn(&Violation) -> bool;
    let cases: [(&str, Vec<Bytes>, Check); 4] = [
        (
            "a page out of hash order",
            vec![page_frame(&backwards, true)],
            |v| matches!(v, Violation::Recon(why) if why.contains("hash order")),
        ),
        (
            "a page repeating the last page's hash",
            vec![
                page_frame(&sorted[..2], false),
                page_frame(&sorted[1..], true),
            ],
            |v| matches!(v, Violation::Recon(_)),
        ),
        (
            "a page above the page limit",
            vec![page_frame(&oversized, true)],
            |v| matches!(v, Violation::Summaries(_)),
        ),
        (
            "a page after the last one",
            vec![page_frame(&sorted, true), page_frame(&[], true)],
            |v| {
                matches!(
                    v,
                    Violation::Unexpected {
                        expected: "SUMMARY",
                        ..
                    }
                )
            },
        ),
    ];
    for (what, pages, check) in cases {
        let mut control = vec![hello_frame(|_| {})];
        control.extend(pages);
        let (outcome, _) = against(Script {
            control,
            finish: false,
            data: vec![vec![encode_done(0, 0)]],
        });
        let got = violation(outcome);
        assert!(check(&got), "{what}: got {got:?}");
    }
}

/// Limits are per phase: before its `HELLO` a peer cannot make
/// this side buffer more than a `HELLO`'s worth (the header alone is
/// refused); after it, a `RECON` list may be far larger.
#[test]
fn hello_is_held_to_a_small_limit_and_recon_is_not() {
    let mut huge_hello = vec![u8::from(FrameType::Hello)];
    huge_hello.extend_from_slice(&(MAX_HELLO_FRAME + 1).to_be_bytes());
    let (outcome, _) = against(Script {
        control: vec![Bytes::from(huge_hello)],
        finish: false,
        data: vec![],
    });
    assert!(matches!(
        violation(outcome),
        Violation::Frame(FrameError::Oversized {
            max: MAX_HELLO_FRAME,
            ..
        })
    ));

    let mut summaries: Vec<Summary> = (0..3000u32)
        .map(|i| Summary {
            hash: AssetHash::of(&i.to_le_bytes()),
            created_at_ms: 0,
            size: 10,
            version: MetaVersion::announced(0, &[]),
        })
        .collect();
    // One page of the paged exchange both sides offer: in hash order.
    summaries.sort_by_key(|s| s.hash);
    let round = pb::Recon {
        packed_summaries: Bytes::from(compact::encode(&summaries, 3)),
        done: true,
        ..Default::default()
    };
    let list = frame(FrameType::Recon, &round.encode_to_vec());
    assert!(list.len() > MAX_HELLO_FRAME as usize);
    let (outcome, _) = against(Script {
        control: vec![
            hello_frame(|_| {}),
            list,
            summary_frame(vec![]),
            encode_done(0, 0),
        ],
        finish: true,
        data: vec![vec![encode_done(0, 0)]],
    });
    outcome.expect("a large list after HELLO is taken");
}

/// Once both sides page their lists, no `RECON` is larger than a page or a
/// coded message: a header declaring more is refused before its payload.
#[test]
fn recon_frames_beyond_a_page_are_refused_when_both_sides_page() {
    use crate::session::v2::paged::MAX_PAGED_RECON_FRAME;
    let mut huge_recon = vec![u8::from(FrameType::Recon)];
    huge_recon.extend_from_slice(&(MAX_PAGED_RECON_FRAME + 1).to_be_bytes());
    let (outcome, _) = against(Script {
        control: vec![hello_frame(|_| {}), Bytes::from(huge_recon)],
        finish: false,
        data: vec![],
    });
    assert!(matches!(
        violation(outcome),
        Violation::Frame(FrameError::Oversized {
            max: MAX_PAGED_RECON_FRAME,
            ..
        })
    ));
}
