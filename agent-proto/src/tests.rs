use proptest::prelude::*;

use crate::*;

fn samples() -> Vec<Frame> {
    let f = |session, message| Frame { session, message };
    vec![
        f(0, Message::Hello { nonce: 42 }),
        f(
            0,
            Message::HelloAck {
                nonce: 42,
                agent_version: "0.1.0".into(),
                kernel_release: "6.1.0-56-cloud-amd64".into(),
                ready: true,
            },
        ),
        f(
            0,
            Message::Ready {
                kernel_release: "6.1".into(),
                uptime_ms: 1234,
            },
        ),
        f(
            0,
            Message::Setup(Setup {
                hostname: "web".into(),
                mounts: vec![MountRequest {
                    source: "tmpfs".into(),
                    target: "/scratch".into(),
                    fstype: "tmpfs".into(),
                    options: "size=1m".into(),
                }],
                env: vec![("A".into(), "b".into())],
                services: vec![ServiceSpec {
                    name: "db".into(),
                    argv: vec!["sleep".into(), "9".into()],
                    env: vec![],
                    cwd: Some("/".into()),
                    restart: Restart::OnFailure,
                }],
                hosts: vec![("cache".into(), "10.88.0.3".into())],
                secret_env: vec!["TOKEN".into()],
                hold_services: true,
            }),
        ),
        f(0, Message::SetupDone),
        f(0, Message::StartServices),
        f(
            0,
            Message::PutFile(PutFile {
                dir: "/run/secrets".into(),
                name: "TOKEN".into(),
                owner: Some("1000".into()),
                mode: 0o400,
                content: b"s3cr3t\0bytes".to_vec(),
            }),
        ),
        f(
            0,
            Message::KeepFiles {
                dir: "/run/secrets".into(),
                keep: vec!["TOKEN".into()],
            },
        ),
        f(
            7,
            Message::Exec(Exec {
                argv: vec!["uname".into(), "-r".into()],
                env: vec![("PATH".into(), "/bin".into())],
                cwd: None,
                user: Some("1000".into()),
                tty: true,
                rows: 24,
                cols: 80,
            }),
        ),
        f(7, Message::Started { pid: 99 }),
        f(7, Message::Stdin(b"in".to_vec())),
        f(7, Message::Stdin(vec![])),
        f(7, Message::Stdout(b"out\n".to_vec())),
        f(7, Message::Stderr(b"err\n".to_vec())),
        f(
            7,
            Message::Exit {
                code: 137,
                signal: 9,
            },
        ),
        f(
            7,
            Message::Resize {
                rows: 50,
                cols: 132,
            },
        ),
        f(7, Message::Signal { signal: 2 }),
        f(
            7,
            Message::Error {
                message: "no such file".into(),
            },
        ),
        f(0, Message::Poweroff),
        f(
            8,
            Message::Forward(Forward {
                agent: true,
                git_credentials: false,
                gitconfig: Some("[include]\n\tpath = /etc/gitconfig\n".into()),
            }),
        ),
        f(8, Message::Forward(Forward::default())),
        f(
            8,
            Message::StreamOpen {
                stream: 3,
                kind: StreamKind::GitCredential,
            },
        ),
        f(
            8,
            Message::StreamData {
                stream: 3,
                data: b"action=get\n".to_vec(),
            },
        ),
        f(8, Message::StreamEof { stream: 3 }),
        f(8, Message::StreamClose { stream: 3 }),
    ]
}

#[test]
fn every_message_round_trips() {
    for frame in samples() {
        let bytes = encode(&frame).unwrap();
        let (back, used) = decode(&bytes).unwrap().unwrap();
        assert_eq!(back, frame);
        assert_eq!(used, bytes.len());
    }
}

#[test]
fn every_truncation_needs_more_bytes_never_panics() {
    for frame in samples() {
        let bytes = encode(&frame).unwrap();
        for cut in 0..bytes.len() {
            assert_eq!(decode(&bytes[..cut]), Ok(None), "{frame:?} cut at {cut}");
        }
    }
}

