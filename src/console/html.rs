//! The console's HTML: an escaping helper every interpolated string goes
//! through, the page frame, and the two static files (style and the live
//! view's script). Pages are plain `format!` over [`Esc`]: no template
//! engine, no JavaScript build; the only script is [`LIVE_JS`], served as a
//! file so the Content-Security-Policy can forbid inline script.

use std::collections::HashMap;
use std::fmt::{self, Display, Write};

/// Writes its text HTML-escaped (`&`, `<`, `>`, `"`, `'`): safe inside
/// element content and inside quoted attribute values.
pub(crate) struct Esc<'a>(pub &'a str);

impl Display for Esc<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut rest = self.0;
        while let Some(at) = rest.find(['&', '<', '>', '"', '\'']) {
            f.write_str(&rest[..at])?;
            f.write_str(match rest.as_bytes()[at] {
                b'&' => "&amp;",
                b'<' => "&lt;",
                b'>' => "&gt;",
                b'"' => "&quot;",
                _ => "&#39;",
            })?;
            rest = &rest[at + 1..];
        }
        f.write_str(rest)
    }
}

/// A form's fields, as a query string or a POST body sends them.
pub(crate) type Fields = HashMap<String, String>;

/// The field `name`, trimmed; "" when absent.
pub(crate) fn get<'f>(fields: &'f Fields, name: &str) -> &'f str {
    fields.get(name).map_or("", |v| v.trim())
}

/// A query string value, percent-encoded (for links the server writes).
pub(crate) fn query_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// The console's pages, for the navigation bar.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Tab {
    Live,
    Explain,
    Access,
    Policy,
    None,
}

/// A whole page: `body` is already HTML (built with [`Esc`]).
pub(crate) fn page(title: &str, tab: Tab, signed_in: Option<&str>, body: &str) -> String {
    let link = |href: &str, label: &str, this: Tab| {
        let current = if tab == this {
            " aria-current=\"page\""
        } else {
            ""
        };
        format!("<a href=\"{href}\"{current}>{label}</a>")
    };
    let nav = if tab == Tab::None {
        String::new()
    } else {
        format!(
            "<nav aria-label=\"console\">{} {} {} {}</nav>",
            link("/live", "Live decisions", Tab::Live),
            link("/explain", "Explain", Tab::Explain),
            link("/access", "Who can access what", Tab::Access),
            link("/policy", "Policy", Tab::Policy),
        )
    };
    let who = match signed_in {
        Some(name) => format!(
            "<form class=\"who\" method=\"post\" action=\"/logout\"><span>signed in as {}</span> <button type=\"submit\">Sign out</button></form>",
            Esc(name)
        ),
        None => String::new(),
    };
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
<title>{} · Portcullis console</title><link rel=\"stylesheet\" href=\"/static/console.css\"></head>\
<body><header><strong>Portcullis console</strong> {nav} {who}</header><main id=\"main\">\
<h1>{}</h1>\n{body}</main></body></html>\n",
        Esc(title),
        Esc(title)
    )
}

/// A `<dl>` of the rows whose value is present.
pub(crate) fn definitions(rows: &[(&str, Option<&str>)]) -> String {
    let mut out = String::from("<dl>");
    for (name, value) in rows {
        if let Some(value) = value {
            let id = name.replace(' ', "-");
            let _ = write!(
                out,
                "<dt>{}</dt><dd id=\"{}\">{}</dd>",
                Esc(name),
                Esc(&id),
                Esc(value)
            );
        }
    }
    out.push_str("</dl>");
    out
}

/// A labelled text input (the label names it for keyboards and readers).
pub(crate) fn input(name: &str, label: &str, value: &str, kind: &str) -> String {
    format!(
        "<label for=\"{form_id}\">{}</label><input type=\"{kind}\" id=\"{form_id}\" name=\"{}\" value=\"{}\" autocomplete=\"off\">",
        Esc(label),
        Esc(name),
        Esc(value),
        form_id = Esc(name),
    )
}

