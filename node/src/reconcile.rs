//! `outpost-node reconcile`: compare a node's block digests with the relay's, lane by
//! lane, and report the matching ranges and the first block that differs
//! (PROTOCOL.md, "Reconciliation").
//!
//! A block is compared when the relay is meant to hold all of it: every seq of it is at
//! or below the node's acknowledged position, or it is the last block and the node has
//! nothing unacknowledged. A block the relay has no digest of counts as empty there.

use std::collections::BTreeMap;
use std::fmt;

use serde_json::Value;

use crate::digest::{BLOCKS_PER_ANSWER_MAX, block_of, seqs_of};

/// One side's digests of a lane: per block, the count and the hash.
pub type Blocks = BTreeMap<u64, (u64, String)>;

/// Reads the `blocks` of a digest answer.
pub fn blocks_of(answer: &Value) -> Result<Blocks, String> {
    let list = answer["blocks"].as_array().ok_or("the answer has no blocks")?;
    list.iter()
        .map(|b| {
            let block = b["block"].as_u64().ok_or_else(|| format!("a block without a number: {b}"))?;
            let count = b["count"].as_u64().ok_or_else(|| format!("block {block} without a count"))?;
            let hash = b["hash"].as_str().ok_or_else(|| format!("block {block} without a hash"))?;
            Ok((block, (count, hash.to_owned())))
        })
        .collect()
}

/// A block that differs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Difference {
    /// The block.
    pub block: u64,
    /// Its records on the node (0 if it has no digest there).
    pub node_count: u64,
    /// Its records at the relay (0 if it has no digest there).
    pub relay_count: u64,
}

/// The verdict on one lane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaneReport {
    /// The lane, as text.
    pub lane: String,
    /// Blocks compared before the first difference (or all, if none differs).
    pub matching_blocks: u64,
    /// The first block that differs.
    pub first_difference: Option<Difference>,
    /// Seqs after the node's acknowledged position that were not compared.
    pub unacknowledged: u64,
    /// The node's acknowledged position.
    pub acked: u64,
}

/// Compares one lane: `acked` and `head` are the node's positions.
pub fn compare(lane: &str, node: &Blocks, relay: &Blocks, acked: u64, head: u64) -> LaneReport {
    let mut report = LaneReport {
        lane: lane.to_owned(),
        matching_blocks: 0,
        first_difference: None,
        unacknowledged: head.saturating_sub(acked),
        acked,
    };
    if acked == 0 {
        return report;
    }
    for block in 0..=block_of(acked) {
        let (_, last) = seqs_of(block);
        let whole = last <= acked || head == acked;
        if !whole {
            break;
        }
        let empty = (0, String::new());
        let (mine, theirs) = (node.get(&block).unwrap_or(&empty), relay.get(&block).unwrap_or(&empty));
        if mine != theirs {
            report.first_difference = Some(Difference { block, node_count: mine.0, relay_count: theirs.0 });
            break;
        }
        report.matching_blocks += 1;
    }
    report
}

impl fmt::Display for LaneReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.lane)?;
        if self.matching_blocks == 0 && self.first_difference.is_none() {
            write!(f, "nothing acknowledged to compare")?;
        } else if self.matching_blocks > 0 {
            let (_, last) = seqs_of(self.matching_blocks - 1);
            write!(f, "blocks 0-{} match (seq 1-{})", self.matching_blocks - 1, last.min(self.acked))?;
        } else {
            write!(f, "no block matches")?;
        }
        if let Some(d) = &self.first_difference {
            let (first, last) = seqs_of(d.block);
            write!(
                f,
                "; block {} (seq {first}-{last}) DIFFERS: {} records on the node, {} at the relay",
                d.block, d.node_count, d.relay_count
            )?;
        }
        if self.unacknowledged > 0 {
            write!(f, "; {} unacknowledged events not compared", self.unacknowledged)?;
        }
        Ok(())
    }
}

/// One side's view of a lane: its blocks and, for the node, its positions.
struct LaneView {
    blocks: Blocks,
    answer: Value,
}

/// Reads every digest of a lane from `url` (a digest endpoint with its query, without
/// `from_block`), page by page.
async fn fetch(client: &reqwest::Client, url: &str) -> anyhow::Result<LaneView> {
    use anyhow::Context;
    let mut blocks = Blocks::new();
    let mut from = 0u64;
    loop {
        let page = format!("{url}&from_block={from}");
        let resp = client.get(&page).send().await.with_context(|| format!("reaching {page}"))?;
        let status = resp.status();
        let answer: Value = resp.json().await.with_context(|| format!("reading {page}"))?;
        if !status.is_success() {
            anyhow::bail!("{page} answered {status}: {}", answer["message"].as_str().unwrap_or(""));
        }
        let got = blocks_of(&answer).map_err(|e| anyhow::anyhow!("{page}: {e}"))?;
        let done = got.len() < BLOCKS_PER_ANSWER_MAX;
        from = got.keys().next_back().map_or(from, |last| last + 1);
        blocks.extend(got);
        if done {
            return Ok(LaneView { blocks, answer });
        }
    }
}

/// The node and the relay being compared.
struct Peers<'a> {
    client: reqwest::Client,
    http: &'a str,
    relay_http: &'a str,
}