#[test]
fn payload_shortened_inside_the_frame_is_a_typed_error() {
    // The header claims a shorter payload than the fields need.
    for frame in samples() {
        let bytes = encode(&frame).unwrap();
        let len = bytes.len() - HEADER_LEN;
        for short in 0..len {
            let mut b = bytes[..HEADER_LEN + short].to_vec();
            b[8..12].copy_from_slice(&(short as u32).to_le_bytes());
            match decode(&b) {
                Err(ProtoError::Truncated { .. }) => {}
                // Stream payloads are raw bytes: any length is valid.
                Ok(Some((
                    Frame {
                        message:
                            Message::Stdin(_)
                            | Message::Stdout(_)
                            | Message::Stderr(_)
                            | Message::StreamData { .. },
                        ..
                    },
                    _,
                ))) => {}
                // A stream frame with no bytes left is refused.
                Err(ProtoError::Invalid { field: "data" })
                    if matches!(frame.message, Message::StreamData { .. }) => {}
                other => panic!("{frame:?} shortened to {short}: {other:?}"),
            }
        }
    }
}

#[test]
fn header_errors() {
    assert_eq!(decode(b"XX"), Err(ProtoError::BadMagic(*b"XX")));
    assert_eq!(decode(b"BF\x09"), Err(ProtoError::UnsupportedVersion(9)));
    let mut big = encode(&Frame {
        session: 0,
        message: Message::Poweroff,
    })
    .unwrap();
    big[8..12].copy_from_slice(&(MAX_PAYLOAD as u32 + 1).to_le_bytes());
    assert_eq!(
        decode(&big),
        Err(ProtoError::TooLarge(MAX_PAYLOAD as u64 + 1))
    );
    let mut unknown = encode(&Frame {
        session: 0,
        message: Message::Poweroff,
    })
    .unwrap();
    unknown[3] = 200;
    assert_eq!(decode(&unknown), Err(ProtoError::UnknownKind(200)));
    let mut trailing = encode(&Frame {
        session: 0,
        message: Message::Hello { nonce: 1 },
    })
    .unwrap();
    trailing.push(0);
    trailing[8..12].copy_from_slice(&9u32.to_le_bytes());
    assert_eq!(decode(&trailing), Err(ProtoError::TrailingBytes(1)));
    let too_big = Frame {
        session: 0,
        message: Message::Stdout(vec![0; MAX_PAYLOAD + 1]),
    };
    assert!(matches!(encode(&too_big), Err(ProtoError::TooLarge(_))));
}

#[test]
fn hostile_counts_do_not_allocate() {
    // Exec whose argv count claims four billion entries.
    let mut b = encode(&Frame {
        session: 1,
        message: Message::Exec(Exec::default()),
    })
    .unwrap();
    b[HEADER_LEN..HEADER_LEN + 4].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(matches!(
        decode(&b),
        Err(ProtoError::Truncated { field: "argv" })
    ));
}

