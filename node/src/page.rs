//! The site page (`GET /`): what a store manager or the platform team on the phone needs
//! at a glance. Is the WAN up, how much is buffered and for how long, what went wrong
//! lately, and what the inventory says of a SKU. It is rendered from the same JSON as
//! `GET /v1/status` and `GET /v1/inventory/{sku}`, so page, API and `outpost-node status`
//! never disagree.

use std::fmt::Write as _;
use std::time::Duration;

use serde_json::Value;

use crate::html::{age, badge, escape, page};

/// How old an unacknowledged event may get before the page (like `outpost-node status`
/// by default) calls the node unhealthy.
pub const MAX_UNACKED_AGE: Duration = Duration::from_secs(300);

/// The page for `status` (or the error reading it), with the lookup of `sku` if asked.
pub fn site(
    status: Result<Value, String>,
    sku: Option<&str>,
    inventory: Option<Result<Value, String>>,
) -> String {
    let mut body = String::new();
    match &status {
        Ok(s) => render_status(&mut body, s),
        Err(e) => {
            let _ = write!(
                body,
                "<h1>Outpost node</h1><p>{}</p>",
                badge("health", "bad", "error", "store error")
            );
            let _ = write!(body, "<p>{}</p>", escape(e));
        }
    }
    render_lookup(&mut body, sku, inventory);
    let title = status.as_ref().ok().and_then(|s| s["node_id"].as_str()).unwrap_or("Outpost node");
    page(&format!("{title} · Outpost"), &body, &[("/v1/status", "/v1/status"), ("/metrics", "/metrics")])
}

