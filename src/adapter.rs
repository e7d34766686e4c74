//! The only module that knows Envoy's ext_authz types.
//!
//! [`read_check`] turns a `CheckRequest` into our [`Check`]: an HTTP
//! request ([`RequestAttrs`]) or, without HTTP attributes, a connection
//! ([`ConnectionAttrs`], from Envoy's network ext_authz filter);
//! [`check_response`] turns a [`Decision`] into a `CheckResponse`. Headers
//! are read from both places Envoy may put them (`headers`, and
//! `header_map` when `encode_raw_headers` is on); a header that appears
//! twice, or differently in the two, counts as sent twice.

use std::borrow::Cow;
use std::collections::BTreeMap;

use envoy_types::ext_authz::v3::pb::{
    CheckRequest, CheckResponse, DeniedHttpResponse, HeaderAppendAction, HeaderValue,
    HeaderValueOption, HttpResponse, HttpStatus, OkHttpResponse,
};
use envoy_types::pb::google::protobuf::Value as ProtoValue;
use envoy_types::pb::google::rpc;

use crate::engine::{
    ConnectionAttrs, Credential, CredentialError, Decision, DenyStatus, Effect, Reason,
    RequestAttrs,
};
use crate::token::MAX_TOKEN_LEN;

/// Longest header value shown to conditions; a longer one is left out.
pub(crate) const MAX_CONDITION_HEADER_LEN: usize = 1024;

/// The request header that carries the verified subject to the upstream.
pub(crate) const DEFAULT_SUBJECT_HEADER: &str = "x-portcullis-subject";

/// How allows are passed on to the upstream.
#[derive(Debug, Clone)]
pub struct ResponseConfig {
    /// Lower-case name of the header set to the verified subject.
    subject_header: String,
    /// Every other `-`/`_` spelling of it: frameworks that fold `_` into
    /// `-` (CGI, WSGI, Rack, ...) would read a client's
    /// `x_portcullis_subject` as the verified subject, so each is removed.
    look_alikes: Vec<String>,
    /// The same names encoded once, for [`crate::answer`].
    parts: ResponseParts,
}

/// The parts of every allow that depend only on the configuration, as
/// protobuf bytes, so no check encodes (or allocates) them again.
#[derive(Debug, Clone)]
pub(crate) struct ResponseParts {
    /// `HeaderValue.key`: the subject header's name.
    pub subject_key: Vec<u8>,
    /// `OkHttpResponse.headers_to_remove` for every look-alike.
    pub remove_look_alikes: Vec<u8>,
    /// The same, led by the subject header itself (an allow no subject
    /// vouches for: a public route).
    pub remove_subject: Vec<u8>,
}

impl ResponseConfig {
    pub fn new(subject_header: &str) -> Self {
        let subject_header = subject_header.to_ascii_lowercase();
        let look_alikes: Vec<String> = dash_underscore_spellings(&subject_header)
            .into_iter()
            .filter(|name| *name != subject_header)
            .collect();
        let string = |tag: u32, text: &str, buf: &mut Vec<u8>| {
            prost::encoding::string::encode(tag, &text.to_owned(), buf)
        };
        let mut parts = ResponseParts {
            subject_key: Vec::new(),
            remove_look_alikes: Vec::new(),
            remove_subject: Vec::new(),
        };
        string(1, &subject_header, &mut parts.subject_key);
        string(
            crate::answer::OK_HEADERS_TO_REMOVE,
            &subject_header,
            &mut parts.remove_subject,
        );
        for name in &look_alikes {
            string(
                crate::answer::OK_HEADERS_TO_REMOVE,
                name,
                &mut parts.remove_look_alikes,
            );
        }
        parts
            .remove_subject
            .extend_from_slice(&parts.remove_look_alikes);
        Self {
            subject_header,
            look_alikes,
            parts,
        }
    }

    pub fn subject_header(&self) -> &str {
        &self.subject_header
    }

    pub(crate) fn parts(&self) -> &ResponseParts {
        &self.parts
    }
}

