//! Probes through a real Envoy, shared by every end-to-end suite: send a
//! request, find exactly what the recording upstream got for it (each probe
//! carries a unique header), check both against what was expected, and
//! collect every failure so a test reports them together with the logs.

use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::Value;

use super::{bearer, token, EchoUpstream, Recorded, Response, Stack};

/// The header Portcullis sets for the upstream, and its `_` look-alikes,
/// none of which may ever reach the upstream from a client.
pub const SUBJECT: &str = "x-portcullis-subject";
pub const LOOK_ALIKES: [&str; 3] = [
    "x_portcullis_subject",
    "x-portcullis_subject",
    "x_portcullis-subject",
];
/// The header that tags each probe, so the upstream's record of it is exact.
pub const PROBE: &str = "x-e2e-probe";

/// An Envoy the probes go through, with the upstream it forwards to.
pub trait Target {
    fn send(&self, method: &str, path: &[u8], headers: &[(&str, &str)]) -> Response;
    fn upstream(&self) -> &EchoUpstream;
    /// The tail of the logs, for failure messages.
    fn logs(&self) -> String;
}

/// What a probe must come back with.
#[derive(Debug, Clone, Copy)]
pub enum Expect {
    /// 200 from the upstream, which got the request exactly once with exactly
    /// this subject header (`None`: none) and none of its look-alikes.
    Allow(Option<&'static str>),
    /// Portcullis's own deny: this status, its JSON body, never upstream.
    Deny(u16),
    /// One of these statuses (Envoy may refuse before asking), never upstream.
    OneOf(&'static [u16]),
    /// This status, from Envoy or Portcullis, never upstream.
    Status(u16),
    /// Anything but 2xx, never upstream.
    NotAllowed,
}

/// Sends probes through one target and collects what went wrong.
pub struct Probes<'a, T: Target> {
    target: &'a T,
    ran: usize,
    failures: Vec<String>,
}

impl<'a, T: Target> Probes<'a, T> {
    pub fn new(target: &'a T) -> Self {
        Probes {
            target,
            ran: 0,
            failures: Vec::new(),
        }
    }

