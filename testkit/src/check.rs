//! `CheckRequest`s as Envoy's ext_authz filters send them.
//!
//! [`Check`] builds the HTTP form: method, path and Host, headers either in
//! `headers` (a map, what Envoy sends by default) or in `header_map` (raw
//! bytes in order, what it sends with `encode_raw_headers: true`), context
//! extensions (`app`), and the source and destination peers (a mesh
//! identity in `principal`). [`connection_check`] is what the network
//! ext_authz filter sends for a TCP connection: peers and no HTTP request.

use std::collections::HashMap;

use envoy_types::ext_authz::v3::pb::{CheckRequest, HeaderValue};
use envoy_types::pb::envoy::config::core::v3::HeaderMap;
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Peer, Request};
use envoy_types::pb::envoy::service::auth::v3::AttributeContext;

/// An HTTP check, built step by step; [`Check::build`] makes the request.
#[derive(Debug, Clone, Default)]
pub struct Check {
    http: HttpRequest,
    context: HashMap<String, String>,
    source: Option<String>,
    destination: Option<String>,
}

impl Check {
    /// `method path` with no Host, header, context extension or peer.
    pub fn http(method: &str, path: &str) -> Check {
        Check {
            http: HttpRequest {
                method: method.to_owned(),
                path: path.to_owned(),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    /// `GET path`.
    pub fn get(path: &str) -> Check {
        Check::http("GET", path)
    }

    /// The request's Host (`:authority`).
    pub fn host(mut self, host: &str) -> Check {
        self.http.host = host.to_owned();
        self
    }

    /// A header in the `headers` map. Envoy lower-cases names and joins
    /// repeated headers with `,` before it fills the map, so a second call
    /// with the same name replaces the first; pass the joined value to test
    /// a repeated header.
    pub fn header(mut self, name: &str, value: &str) -> Check {
        self.http.headers.insert(name.to_owned(), value.to_owned());
        self
    }

    /// Each `(name, value)` as [`Check::header`].
    pub fn headers(self, headers: &[(&str, &str)]) -> Check {
        headers
            .iter()
            .fold(self, |check, (name, value)| check.header(name, value))
    }

    /// `authorization: Bearer TOKEN` in the `headers` map.
    pub fn bearer(self, token: &str) -> Check {
        self.header("authorization", &format!("Bearer {token}"))
    }

    /// `authorization: VALUE` when given, nothing otherwise.
    pub fn authorization(self, value: Option<&str>) -> Check {
        match value {
            Some(value) => self.header("authorization", value),
            None => self,
        }
    }

    /// A header appended to `header_map` (raw bytes, kept in order, repeated
    /// names kept apart), as Envoy sends them with `encode_raw_headers: true`.
    pub fn raw_header(mut self, name: &str, value: &str) -> Check {
        self.http
            .header_map
            .get_or_insert_with(HeaderMap::default)
            .headers
            .push(raw_header(name, value));
        self
    }

    /// A context extension, set per route in Envoy's config.
    pub fn context(mut self, key: &str, value: &str) -> Check {
        self.context.insert(key.to_owned(), value.to_owned());
        self
    }

    /// The context extension `app: NAME` that selects an application.
    pub fn app(self, name: &str) -> Check {
        self.context("app", name)
    }

    /// The destination's mesh identity (a SPIFFE id), as an Istio sidecar
    /// reports it.
    pub fn destination_principal(mut self, principal: &str) -> Check {
        self.destination = Some(principal.to_owned());
        self
    }

    /// The source's mesh identity (a SPIFFE id).
    pub fn source_principal(mut self, principal: &str) -> Check {
        self.source = Some(principal.to_owned());
        self
    }

    /// Changes the HTTP attributes in ways the builder has no step for.
    pub fn with_http(mut self, change: impl FnOnce(&mut HttpRequest)) -> Check {
        change(&mut self.http);
        self
    }

    /// The HTTP attributes built so far.
    pub fn http_request(&self) -> &HttpRequest {
        &self.http
    }

    /// The CheckRequest.
    pub fn build(self) -> CheckRequest {
        CheckRequest {
            attributes: Some(AttributeContext {
                source: self.source.map(|p| peer(&p)),
                destination: self.destination.map(|p| peer(&p)),
                request: Some(Request {
                    http: Some(self.http),
                    ..Default::default()
                }),
                context_extensions: self.context,
                ..Default::default()
            }),
        }
    }
}

impl From<Check> for CheckRequest {
    fn from(check: Check) -> CheckRequest {
        check.build()
    }
}

/// What Envoy's network ext_authz filter sends for a TCP connection: the
/// two peers' principals, the destination's socket address (10.0.0.7 and
/// `port`), and no HTTP attributes.
pub fn connection_check(source: &str, destination: &str, port: u16) -> CheckRequest {
    use envoy_types::pb::envoy::config::core::v3::{
        address, socket_address, Address, SocketAddress,
    };
    let address = Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: "10.0.0.7".into(),
            port_specifier: Some(socket_address::PortSpecifier::PortValue(u32::from(port))),
            ..Default::default()
        })),
    };
    CheckRequest {
        attributes: Some(AttributeContext {
            source: Some(peer(source)),
            destination: Some(Peer {
                address: Some(address),
                ..peer(destination)
            }),
            ..Default::default()
        }),
    }
}

/// One `header_map` entry, its value as raw bytes.
pub fn raw_header(name: &str, value: &str) -> HeaderValue {
    HeaderValue {
        key: name.to_owned(),
        raw_value: value.as_bytes().to_vec(),
        ..Default::default()
    }
}

fn peer(principal: &str) -> Peer {
    Peer {
        principal: principal.to_owned(),
        ..Default::default()
    }
}
