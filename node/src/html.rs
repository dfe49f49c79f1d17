//! The frame of the status pages of node and relay: plain server-rendered HTML, one
//! inline stylesheet and a few lines of script, no external asset (a site may be offline,
//! and the page must load on a phone at the dock all the same).

use std::fmt::Write as _;

/// `text` with the characters HTML gives meaning to escaped, for element content and
/// quoted attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Seconds between refreshes of a status page.
pub const REFRESH_SECONDS: u32 = 5;

/// A whole page: `title`, then `body` (already HTML), then `links` (`(href, label)`) to
/// the same data for machines. The page reloads itself every [`REFRESH_SECONDS`] unless
/// someone is typing in a field of it.
pub fn page(title: &str, body: &str, links: &[(&str, &str)]) -> String {
    let title = escape(title);
    let links: Vec<String> = links
        .iter()
        .map(|(href, label)| format!(r#"<a href="{}">{}</a>"#, escape(href), escape(label)))
        .collect();
    let links = links.join(" · ");
    let mut out = String::with_capacity(body.len() + 2048);
    let _ = write!(
        out,
        r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>
body {{ font: 16px/1.4 system-ui, sans-serif; margin: 0 auto; max-width: 60rem; padding: 0.75rem; color: #1b1b1b; }}
h1 {{ font-size: 1.4rem; margin: 0 0 0.25rem; }}
h2 {{ font-size: 1.1rem; margin: 1.25rem 0 0.5rem; }}
.meta {{ color: #555; font-size: 0.9rem; }}
.badge {{ display: inline-block; padding: 0.1rem 0.6rem; border-radius: 1rem; font-weight: 600; }}
.ok {{ background: #d8f3dc; color: #1b4332; }}
.warn {{ background: #fff3bf; color: #5c3c00; }}
.bad {{ background: #ffd6d6; color: #7a0000; }}
table {{ border-collapse: collapse; width: 100%; font-variant-numeric: tabular-nums; }}
th, td {{ text-align: left; padding: 0.35rem 0.5rem; border-bottom: 1px solid #e4e4e4; }}
td.n, th.n {{ text-align: right; }}
.scroll {{ overflow-x: auto; }}
ul.problems {{ padding-left: 1.2rem; }}
form {{ display: flex; gap: 0.5rem; }}
input {{ flex: 1; font: inherit; padding: 0.4rem; }}
button {{ font: inherit; padding: 0.4rem 0.9rem; }}
</style>
</head>
<body>
{body}
<p class="meta">Refreshes every {REFRESH_SECONDS} s. For machines: {links}</p>
<script>
setTimeout(function () {{
  var a = document.activeElement;
  if (!a || a.tagName !== "INPUT") location.reload();
}}, {REFRESH_SECONDS}000);
</script>
</body>
</html>
"#
    );
    out
}

/// A badge: `class` is `ok`, `warn` or `bad`; `state` goes to `data-state` for scripts
/// and tests.
pub fn badge(id: &str, class: &str, state: &str, label: &str) -> String {
    format!(
        r#"<span id="{}" class="badge {class}" data-state="{}">{}</span>"#,
        escape(id),
        escape(state),
        escape(label)
    )
}

/// An age in milliseconds, for people: `850 ms`, `12 s`, `4 min`, `3 h`, `2 d`.
pub fn age(ms: u64) -> String {
    match ms {
        0..1_000 => format!("{ms} ms"),
        1_000..120_000 => format!("{} s", ms / 1_000),
        120_000..7_200_000 => format!("{} min", ms / 60_000),
        7_200_000..172_800_000 => format!("{} h", ms / 3_600_000),
        _ => format!("{} d", ms / 86_400_000),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markup_is_escaped() {
        assert_eq!(escape(r#"<a href="x">'&'</a>"#), "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;");
        assert!(page("<b>", "", &[]).contains("<title>&lt;b&gt;</title>"));
        assert_eq!(badge("wan", "bad", "offline", "<offline>").matches('<').count(), 2);
    }

    #[test]
    fn ages_read_naturally() {
        assert_eq!(age(850), "850 ms");
        assert_eq!(age(12_400), "12 s");
        assert_eq!(age(240_000), "4 min");
        assert_eq!(age(3 * 3_600_000), "3 h");
        assert_eq!(age(2 * 86_400_000), "2 d");
    }
}
