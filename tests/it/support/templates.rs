//! Rendering templates of the `__NAME__` scheme (the shipped Envoy
//! configs): every placeholder the template holds must be given a value and
//! every value must name a placeholder, so the two cannot drift apart.

use std::path::Path;

// ---------------------------------------------------------------------------
// Envoy configuration
// ---------------------------------------------------------------------------

/// The ports substituted into `envoy/front-proxy.yaml`. A 0 lets the kernel
/// choose; [`Envoy::listener_port`] reports what it chose.
#[derive(Debug, Clone, Copy)]
pub struct EnvoyPorts {
    /// `__LISTEN_PORT__`: the front listener clients talk to.
    pub listen: u16,
    /// `__ADMIN_PORT__`: Envoy's admin interface.
    pub admin: u16,
    /// `__PORTCULLIS_PORT__`: the ext_authz gRPC cluster.
    pub portcullis: u16,
    /// `__UPSTREAM_PORT__`: the application cluster.
    pub upstream: u16,
    /// `__DEMO_UPSTREAM_PORT__`: the built-in demo application listener.
    pub demo_upstream: u16,
}

impl EnvoyPorts {
    /// Envoy's own ports ephemeral; Portcullis and the application given.
    pub fn ephemeral(portcullis: u16, upstream: u16) -> Self {
        EnvoyPorts {
            listen: 0,
            admin: 0,
            portcullis,
            upstream,
            demo_upstream: 0,
        }
    }
}

/// Every placeholder the template must contain, and what replaces it.
fn placeholders(ports: &EnvoyPorts) -> [(&'static str, u16); 5] {
    [
        ("__LISTEN_PORT__", ports.listen),
        ("__ADMIN_PORT__", ports.admin),
        ("__PORTCULLIS_PORT__", ports.portcullis),
        ("__UPSTREAM_PORT__", ports.upstream),
        ("__DEMO_UPSTREAM_PORT__", ports.demo_upstream),
    ]
}

/// Renders the Envoy bootstrap template, panicking if a placeholder is missing
/// from the template or left over after rendering (the two would drift apart
/// silently otherwise).
pub fn render_envoy_config(template_path: &Path, ports: &EnvoyPorts) -> String {
    render_envoy_config_with(template_path, ports, &[])
}

/// The application the front-proxy templates name in context_extensions
/// (`__APP__`) unless `extra` says otherwise: the bundled policy's.
pub const DEFAULT_APP: &str = "documents";

/// Like [`render_envoy_config`], for templates with more placeholders than
/// the ports (`extra`: placeholder and value). `__APP__` is
/// [`DEFAULT_APP`] unless `extra` names it.
pub fn render_envoy_config_with(
    template_path: &Path,
    ports: &EnvoyPorts,
    extra: &[(&str, &str)],
) -> String {
    let ports: Vec<(&str, String)> = placeholders(ports)
        .iter()
        .map(|(placeholder, port)| (*placeholder, port.to_string()))
        .collect();
    let mut values: Vec<(&str, &str)> = ports.iter().map(|(p, v)| (*p, v.as_str())).collect();
    if !extra.iter().any(|(p, _)| *p == "__APP__") {
        values.push(("__APP__", DEFAULT_APP));
    }
    values.extend_from_slice(extra);
    render_template(template_path, &values)
}

/// Renders any template of the `__NAME__` scheme with exactly `values`
/// (placeholder and value), panicking if the template holds a placeholder
/// no value names, or a value names one the template lacks (the two would
/// drift apart silently otherwise).
pub fn render_template(template_path: &Path, values: &[(&str, &str)]) -> String {
    let template = std::fs::read_to_string(template_path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", template_path.display()));
    // Checked on the template, not the output: a value such as a JWK set
    // may itself contain `__` (base64url), and that is no placeholder.
    for (line, placeholder) in template_placeholders(&template) {
        assert!(
            values.iter().any(|(p, _)| *p == placeholder),
            "{}:{line}: placeholder {placeholder} is never rendered",
            template_path.display()
        );
    }
    let mut rendered = template.clone();
    for (placeholder, value) in values {
        assert!(
            template.contains(placeholder),
            "{} does not contain {placeholder}",
            template_path.display()
        );
        rendered = rendered.replace(placeholder, value);
    }
    rendered
}

/// Each `__NAME__` in `template` (NAME of A-Z, 0-9 and `_`), with its line.
fn template_placeholders(template: &str) -> Vec<(usize, &str)> {
    let is_name = |c: char| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_';
    let mut found = Vec::new();
    for (n, line) in template.lines().enumerate() {
        let mut rest = line;
        while let Some(start) = rest.find("__") {
            let run = &rest[start..];
            let end = run.find(|c: char| !is_name(c)).unwrap_or(run.len());
            let word = &run[..end];
            if word.len() > 4 && word.ends_with("__") {
                found.push((n + 1, word));
            }
            rest = &run[end.max(2)..];
        }
    }
    found
}