impl Default for ResponseConfig {
    fn default() -> Self {
        Self::new(DEFAULT_SUBJECT_HEADER)
    }
}

/// Every spelling of `name` with each `-` or `_` as either (at most 2^8
/// spellings; a longer run keeps the rest as written).
fn dash_underscore_spellings(name: &str) -> Vec<String> {
    const MAX_SEPARATORS: usize = 8;
    let positions: Vec<usize> = name
        .bytes()
        .enumerate()
        .filter(|(_, b)| matches!(b, b'-' | b'_'))
        .map(|(i, _)| i)
        .take(MAX_SEPARATORS)
        .collect();
    (0..1u32 << positions.len())
        .map(|mask| {
            let mut bytes = name.as_bytes().to_vec();
            for (bit, &at) in positions.iter().enumerate() {
                bytes[at] = if mask & (1 << bit) == 0 { b'-' } else { b'_' };
            }
            String::from_utf8_lossy(&bytes).into_owned()
        })
        .collect()
}

/// What a CheckRequest asks about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check<'a> {
    Http(RequestAttrs<'a>),
    /// No HTTP attributes: a connection (Envoy's network ext_authz filter).
    Connection(ConnectionAttrs),
}

/// Why a CheckRequest could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AdapterError {
    #[error("CheckRequest carries no attributes")]
    NoAttributes,
    #[error("CheckRequest carries no HTTP request attributes")]
    NoHttpRequest,
}

/// gRPC status codes used in `CheckResponse.status`.
mod code {
    pub const OK: i32 = 0;
    pub(crate) const INVALID_ARGUMENT: i32 = 3;
    pub(crate) const PERMISSION_DENIED: i32 = 7;
    pub(crate) const UNAUTHENTICATED: i32 = 16;
}

/// The HTTP request of a CheckRequest; an error for a connection check.
pub fn request_attrs(request: &CheckRequest) -> Result<RequestAttrs<'_>, AdapterError> {
    match read_check(request)? {
        Check::Http(attrs) => Ok(attrs),
        Check::Connection(_) => Err(AdapterError::NoHttpRequest),
    }
}

/// A CheckRequest read for the decision service: the question, and the
/// grants revision the request asks decisions to be at least as fresh as
/// ([`crate::grants_db::REVISION_HEADER`]), which the service waits for and
/// the engine never sees.
#[derive(Debug)]
pub struct Read<'a> {
    pub check: Result<Check<'a>, AdapterError>,
    pub min_revision: Option<String>,
}

/// Reads a CheckRequest once, for the decision service, with the headers
/// the policy shows conditions (`condition_headers`), and the grants
/// revision it asks for when `revisions` (grants in a database: without
/// one, no revision can apply and none is looked for).
pub fn read<'a>(
    request: &'a CheckRequest,
    condition_headers: &[String],
    revisions: bool,
) -> Read<'a> {
    Read {
        check: read_check_with(request, condition_headers),
        min_revision: revisions
            .then(|| request_header(request, crate::grants_db::REVISION_HEADER))
            .flatten(),
    }
}

/// Reads what the engine needs from a CheckRequest, no header for conditions.
pub(crate) fn read_check(request: &CheckRequest) -> Result<Check<'_>, AdapterError> {
    read_check_with(request, &[])
}