#[test]
fn frame_buffer_splits_stream_and_recovers() {
    let mut all = Vec::new();
    for f in samples() {
        all.extend(encode(&f).unwrap());
    }
    let mut fb = FrameBuffer::new();
    let mut got = Vec::new();
    for chunk in all.chunks(7) {
        fb.push(chunk);
        while let Some(f) = fb.next_frame().unwrap() {
            got.push(f);
        }
    }
    assert_eq!(got, samples());
    assert_eq!(fb.pending(), 0);

    // Garbage before a frame: error, then resync finds the frame.
    let mut fb = FrameBuffer::new();
    fb.push(b"junk");
    fb.push(
        &encode(&Frame {
            session: 3,
            message: Message::SetupDone,
        })
        .unwrap(),
    );
    assert!(matches!(fb.next_frame(), Err(ProtoError::BadMagic(_))));
    let mut fb = FrameBuffer::new();
    fb.push(b"junk");
    fb.push(
        &encode(&Frame {
            session: 3,
            message: Message::SetupDone,
        })
        .unwrap(),
    );
    fb.resync();
    assert_eq!(fb.next_frame().unwrap().unwrap().session, 3);

    // A bad payload is skipped and the next frame still decodes.
    let mut fb = FrameBuffer::new();
    let mut bad = encode(&Frame {
        session: 1,
        message: Message::Hello { nonce: 1 },
    })
    .unwrap();
    bad[8..12].copy_from_slice(&4u32.to_le_bytes());
    bad.truncate(HEADER_LEN + 4);
    fb.push(&bad);
    fb.push(
        &encode(&Frame {
            session: 2,
            message: Message::SetupDone,
        })
        .unwrap(),
    );
    assert!(fb.next_frame().is_err());
    assert_eq!(fb.next_frame().unwrap().unwrap().session, 2);
}

proptest! {
    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = decode(&bytes);
        let mut fb = FrameBuffer::new();
        fb.push(&bytes);
        for _ in 0..4 {
            match fb.next_frame() {
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(_) => fb.resync(),
            }
        }
    }

    #[test]
    fn valid_header_random_payload_never_panics(kind in 0u8..26, payload in proptest::collection::vec(any::<u8>(), 0..128)) {
        let mut b = vec![b'B', b'F', VERSION, kind, 1, 0, 0, 0];
        b.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        b.extend_from_slice(&payload);
        let _ = decode(&b);
    }

    #[test]
    fn exec_round_trips(argv in proptest::collection::vec(".{0,8}", 0..4), cwd in proptest::option::of(".{0,8}"), tty: bool, rows: u16, cols: u16, session: u32) {
        let frame = Frame { session, message: Message::Exec(Exec { argv, env: vec![], cwd, user: None, tty, rows, cols }) };
        let bytes = encode(&frame).unwrap();
        prop_assert_eq!(decode(&bytes).unwrap().unwrap().0, frame);
    }
}

/// What the guest sends on a forwarded stream is bounded and typed: no empty or oversized
/// data frame, no stream kind the host does not know, no oversized or NUL-carrying session
/// gitconfig.
#[test]
fn stream_frames_are_bounded_and_typed() {
    let frame = |message| {
        encode(&Frame {
            session: 1,
            message,
        })
        .unwrap()
    };
    let ok = frame(Message::StreamData {
        stream: 1,
        data: vec![7; STREAM_CHUNK],
    });
    assert!(decode(&ok).unwrap().is_some());
    for data in [vec![], vec![7; STREAM_CHUNK + 1]] {
        let b = frame(Message::StreamData { stream: 1, data });
        assert_eq!(decode(&b), Err(ProtoError::Invalid { field: "data" }));
    }
    let mut bad_kind = frame(Message::StreamOpen {
        stream: 1,
        kind: StreamKind::SshAgent,
    });
    *bad_kind.last_mut().unwrap() = 9;
    assert_eq!(
        decode(&bad_kind),
        Err(ProtoError::Invalid { field: "kind" })
    );
    for gitconfig in ["x".repeat(MAX_FORWARD_GITCONFIG + 1), "a\0b".into()] {
        let b = frame(Message::Forward(Forward {
            gitconfig: Some(gitconfig),
            ..Forward::default()
        }));
        assert_eq!(decode(&b), Err(ProtoError::Invalid { field: "gitconfig" }));
    }
    assert!(Forward::default().is_empty());
}

#[test]
fn a_put_files_debug_never_shows_the_content() {
    let m = Message::PutFile(PutFile {
        dir: "/run/secrets".into(),
        name: "TOKEN".into(),
        owner: None,
        mode: 0o400,
        content: b"marker-value".to_vec(),
    });
    let shown = format!("{m:?}");
    assert!(
        !shown.contains("marker-value") && shown.contains("TOKEN"),
        "{shown}"
    );
}
