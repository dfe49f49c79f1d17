//! A peer that breaks the wire format or lies about who it is gets a typed close from
//! the relay, and the relay goes on serving everyone else.
//!
//! The misbehaving peer here is a raw QUIC client with a valid node certificate (built
//! with the node's own TLS code), so it passes mutual TLS and reaches the protocol.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::json;
use simulator::cluster::{Cluster, REGION};
use simulator::pki::CertPair;
use sync_protocol::wire::{FRAME_BYTES_MAX, FrameDecoder, Hello, PROTOCOL_VERSION, close};
use sync_protocol::{Epoch, Message, PerLane, RefuseReason};

async fn connect(cluster: &Cluster, cert: &CertPair) -> (quinn::Endpoint, quinn::Connection) {
    let creds = node::tls::load(&cluster.pki.ca, &cert.cert, &cert.key).unwrap();
    let local: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let endpoint = quinn::Endpoint::client(local).unwrap();
    let conn = endpoint
        .connect_with(creds.client_config, cluster.relay.quic_addr(), "localhost")
        .unwrap()
        .await
        .unwrap();
    (endpoint, conn)
}

/// Sends a Hello on a new control stream and returns the relay's answer.
async fn hello(conn: &quinn::Connection, node_id: &str) -> Message {
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    let hello = Hello {
        version: PROTOCOL_VERSION,
        node_id: node_id.parse().unwrap(),
        region: REGION.parse().unwrap(),
        epoch: Epoch(0xfeed),
        heads: PerLane::default(),
        inventory_version: 0,
    };
    send.write_all(&Message::Hello(hello).encode()).await.unwrap();
    let mut decoder = FrameDecoder::new(FRAME_BYTES_MAX);
    loop {
        if let Some(msg) = decoder.next_message().unwrap() {
            return msg;
        }
        let chunk =
            recv.read_chunk(4096, true).await.unwrap().expect("control stream ended before an answer");
        decoder.push(&chunk.bytes);
    }
}

/// Waits for the relay to close `conn` and returns the close code and reason.
async fn closed(conn: &quinn::Connection) -> (u64, String) {
    let error = tokio::time::timeout(Duration::from_secs(10), conn.closed())
        .await
        .expect("relay kept the connection");
    match error {
        quinn::ConnectionError::ApplicationClosed(close) => {
            (close.error_code.into_inner(), String::from_utf8_lossy(&close.reason).into_owned())
        }
        other => panic!("expected an application close, got {other}"),
    }
}

/// Posts `n` events to the cluster's first node and waits until the relay holds them.
async fn still_serving(cluster: &Cluster, prefix: &str, n: usize) {
    let node = &cluster.nodes[0];
    let events: Vec<_> = (0..n)
        .map(|i| {
            json!({"event_id": format!("{prefix}-{i}"), "kind": "receive", "sku": "SKU-1",
                        "location": "DOCK-1", "qty": 1})
        })
        .collect();
    let resp = reqwest::Client::new().post(node.events_url()).json(&events).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let page = cluster.relay.client().log_page(0, 10_000).await.unwrap();
        let have = page.events.iter().filter(|e| e.event_id.starts_with(prefix)).count();
        if have == n {
            return;
        }
        assert!(Instant::now() < deadline, "relay holds {have} of {n} {prefix} events");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_frames_close_only_the_connection_that_sent_them() {
    let mut cluster = Cluster::start(&["store-a"]).await.unwrap();
    let rogue = cluster.pki.node("store-b", REGION).unwrap();
    still_serving(&cluster, "before", 20).await;

    // A length prefix over the maximum, on a lane stream after a proper Hello.
    let (_endpoint, conn) = connect(&cluster, &rogue).await;
    assert!(matches!(hello(&conn, "store-b").await, Message::Welcome(_)));
    let (mut lane, _recv) = conn.open_bi().await.unwrap();
    lane.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
    lane.write_all(b"and then some").await.unwrap();
    let (code, reason) = closed(&conn).await;
    assert_eq!(code, u64::from(close::DECODE_ERROR), "{reason}");
    assert!(reason.contains("over the maximum"), "{reason}");

    // A frame of the right length whose body is not a message.
    let (_endpoint, conn) = connect(&cluster, &rogue).await;
    let (mut control, _recv) = conn.open_bi().await.unwrap();
    let mut frame = 5u32.to_be_bytes().to_vec();
    frame.extend_from_slice(&[0xff; 5]);
    control.write_all(&frame).await.unwrap();
    let (code, reason) = closed(&conn).await;
    assert_eq!(code, u64::from(close::DECODE_ERROR), "{reason}");

    // The relay is up and the honest node's events still flow.
    assert!(cluster.relay.is_running());
    still_serving(&cluster, "after", 20).await;
    let relay_log = std::fs::read_to_string(cluster.relay.log_path()).unwrap();
    assert!(relay_log.contains("bad frame"), "the relay log names the bad frame");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hello_that_claims_another_identity_is_refused() {
    let cluster = Cluster::start(&["store-a"]).await.unwrap();
    let rogue = cluster.pki.node("store-b", REGION).unwrap();
    let (_endpoint, conn) = connect(&cluster, &rogue).await;
    match hello(&conn, "store-a").await {
        Message::Refuse(refuse) => assert_eq!(refuse.reason, RefuseReason::IdentityMismatch, "{refuse}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    let (code, reason) = closed(&conn).await;
    assert_eq!(code, u64::from(close::REFUSED), "{reason}");
    assert!(reason.contains("identity_mismatch"), "{reason}");
    // The node whose name was claimed is untouched.
    still_serving(&cluster, "honest", 5).await;
}