/// Reads what the engine needs from a CheckRequest, with the headers named
/// in `condition_headers` (lower-case: the policy's
/// [`crate::policy::PolicySet::condition_headers`]) for conditions. No
/// other header is copied, so a policy without them pays nothing.
pub fn read_check_with<'a>(
    request: &'a CheckRequest,
    condition_headers: &[String],
) -> Result<Check<'a>, AdapterError> {
    let attributes = request
        .attributes
        .as_ref()
        .ok_or(AdapterError::NoAttributes)?;
    let destination = attributes
        .destination
        .as_ref()
        .map(|peer| peer.principal.as_str())
        .unwrap_or_default();
    let Some(http) = attributes.request.as_ref().and_then(|r| r.http.as_ref()) else {
        let source = attributes
            .source
            .as_ref()
            .map(|peer| peer.principal.as_str())
            .unwrap_or_default();
        let address = attributes
            .destination
            .as_ref()
            .and_then(|peer| socket_address(peer.address.as_ref()));
        return Ok(Check::Connection(ConnectionAttrs {
            source_principal: printable(source),
            destination_principal: printable(destination),
            destination_port: address.as_ref().and_then(|(_, port)| *port),
            destination_address: address
                .map(|(ip, port)| printable(&format!("{ip}:{}", port.unwrap_or(0))))
                .unwrap_or_default(),
        }));
    };

    let named = |name: &str, wanted: &[&str]| wanted.iter().any(|w| name.eq_ignore_ascii_case(w));
    // `header_map` lists each header line; `headers` joins repeats with a
    // comma. A value in one place that the other lacks is one more header.
    let mut authorization = HeaderValues::default();
    http.header_map
        .iter()
        .flat_map(|m| &m.headers)
        .filter(|h| named(&h.key, &["authorization"]))
        .for_each(|h| authorization.line(header_value(h)));
    http.headers
        .iter()
        .filter(|(k, _)| named(k, &["authorization"]))
        .for_each(|(_, v)| authorization.joined(Cow::Borrowed(v.as_str())));
    let first_of = |wanted: &[&str]| {
        http.headers
            .iter()
            .find(|(k, _)| named(k, wanted))
            .map(|(_, v)| Cow::Borrowed(v.as_str()))
            .or_else(|| {
                http.header_map
                    .iter()
                    .flat_map(|m| &m.headers)
                    .find(|h| named(&h.key, wanted))
                    .map(header_value)
            })
    };
    let request_id = first_of(&["x-request-id"]).map(sanitize_request_id);
    let host = if http.host.is_empty() {
        first_of(&[":authority", "host"]).unwrap_or_default()
    } else {
        Cow::Borrowed(http.host.as_str())
    };
    let context_extensions = attributes
        .context_extensions
        .iter()
        .map(|(k, v)| (Cow::Borrowed(k.as_str()), Cow::Borrowed(v.as_str())))
        .collect();
    let mut headers = BTreeMap::new();
    for name in condition_headers {
        let listed = http
            .header_map
            .iter()
            .flat_map(|m| &m.headers)
            .filter(|h| h.key.eq_ignore_ascii_case(name))
            .map(header_value);
        let mapped = http
            .headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| Cow::Borrowed(v.as_str()));
        let mut values: Vec<Cow<'a, str>> = listed.collect();
        for value in mapped {
            if !values.contains(&value) {
                values.push(value);
            }
        }
        // A header sent twice (or joined by Envoy with a comma) is
        // ambiguous: a condition reading it finds it missing, and fails.
        if let [value] = values.as_slice() {
            if !value.contains(',') && value.len() <= MAX_CONDITION_HEADER_LEN {
                headers.insert(Cow::Owned(name.clone()), value.clone());
            }
        }
    }
    Ok(Check::Http(RequestAttrs {
        method: Cow::Borrowed(&http.method),
        path: Cow::Borrowed(&http.path),
        host,
        destination: Cow::Borrowed(destination),
        context_extensions,
        credential: authorization.credential(),
        request_id,
        verified_payloads: jwt_authn_payloads(attributes),
        headers,
    }))
}

/// The IP and port of a peer's socket address; the port is `None` when
/// Envoy gave none (or 0, or a named port).
fn socket_address(
    address: Option<&envoy_types::pb::envoy::config::core::v3::Address>,
) -> Option<(&str, Option<u16>)> {
    use envoy_types::pb::envoy::config::core::v3::{address, socket_address::PortSpecifier};
    match address?.address.as_ref()? {
        address::Address::SocketAddress(socket) => {
            let port = match socket.port_specifier {
                Some(PortSpecifier::PortValue(port)) => {
                    u16::try_from(port).ok().filter(|p| *p != 0)
                }
                _ => None,
            };
            Some((socket.address.as_str(), port))
        }
        _ => None,
    }
}