    /// Sends one request with `authorization` (the whole header value) and
    /// `headers`, checks it against `expect`, and returns what the upstream
    /// recorded for it.
    pub fn check(
        &mut self,
        label: &str,
        method: &str,
        path: &[u8],
        authorization: Option<&str>,
        headers: &[(&str, &str)],
        expect: Expect,
    ) -> (Response, Vec<Recorded>) {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let probe = format!(
            "{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let mut all: Vec<(&str, &str)> = Vec::new();
        if let Some(authorization) = authorization {
            all.push(("Authorization", authorization));
        }
        all.extend_from_slice(headers);
        all.push((PROBE, &probe));

        let resp = self.target.send(method, path, &all);
        let seen = self.target.upstream().requests_with_header(PROBE, &probe);
        self.ran += 1;

        let problems = problems(&resp, &seen, expect);
        if !problems.is_empty() {
            let body: String = resp.text().chars().take(200).collect();
            self.failures.push(format!(
                "{label}: {method} {} {headers:?} → {} {}\n    expected {expect:?}: {}\n    upstream saw: {:?}",
                String::from_utf8_lossy(path),
                resp.status,
                body,
                problems.join("; "),
                seen.iter()
                    .map(|r| (&r.method, &r.path, subject_headers(r)))
                    .collect::<Vec<_>>(),
            ));
        }
        (resp, seen)
    }

    /// The three requests every deployment of the bundled policy must
    /// answer right: alice reads document 1 (through, as alice), bob, a
    /// viewer, writes it (403), and no token (401).
    pub fn bundled_basics(&mut self) {
        let alice = bearer(&token("alice"));
        let bob = bearer(&token("bob"));
        let document = b"/documents/1";
        let alice_reads = Expect::Allow(Some("alice"));
        self.check(
            "alice reads 1",
            "GET",
            document,
            Some(&alice),
            &[],
            alice_reads,
        );
        let bob_writes = Expect::Deny(403);
        self.check(
            "bob writes 1 (viewer)",
            "PUT",
            document,
            Some(&bob),
            &[],
            bob_writes,
        );
        self.check("no token", "GET", document, None, &[], Expect::Deny(401));
    }

    /// Records a failure the caller found itself.
    pub fn fail(&mut self, message: String) {
        self.failures.push(message);
    }

    /// How many probes were sent.
    pub fn ran(&self) -> usize {
        self.ran
    }

    /// Fails the test with every failure and the logs, if there was any.
    pub fn finish(self) {
        assert!(
            self.failures.is_empty(),
            "{} of {} probes failed:\n{}\n{}",
            self.failures.len(),
            self.ran,
            self.failures.join("\n"),
            self.target.logs()
        );
    }
}

/// The subject header and its look-alikes as the upstream received them.
pub fn subject_headers(request: &Recorded) -> Vec<(String, String)> {
    request
        .headers
        .iter()
        .filter(|(k, _)| k == SUBJECT || LOOK_ALIKES.contains(&k.as_str()))
        .cloned()
        .collect()
}

fn problems(resp: &Response, seen: &[Recorded], expect: Expect) -> Vec<String> {
    let mut out = Vec::new();
    match expect {
        Expect::Allow(subject) => {
            if resp.status != 200 {
                out.push(format!("status {} is not 200", resp.status));
            }
            if seen.len() != 1 {
                out.push(format!("upstream got it {} times, not once", seen.len()));
            }
            if let Some(request) = seen.first() {
                let got = request.header_values(SUBJECT);
                let want: Vec<&str> = subject.into_iter().collect();
                if got != want {
                    out.push(format!("upstream {SUBJECT} was {got:?}, not {want:?}"));
                }
                for name in LOOK_ALIKES {
                    let got = request.header_values(name);
                    if !got.is_empty() {
                        out.push(format!("look-alike {name}: {got:?} reached the upstream"));
                    }
                }
            }
        }
        Expect::Deny(status) => {
            if resp.status != status {
                out.push(format!("status {} is not {status}", resp.status));
            }
            out.extend(portcullis_deny_problems(resp));
        }
        Expect::OneOf(statuses) => {
            if !statuses.contains(&resp.status) {
                out.push(format!("status {} is not one of {statuses:?}", resp.status));
            }
        }
        Expect::Status(status) => {
            if resp.status != status {
                out.push(format!("status {} is not {status}", resp.status));
            }
        }
        Expect::NotAllowed => {
            if (200..300).contains(&resp.status) {
                out.push(format!("status {} is a success", resp.status));
            }
        }
    }
    if !matches!(expect, Expect::Allow(_)) && !seen.is_empty() {
        out.push(format!("upstream was reached {} time(s)", seen.len()));
    }
    out
}

/// The shape of a deny Portcullis wrote (as opposed to one Envoy made up).
pub fn portcullis_deny_problems(resp: &Response) -> Vec<String> {
    let mut out = Vec::new();
    let want_error = match resp.status {
        400 => "bad_request",
        401 => "unauthorized",
        403 => "forbidden",
        _ => return out,
    };
    if !resp
        .header("content-type")
        .is_some_and(|ct| ct.starts_with("application/json"))
    {
        out.push(format!(
            "content-type {:?} is not JSON",
            resp.header("content-type")
        ));
    }
    match resp.json() {
        Some(body) => {
            if body.get("error").and_then(Value::as_str) != Some(want_error) {
                out.push(format!("body error is not {want_error:?}"));
            }
            if body
                .get("reason")
                .and_then(Value::as_str)
                .is_none_or(str::is_empty)
            {
                out.push("body has no reason".to_string());
            }
        }
        None => out.push("body is not Portcullis' JSON".to_string()),
    }
    if resp.status == 401
        && !resp
            .header("www-authenticate")
            .is_some_and(|v| v.to_ascii_lowercase().starts_with("bearer"))
    {
        out.push(format!(
            "www-authenticate {:?} is not a Bearer challenge",
            resp.header("www-authenticate")
        ));
    }
    out
}

impl Target for Stack {
    fn send(&self, method: &str, path: &[u8], headers: &[(&str, &str)]) -> Response {
        Stack::send(self, method, path, headers)
    }

    fn upstream(&self) -> &EchoUpstream {
        &self.upstream
    }

    fn logs(&self) -> String {
        Stack::logs(self)
    }
}

/// A shared stack (`Stack::shared`) is probed like the stack itself.
impl<T: Target> Target for std::sync::Arc<T> {
    fn send(&self, method: &str, path: &[u8], headers: &[(&str, &str)]) -> Response {
        T::send(self, method, path, headers)
    }

    fn upstream(&self) -> &EchoUpstream {
        T::upstream(self)
    }

    fn logs(&self) -> String {
        T::logs(self)
    }
}
