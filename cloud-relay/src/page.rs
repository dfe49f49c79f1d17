//! The region page (`GET /`): which stores are online, which went quiet and since when,
//! and where stock went negative. Rendered from the same JSON as `GET /v1/nodes` and
//! `GET /v1/exceptions`, in the node's page frame ([`node::html`]).

use std::fmt::Write as _;

use node::html::{age, badge, escape, page};
use serde_json::Value;

/// The page for the region: `nodes` (or the error reading them), `exceptions`, and the
/// log's next offset.
pub fn region(region: &str, nodes: Result<Value, String>, exceptions: &Value, next_offset: u64) -> String {
    let mut body = String::new();
    let _ = write!(body, r#"<h1>Region {}</h1>"#, escape(region));
    match &nodes {
        Err(e) => {
            let _ =
                write!(body, "<p>{}</p><p>{}</p>", badge("store", "bad", "error", "store error"), escape(e));
        }
        Ok(nodes) => render_nodes(&mut body, nodes, next_offset),
    }
    render_exceptions(&mut body, exceptions);
    page(
        &format!("{region} · Outpost relay"),
        &body,
        &[("/v1/nodes", "/v1/nodes"), ("/v1/exceptions", "/v1/exceptions"), ("/metrics", "/metrics")],
    )
}

fn render_nodes(body: &mut String, nodes: &Value, next_offset: u64) {
    let list = nodes["nodes"].as_array().map(Vec::as_slice).unwrap_or_default();
    let online = list.iter().filter(|n| n["connected"].as_bool() == Some(true)).count();
    let _ = write!(
        body,
        r#"<p class="meta"><span id="online" data-online="{online}" data-nodes="{}">{online} of {} nodes online</span> · {next_offset} events in the log</p>"#,
        list.len(),
        list.len()
    );
    body.push_str(
        r#"<h2>Nodes</h2><div class="scroll"><table id="nodes"><tr><th>node</th><th>link</th><th class="n">last seen</th><th class="n">events held</th><th class="n">streams</th></tr>"#,
    );
    // Offline nodes first, the longest silent on top: what needs someone's attention.
    let mut rows: Vec<&Value> = list.iter().collect();
    rows.sort_by_key(|n| {
        (n["connected"].as_bool() == Some(true), std::cmp::Reverse(n["last_seen_age_ms"].as_u64()))
    });
    for n in rows {
        let id = n["node_id"].as_str().unwrap_or("?");
        let connected = n["connected"].as_bool() == Some(true);
        let link = if connected {
            badge(&format!("link-{id}"), "ok", "connected", "online")
        } else {
            badge(&format!("link-{id}"), "bad", "offline", "offline")
        };
        let streams = n["streams"].as_array().map(Vec::as_slice).unwrap_or_default();
        let held: u64 = streams.iter().filter_map(|s| s["watermark"].as_u64()).sum();
        let seen = if connected {
            "now".to_owned()
        } else {
            n["last_seen_age_ms"].as_u64().map_or_else(|| "?".into(), age)
        };
        let _ = write!(
            body,
            r#"<tr data-node="{}"><td>{}</td><td>{link}</td><td class="n">{}</td><td class="n">{held}</td><td class="n">{}</td></tr>"#,
            escape(id),
            escape(id),
            escape(&seen),
            streams.len()
        );
    }
    body.push_str("</table></div>");
}

fn render_exceptions(body: &mut String, exceptions: &Value) {
    let list = exceptions["exceptions"].as_array().map(Vec::as_slice).unwrap_or_default();
    let _ = write!(
        body,
        r#"<h2>Exceptions <span id="exceptions" data-count="{}">({})</span></h2>"#,
        list.len(),
        list.len()
    );
    if list.is_empty() {
        body.push_str(r#"<p class="meta">no negative stock</p>"#);
        return;
    }
    body.push_str(
        r#"<div class="scroll"><table><tr><th>sku</th><th>location</th><th class="n">merged</th><th class="n">actors</th></tr>"#,
    );
    for e in list {
        let value = e["value"].as_i64().map_or_else(|| "overflow".to_owned(), |v| v.to_string());
        let _ = write!(
            body,
            r#"<tr><td>{}</td><td>{}</td><td class="n bad">{}</td><td class="n">{}</td></tr>"#,
            escape(e["sku"].as_str().unwrap_or("")),
            escape(e["location"].as_str().unwrap_or("")),
            escape(&value),
            e["actors"].as_array().map_or(0, Vec::len)
        );
    }
    body.push_str("</table></div>");
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn offline_nodes_come_first_and_exceptions_are_listed() {
        let nodes = json!({"nodes": [
            {"node_id": "store-1", "connected": true, "last_seen_age_ms": 0, "streams": [{"watermark": 5}, {"watermark": 2}]},
            {"node_id": "store-2", "connected": false, "last_seen_age_ms": 600_000, "streams": [{"watermark": 9}]},
        ]});
        let exceptions =
            json!({"exceptions": [{"sku": "SKU-<1>", "location": "A-01", "value": -7, "actors": [{}, {}]}]});
        let html = region("eu-west", Ok(nodes), &exceptions, 16);
        assert!(html.contains(r#"data-online="1" data-nodes="2""#), "{html}");
        let offline = html.find(r#"data-node="store-2""#).unwrap();
        let online = html.find(r#"data-node="store-1""#).unwrap();
        assert!(offline < online, "offline first");
        assert!(
            html.contains(
                r#"data-state="offline">offline</span></td><td class="n">10 min</td><td class="n">9</td>"#
            ),
            "{html}"
        );
        assert!(html.contains(r#"<td class="n">now</td><td class="n">7</td><td class="n">2</td>"#), "{html}");
        assert!(
            html.contains(r#"data-count="1""#) && html.contains("SKU-&lt;1&gt;") && html.contains(">-7<"),
            "{html}"
        );
    }
}