/// Peer text bound for the log: printable ASCII only, bounded.
fn printable(text: &str) -> String {
    text.chars()
        .filter(|c| c.is_ascii_graphic())
        .take(MAX_PEER_LEN)
        .collect()
}

/// Longest peer principal or address kept.
const MAX_PEER_LEN: usize = 512;

/// The dynamic-metadata namespace Envoy's jwt_authn filter writes to.
pub(crate) const JWT_AUTHN_NAMESPACE: &str = "envoy.filters.http.jwt_authn";

/// Payloads Envoy's jwt_authn filter verified (`payload_in_metadata`),
/// forwarded by ext_authz's `metadata_context_namespaces`. Dynamic
/// metadata is set by Envoy's filters, never by the client.
fn jwt_authn_payloads(
    attributes: &envoy_types::pb::envoy::service::auth::v3::AttributeContext,
) -> BTreeMap<String, serde_json::Map<String, serde_json::Value>> {
    let Some(payloads) = attributes
        .metadata_context
        .as_ref()
        .and_then(|m| m.filter_metadata.get(JWT_AUTHN_NAMESPACE))
    else {
        return BTreeMap::new();
    };
    payloads
        .fields
        .iter()
        .filter_map(|(key, value)| match json_of(value) {
            serde_json::Value::Object(claims) => Some((key.clone(), claims)),
            _ => None,
        })
        .collect()
}

/// A protobuf `Value` as JSON (the two share one data model).
fn json_of(value: &ProtoValue) -> serde_json::Value {
    use envoy_types::pb::google::protobuf::value::Kind;
    match &value.kind {
        None | Some(Kind::NullValue(_)) => serde_json::Value::Null,
        Some(Kind::NumberValue(n)) => serde_json::Number::from_f64(*n)
            .map_or(serde_json::Value::Null, serde_json::Value::Number),
        Some(Kind::StringValue(s)) => serde_json::Value::String(s.clone()),
        Some(Kind::BoolValue(b)) => serde_json::Value::Bool(*b),
        Some(Kind::StructValue(s)) => serde_json::Value::Object(
            s.fields
                .iter()
                .map(|(k, v)| (k.clone(), json_of(v)))
                .collect(),
        ),
        Some(Kind::ListValue(l)) => {
            serde_json::Value::Array(l.values.iter().map(json_of).collect())
        }
    }
}

/// Longest request id kept for the log.
const MAX_REQUEST_ID_LEN: usize = 128;

/// A request id is client-controlled text bound for the log: keep it short
/// and printable.
fn sanitize_request_id(id: Cow<'_, str>) -> Cow<'_, str> {
    if id.len() <= MAX_REQUEST_ID_LEN && id.bytes().all(|b| b.is_ascii_graphic()) {
        return id;
    }
    Cow::Owned(
        id.chars()
            .filter(|c| c.is_ascii_graphic())
            .take(MAX_REQUEST_ID_LEN)
            .collect(),
    )
}

/// The value of the request header `name` (lower case), from `headers` or
/// `header_map`, if the CheckRequest carries one: for the decision service
/// (the grants database's minimum revision), never for the engine.
fn request_header(request: &CheckRequest, name: &str) -> Option<String> {
    let http = request
        .attributes
        .as_ref()?
        .request
        .as_ref()?
        .http
        .as_ref()?;
    http.headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.clone())
        .or_else(|| {
            http.header_map
                .iter()
                .flat_map(|m| &m.headers)
                .find(|h| h.key.eq_ignore_ascii_case(name))
                .map(|h| header_value(h).into_owned())
        })
}

/// A header's value: `raw_value` when Envoy sent raw bytes, else `value`.
/// Bytes that are not UTF-8 become U+FFFD, which no token contains.
fn header_value(header: &HeaderValue) -> Cow<'_, str> {
    if header.raw_value.is_empty() {
        Cow::Borrowed(&header.value)
    } else {
        String::from_utf8_lossy(&header.raw_value)
    }
}