impl Peers<'_> {
    /// Compares one lane.
    async fn compare_lane(&self, lane: &str) -> anyhow::Result<LaneReport> {
        use anyhow::Context;
        let node = fetch(&self.client, &format!("http://{}/v1/digests?lane={lane}", self.http)).await?;
        let field = |name: &str| {
            node.answer[name].as_str().map(str::to_owned).with_context(|| format!("no {name} from the node"))
        };
        let (node_id, epoch) = (field("node_id")?, field("epoch")?);
        let url =
            format!("http://{}/v1/digests?node_id={node_id}&epoch={epoch}&lane={lane}", self.relay_http);
        let relay = fetch(&self.client, &url).await?;
        let acked = node.answer["acked_seq"].as_u64().context("no acked_seq from the node")?;
        let head = node.answer["head_seq"].as_u64().context("no head_seq from the node")?;
        Ok(compare(lane, &node.blocks, &relay.blocks, acked, head))
    }

    /// Compares one lane, and once more after a moment if a block differs: node and
    /// relay are read one after the other, so a record that reached the relay in between
    /// makes the last block differ for a moment. A difference seen twice is reported.
    async fn confirmed(&self, lane: &str) -> anyhow::Result<LaneReport> {
        let first = self.compare_lane(lane).await?;
        if first.first_difference.is_none() {
            return Ok(first);
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        self.compare_lane(lane).await
    }
}

/// Runs `outpost-node reconcile`: compares each of `lanes` and, with `repair`, has the
/// node resend each differing block until the lane matches or a resend changes nothing.
/// Writes the report to `out`; returns whether every lane matches in the end.
pub async fn run(
    http: &str,
    relay_http: &str,
    lanes: &[String],
    repair: bool,
    out: &mut String,
) -> anyhow::Result<bool> {
    use anyhow::Context;
    use std::fmt::Write as _;
    let peers = Peers { client: reqwest::Client::new(), http, relay_http };
    let client = &peers.client;
    let mut all_match = true;
    for lane in lanes {
        let mut report = peers.confirmed(lane).await?;
        let _ = writeln!(out, "{report}");
        while repair && let Some(diff) = report.first_difference.clone() {
            let url = format!("http://{http}/v1/reconcile/repair");
            let resp = client
                .post(&url)
                .json(&serde_json::json!({"lane": lane, "block": diff.block}))
                .send()
                .await
                .with_context(|| format!("reaching {url}"))?;
            let status = resp.status();
            let answer: Value = resp.json().await.with_context(|| format!("reading {url}"))?;
            if !status.is_success() {
                anyhow::bail!(
                    "repairing {lane} block {}: {}",
                    diff.block,
                    answer["message"].as_str().unwrap_or("")
                );
            }
            let _ = writeln!(
                out,
                "{lane}: resent block {} (seq {}-{}): {} records, the relay added {}, held {}, holds {} with other contents",
                diff.block,
                answer["first_seq"],
                answer["last_seq"],
                answer["sent"],
                answer["inserted"],
                answer["present"],
                answer["differing"]
            );
            report = peers.confirmed(lane).await?;
            let _ = writeln!(out, "{report}");
            if answer["inserted"].as_u64() == Some(0) {
                // Resending added nothing, so resending again would not either.
                break;
            }
        }
        all_match &= report.first_difference.is_none();
    }
    Ok(all_match)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::BLOCK_EVENTS;

    fn blocks(rows: &[(u64, u64, &str)]) -> Blocks {
        rows.iter().map(|&(b, c, h)| (b, (c, h.to_owned()))).collect()
    }

    #[test]
    fn equal_sides_match_through_the_acknowledged_blocks() {
        let node = blocks(&[(0, BLOCK_EVENTS, "a"), (1, 10, "b")]);
        let report = compare("critical", &node, &node.clone(), BLOCK_EVENTS + 10, BLOCK_EVENTS + 10);
        assert_eq!(report.matching_blocks, 2);
        assert_eq!(report.first_difference, None);
        assert_eq!(report.to_string(), "critical: blocks 0-1 match (seq 1-1034)");
    }

    #[test]
    fn a_partial_block_with_unacknowledged_events_is_not_compared() {
        let node = blocks(&[(0, BLOCK_EVENTS, "a"), (1, 12, "b")]);
        let relay = blocks(&[(0, BLOCK_EVENTS, "a"), (1, 10, "c")]);
        let report = compare("bulk", &node, &relay, BLOCK_EVENTS + 10, BLOCK_EVENTS + 12);
        assert_eq!((report.matching_blocks, &report.first_difference), (1, &None));
        assert!(report.to_string().ends_with("; 2 unacknowledged events not compared"), "{report}");
    }

    #[test]
    fn the_first_differing_block_is_named_and_a_missing_one_counts_as_empty() {
        let node = blocks(&[(0, BLOCK_EVENTS, "a"), (1, BLOCK_EVENTS, "b"), (2, BLOCK_EVENTS, "c")]);
        let relay = blocks(&[(0, BLOCK_EVENTS, "a"), (1, BLOCK_EVENTS - 24, "x")]);
        let acked = 3 * BLOCK_EVENTS;
        let report = compare("standard", &node, &relay, acked, acked);
        assert_eq!(report.matching_blocks, 1);
        assert_eq!(
            report.first_difference,
            Some(Difference { block: 1, node_count: BLOCK_EVENTS, relay_count: BLOCK_EVENTS - 24 })
        );
        assert!(
            report.to_string().contains("block 1 (seq 1025-2048) DIFFERS: 1024 records on the node, 1000")
        );
        let lost = compare("standard", &node, &blocks(&[(0, BLOCK_EVENTS, "a")]), acked, acked);
        assert_eq!(lost.first_difference.map(|d| (d.block, d.relay_count)), Some((1, 0)));
        assert_eq!(
            compare("bulk", &Blocks::new(), &Blocks::new(), 0, 0).to_string(),
            "bulk: nothing acknowledged to compare"
        );
    }
}
