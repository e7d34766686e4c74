//! Through a real Envoy, with the shipped templates: a missing Envoy fails
//! these tests (`scripts/ensure-envoy.sh` installs one).

mod console;
mod envoy_headers;
mod front_proxy;
mod istio;
mod istio_tls;
mod jwt_authn;
mod per_pod;
mod reload;
mod shadow;
mod tls;
mod walkthrough;