/// The values of one header seen in a CheckRequest: none, one, or more
/// than one (then which does not matter), without collecting them.
#[derive(Default)]
struct HeaderValues<'a> {
    first: Option<Cow<'a, str>>,
    more: bool,
}

impl<'a> HeaderValues<'a> {
    /// A line of `header_map`: each one is a header of its own.
    fn line(&mut self, value: Cow<'a, str>) {
        match self.first {
            None => self.first = Some(value),
            Some(_) => self.more = true,
        }
    }

    /// A value of `headers`, where Envoy joined repeats: one more header
    /// unless `header_map` already listed it.
    fn joined(&mut self, value: Cow<'a, str>) {
        match &self.first {
            None => self.first = Some(value),
            Some(first) if *first != value => self.more = true,
            Some(_) => {}
        }
    }

    fn credential(self) -> Credential<'a> {
        match (self.first, self.more) {
            (None, _) => Credential::Absent,
            (Some(value), false) => parse_bearer(value),
            (Some(_), true) => Credential::Invalid(CredentialError::Multiple),
        }
    }
}

/// Reads the bearer token out of the Authorization header values seen,
/// borrowing it from a borrowed value.
pub fn credential<'a>(values: impl IntoIterator<Item = Cow<'a, str>>) -> Credential<'a> {
    let mut seen = HeaderValues::default();
    for value in values {
        seen.line(value);
    }
    seen.credential()
}

/// `Bearer <token>` read as a credential, borrowing the token when the
/// value is borrowed.
fn parse_bearer(value: Cow<'_, str>) -> Credential<'_> {
    let token = match value {
        Cow::Borrowed(value) => bearer_token(value).map(Cow::Borrowed),
        Cow::Owned(value) => bearer_token(&value).map(|token| Cow::Owned(token.to_owned())),
    };
    match token {
        Ok(token) => Credential::Bearer(token),
        Err(e) => Credential::Invalid(e),
    }
}

/// The token of `Bearer <token>`, with a case-insensitive scheme (RFC
/// 6750, RFC 9110).
fn bearer_token(value: &str) -> Result<&str, CredentialError> {
    let value = value.trim_matches([' ', '\t']);
    let Some((scheme, token)) = value.split_once([' ', '\t']) else {
        return Err(CredentialError::NotBearer);
    };
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(CredentialError::NotBearer);
    }
    let token = token.trim_start_matches([' ', '\t']);
    // RFC 6750 b64token; a comma means Envoy joined two headers into one.
    let token68 =
        |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/');
    let body = token.trim_end_matches('=');
    if token.is_empty() || token.len() > MAX_TOKEN_LEN + 64 || !body.bytes().all(token68) {
        return Err(CredentialError::Malformed);
    }
    Ok(token)
}

/// The response header that tells a client its request was let through
/// by dry-run mode although the policy denies it.
pub(crate) const DRY_RUN_HEADER: &str = "x-portcullis-dry-run";

/// Builds the response Envoy acts on.
pub fn check_response(decision: &Decision, config: &ResponseConfig) -> CheckResponse {
    if matches!(
        decision.reason,
        Reason::ConnectionAllowed | Reason::ConnectionDenied
    ) {
        // Envoy's network filter reads the status only.
        return CheckResponse {
            status: Some(rpc::Status {
                code: grpc_code(decision),
                message: decision.reason.code().to_owned(),
                ..Default::default()
            }),
            ..Default::default()
        };
    }
    let http_status = match decision.effect {
        Effect::Deny(status) if !decision.dry_run => status,
        _ => return let_through(decision, config),
    };
    let (grpc_code, error) = deny_codes(http_status);
    /// The deny body: fixed public words, serialized without building a
    /// JSON tree per check.
    #[derive(serde::Serialize)]
    struct DenyBody {
        error: &'static str,
        reason: &'static str,
    }
    let body = serde_json::to_string(&DenyBody {
        error,
        reason: decision.reason.public_message(),
    })
    .unwrap_or_default();
    let mut headers = vec![header("content-type", "application/json")];
    if http_status == DenyStatus::Unauthorized {
        headers.push(header("www-authenticate", &www_authenticate(decision)));
    }
    CheckResponse {
        status: Some(rpc::Status {
            code: grpc_code,
            message: decision.reason.code().to_owned(),
            ..Default::default()
        }),
        http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
            status: Some(HttpStatus {
                code: i32::from(http_status.code()),
            }),
            headers,
            body,
        })),
        ..Default::default()
    }
}