pub(crate) const CONSOLE_CSS: &str = r#"
body { font-family: system-ui, sans-serif; margin: 0; color: #1b1b1b; background: #fafafa; }
header { display: flex; gap: 1.5em; align-items: center; padding: .6em 1em; background: #23395d; color: #fff; flex-wrap: wrap; }
header a { color: #fff; margin-right: 1em; }
header a[aria-current] { font-weight: bold; text-decoration: underline; }
header .who { margin-left: auto; }
main { padding: 1em 1.5em; }
h1 { font-size: 1.4em; }
h2 { font-size: 1.15em; margin-top: 1.5em; }
form.query { display: grid; grid-template-columns: max-content 24em; gap: .4em .8em; margin: .5em 0 1em; align-items: center; }
form.query button { grid-column: 2; justify-self: start; }
form.filters { display: flex; flex-wrap: wrap; gap: .4em .8em; align-items: center; }
label { font-weight: 600; }
input, select, textarea { font: inherit; padding: .2em .3em; }
textarea { min-height: 3em; }
:focus { outline: 3px solid #f0a500; outline-offset: 1px; }
table { border-collapse: collapse; font-size: .9em; }
th, td { border-bottom: 1px solid #ddd; padding: .25em .6em; text-align: left; vertical-align: top; }
tr.allow td:first-child, .allow { color: #11651c; }
tr.deny td:first-child, .deny { color: #a4161a; }
dl { display: grid; grid-template-columns: max-content auto; gap: .3em 1em; }
dt { font-weight: 600; }
dd { margin: 0; font-family: ui-monospace, monospace; }
code, .mono { font-family: ui-monospace, monospace; }
.error { color: #a4161a; }
.note { color: #555; }
"#;

/// The live view's script: the one piece of JavaScript. It opens the
/// event stream with the page's filters, adds each decision as a row
/// (text only: `textContent`, never markup from the stream) with a link to
/// explain it, and pauses or resumes.
pub(crate) const LIVE_JS: &str = r#"(function () {
  var body = document.getElementById('events');
  if (!body || !window.EventSource) { return; }
  var paused = false, dropped = 0;
  var button = document.getElementById('pause');
  var status = document.getElementById('status');
  button.hidden = false;
  button.addEventListener('click', function () {
    paused = !paused;
    button.textContent = paused ? 'Resume' : 'Pause';
    button.setAttribute('aria-pressed', paused ? 'true' : 'false');
    status.textContent = paused ? 'paused' : 'live';
  });
  function cell(row, text) {
    var td = document.createElement('td');
    td.textContent = text === undefined || text === null ? '' : String(text);
    row.appendChild(td);
    return td;
  }
  function explainLink(f) {
    var p = new URLSearchParams();
    if (f.method && f.path) {
      p.set('kind', 'request'); p.set('method', f.method); p.set('path', f.path);
      if (f.host) { p.set('host', f.host); }
      if (f.subject) { p.set('subject', f.subject); }
      if (Array.isArray(f.groups)) { p.set('groups', f.groups.join(', ')); }
      if (f.context_extensions && typeof f.context_extensions === 'object') {
        p.set('context', Object.keys(f.context_extensions).map(function (k) {
          return k + '=' + f.context_extensions[k];
        }).join('\n'));
      }
    } else if (f.resource && f.action) {
      p.set('kind', 'resource'); p.set('resource', f.resource); p.set('action', f.action);
      if (f.subject) { p.set('subject', f.subject); }
    } else {
      return null;
    }
    return '/explain?' + p.toString();
  }
  var source = new EventSource('/live/events' + window.location.search);
  source.onopen = function () { status.textContent = paused ? 'paused' : 'live'; };
  source.onerror = function () { status.textContent = 'reconnecting'; };
  source.addEventListener('lagged', function (e) {
    dropped += Number(e.data) || 0;
    document.getElementById('dropped').textContent = dropped + ' lines skipped (this view fell behind)';
  });
  source.addEventListener('decision', function (e) {
    if (paused) { return; }
    var line;
    try { line = JSON.parse(e.data); } catch (err) { return; }
    var f = line.fields || line;
    var row = document.createElement('tr');
    row.className = f.decision === 'allow' ? 'allow' : 'deny';
    cell(row, f.decision);
    cell(row, f.status);
    cell(row, line.timestamp);
    cell(row, f.application);
    cell(row, f.route);
    cell(row, f.subject);
    cell(row, f.method && f.path ? f.method + ' ' + f.path : (f.resource || ''));
    cell(row, f.action);
    cell(row, f.reason);
    cell(row, f.rule || f.why);
    var last = cell(row, '');
    var href = explainLink(f);
    if (href) {
      var a = document.createElement('a');
      a.href = href; a.textContent = 'explain';
      last.appendChild(a);
    }
    body.insertBefore(row, body.firstChild);
    while (body.rows.length > 500) { body.deleteRow(body.rows.length - 1); }
  });
})();
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_covers_markup_and_quotes() {
        assert_eq!(
            Esc(r#"<a href="x" onclick='y'>&</a>"#).to_string(),
            "&lt;a href=&quot;x&quot; onclick=&#39;y&#39;&gt;&amp;&lt;/a&gt;"
        );
        assert_eq!(Esc("plain").to_string(), "plain");
        assert_eq!(query_value("document:7 a&b"), "document%3A7%20a%26b");
    }
}