fn render_status(body: &mut String, s: &Value) {
    let text = |v: &Value| v.as_str().map_or_else(|| v.to_string(), str::to_owned);
    let relay = &s["relay"];
    let _ = write!(
        body,
        r#"<h1>{}</h1><p class="meta">region {} · epoch {}</p>"#,
        escape(&text(&s["node_id"])),
        escape(&text(&s["region"])),
        escape(&text(&s["epoch"]))
    );

    let state = relay["state"].as_str().unwrap_or("unknown");
    let (class, label) = match state {
        "connected" => ("ok", "WAN connected"),
        // Dialling without a connection: the WAN is down until a relay answers.
        "connecting" => ("bad", "WAN offline, dialling"),
        _ => ("bad", "WAN offline"),
    };
    let _ = write!(body, "<p>{}", badge("wan", class, state, label));
    if let Some(relay_id) = relay["relay_id"].as_str() {
        let _ = write!(body, r#" <span class="meta">relay {}</span>"#, escape(relay_id));
    }
    let backlog: u64 = ["critical", "standard", "bulk"]
        .iter()
        .filter_map(|lane| s["lanes"][lane]["backlog_events"].as_u64())
        .sum();
    let _ = write!(
        body,
        r#" <span class="meta">· <span id="backlog" data-events="{backlog}">{backlog} events buffered</span></span></p>"#
    );

    let problems = crate::health_problems(s, MAX_UNACKED_AGE);
    if problems.is_empty() {
        let _ = write!(body, "<p>{}</p>", badge("health", "ok", "healthy", "healthy"));
    } else {
        let _ = write!(
            body,
            r#"<p>{}</p><ul class="problems">"#,
            badge("health", "bad", "unhealthy", "unhealthy")
        );
        for p in &problems {
            let _ = write!(body, "<li>{}</li>", escape(p));
        }
        body.push_str("</ul>");
    }

    body.push_str(
        r#"<h2>Lanes</h2><div class="scroll"><table id="lanes"><tr><th>lane</th><th class="n">backlog</th><th class="n" title="age of the oldest event the relay has not acknowledged">oldest</th><th class="n">head</th><th class="n">acked</th></tr>"#,
    );
    for lane in ["critical", "standard", "bulk"] {
        let l = &s["lanes"][lane];
        let oldest = l["oldest_unacked_age_ms"].as_u64().map_or_else(|| "–".to_owned(), age);
        let _ = write!(
            body,
            r#"<tr data-lane="{lane}"><td>{lane}</td><td class="n backlog">{}</td><td class="n">{}</td><td class="n">{}</td><td class="n">{}</td></tr>"#,
            l["backlog_events"],
            escape(&oldest),
            l["head_seq"],
            l["acked_seq"]
        );
    }
    body.push_str("</table></div>");

    body.push_str("<h2>Recent errors</h2>");
    let mut errors = Vec::new();
    if let Some(e) = relay["last_error"].as_str() {
        errors.push(format!("link: {e}"));
    }
    if let Some(e) = relay["last_regression"].as_str() {
        errors.push(format!("relay lost acknowledged events: {e}"));
    }
    if errors.is_empty() {
        body.push_str(r#"<p class="meta">none</p>"#);
    } else {
        body.push_str(r#"<ul id="errors">"#);
        for e in &errors {
            let _ = write!(body, "<li>{}</li>", escape(e));
        }
        body.push_str("</ul>");
    }

    let store = &s["store"];
    let _ = write!(
        body,
        r#"<h2>Store</h2><p>{} events in {} commits · {} MiB on disk · {} handshakes, {} refusals</p>"#,
        store["events_committed"],
        store["commits"],
        store["disk_bytes"]
            .as_u64()
            .map_or_else(|| "?".to_owned(), |b| format!("{:.1}", b as f64 / 1_048_576.0)),
        relay["connects"],
        relay["refusals"]
    );
}

fn render_lookup(body: &mut String, sku: Option<&str>, inventory: Option<Result<Value, String>>) {
    let _ = write!(
        body,
        r#"<h2>Inventory</h2><form method="get" action="/"><input name="sku" placeholder="SKU" value="{}" aria-label="SKU"><button>Look up</button></form>"#,
        escape(sku.unwrap_or(""))
    );
    match inventory {
        None => {}
        Some(Err(e)) => {
            let _ = write!(body, "<p>{}</p>", escape(&e));
        }
        Some(Ok(inv)) => {
            let locations = inv["locations"].as_array().map(Vec::as_slice).unwrap_or_default();
            if locations.is_empty() {
                let _ = write!(body, "<p>No stock recorded for {}.</p>", escape(sku.unwrap_or("")));
                return;
            }
            body.push_str(
                r#"<div class="scroll"><table id="inventory"><tr><th>location</th><th class="n">this node</th><th class="n">merged</th><th class="n">actors</th></tr>"#,
            );
            for l in locations {
                let merged = l["merged"].as_i64();
                let cell = merged.map_or_else(|| "overflow".to_owned(), |v| v.to_string());
                let class = if merged.is_some_and(|v| v < 0) { " bad" } else { "" };
                let _ = write!(
                    body,
                    r#"<tr><td>{}</td><td class="n">{}</td><td class="n{class}">{}</td><td class="n">{}</td></tr>"#,
                    escape(l["location"].as_str().unwrap_or("")),
                    l["local"],
                    escape(&cell),
                    l["actors"].as_array().map_or(0, Vec::len)
                );
            }
            body.push_str("</table></div>");
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn status(state: &str, backlog: u64) -> Value {
        let lane = |b: u64| json!({"head_seq": 10, "acked_seq": 10 - b, "backlog_events": b, "oldest_unacked_age_ms": (b > 0).then_some(4_000)});
        json!({
            "node_id": "store-0042", "region": "eu-west", "epoch": "00000000000000ab",
            "relay": {"state": state, "connects": 1, "refusals": 0, "last_error": "relay <closed> the connection"},
            "lanes": {"critical": lane(backlog), "standard": lane(0), "bulk": lane(0)},
            "store": {"events_committed": 10, "commits": 4, "disk_bytes": 2_097_152},
        })
    }

    #[test]
    fn the_page_shows_the_wan_the_backlog_and_escapes_what_it_quotes() {
        let html = site(Ok(status("offline", 3)), None, None);
        assert!(html.contains(r#"id="wan" class="badge bad" data-state="offline""#), "{html}");
        assert!(html.contains(r#"data-events="3""#), "{html}");
        assert!(html.contains(r#"<tr data-lane="critical"><td>critical</td><td class="n backlog">3</td><td class="n">4 s</td>"#), "{html}");
        assert!(html.contains("link: relay &lt;closed&gt; the connection"), "{html}");
        assert!(!html.contains("<closed>"));
        let html = site(Ok(status("connected", 0)), None, None);
        assert!(html.contains(r#"data-state="connected""#) && html.contains(r#"data-events="0""#), "{html}");
        assert!(html.contains(r#"data-state="healthy""#));
    }

    #[test]
    fn a_lookup_shows_each_location_and_marks_negative_stock() {
        let inv = json!({"sku": "SKU-1", "locations": [
            {"location": "A-01", "local": 4, "merged": -2, "actors": [{}, {}]},
        ]});
        let html = site(Ok(status("connected", 0)), Some("SKU-1"), Some(Ok(inv)));
        assert!(html.contains(r#"value="SKU-1""#), "{html}");
        assert!(
            html.contains(
                r#"<td>A-01</td><td class="n">4</td><td class="n bad">-2</td><td class="n">2</td>"#
            ),
            "{html}"
        );
        let html = site(Err("store unreadable".into()), Some("<x>"), Some(Err("sku: bad".into())));
        assert!(html.contains(r#"data-state="error""#) && html.contains(r#"value="&lt;x&gt;""#), "{html}");
    }
}