/// The gRPC status of a connection's answer.
pub(crate) fn grpc_code(decision: &Decision) -> i32 {
    if decision.is_allowed() {
        code::OK
    } else {
        code::PERMISSION_DENIED
    }
}

/// A denied request's gRPC status and the `error` of its body.
pub(crate) fn deny_codes(status: DenyStatus) -> (i32, &'static str) {
    match status {
        DenyStatus::BadRequest => (code::INVALID_ARGUMENT, "bad_request"),
        DenyStatus::Unauthorized => (code::UNAUTHENTICATED, "unauthorized"),
        DenyStatus::Forbidden => (code::PERMISSION_DENIED, "forbidden"),
    }
}

/// The response that lets a request through: an allow, or a deny in dry
/// run (which the client learns from a response header).
fn let_through(decision: &Decision, config: &ResponseConfig) -> CheckResponse {
    let mut ok = OkHttpResponse::default();
    match &decision.subject {
        // Overwrites whatever copy the client sent.
        Some(subject) => ok.headers.push(header(&config.subject_header, subject)),
        None => ok.headers_to_remove.push(config.subject_header.clone()),
    }
    ok.headers_to_remove
        .extend(config.look_alikes.iter().cloned());
    if !decision.is_allowed() {
        let value = format!(
            "would-deny; status={}; reason={}",
            decision.status_code(),
            decision.reason.code()
        );
        ok.response_headers_to_add
            .push(header(DRY_RUN_HEADER, &value));
    }
    CheckResponse {
        status: Some(rpc::Status {
            code: code::OK,
            ..Default::default()
        }),
        http_response: Some(HttpResponse::OkResponse(ok)),
        ..Default::default()
    }
}

/// The challenge of a 401 without a token.
pub(crate) const CHALLENGE: &str = "Bearer realm=\"portcullis\"";

/// RFC 6750 section 3: no error code when no token was sent at all.
fn www_authenticate(decision: &Decision) -> String {
    match &decision.reason {
        crate::engine::Reason::MissingCredentials => CHALLENGE.to_owned(),
        reason => format!(
            "{CHALLENGE}, error=\"invalid_token\", error_description=\"{}\"",
            reason.public_message()
        ),
    }
}

/// How every header Portcullis sets is applied: overwriting any the client
/// sent.
pub(crate) const OVERWRITE: HeaderAppendAction = HeaderAppendAction::OverwriteIfExistsOrAdd;

fn header(name: &str, value: &str) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue {
            key: name.to_owned(),
            value: value.to_owned(),
            ..Default::default()
        }),
        append_action: OVERWRITE as i32,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_denied_connection_is_permission_denied_without_an_http_response() {
        let deny = Decision::deny(DenyStatus::Forbidden, Reason::ConnectionDenied);
        let response = check_response(&deny, &ResponseConfig::default());
        assert_eq!(
            response.status.as_ref().map(|s| s.code),
            Some(code::PERMISSION_DENIED)
        );
        assert!(response.http_response.is_none());
    }

    #[test]
    fn look_alikes_cover_every_separator_spelling() {
        let mut names = dash_underscore_spellings("x-a_b");
        names.sort();
        assert_eq!(names, ["x-a-b", "x-a_b", "x_a-b", "x_a_b"]);
        assert_eq!(dash_underscore_spellings("plain"), ["plain"]);
    }
}
