//! The PostgreSQL reader under the grants cache: the pool, the one
//! statement that reads a decision's lookups with the revision row, and
//! the connection settings (URL, TLS by rustls with ring) the feed, the
//! searches and the writes share.

use super::cache::{unstorable, GrantReader, ReadAt, ReadFuture};
use super::*;

/// The grants database as the cache reads it.
pub struct Postgres {
    pool: Pool,
    /// The runtime the store was started on, where every connection is
    /// made ([`Postgres::client`]).
    runtime: std::sync::OnceLock<tokio::runtime::Handle>,
}

impl Postgres {
    pub fn new(pool: Pool) -> Self {
        Postgres {
            pool,
            runtime: std::sync::OnceLock::new(),
        }
    }

    /// Makes every later connection on the current runtime (the one the
    /// store is started on), when there is one.
    pub fn bind_runtime(&self) {
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let _ = self.runtime.set(runtime);
        }
    }

    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// A pooled connection, made on the runtime the store was started on:
    /// a connection's task must live where it is always driven, never on
    /// an API pool thread's runtime, which runs only while it has a job.
    pub async fn client(&self) -> Result<deadpool_postgres::Object, DbError> {
        let Some(runtime) = self.runtime.get() else {
            return Ok(self.pool.get().await?);
        };
        let pool = self.pool.clone();
        match runtime.spawn(async move { pool.get().await }).await {
            Ok(got) => Ok(got?),
            Err(e) => Err(DbError::Unreachable(format!(
                "the connection task failed: {e}"
            ))),
        }
    }

    /// The roles of each lookup (in order), and the revision and database
    /// identity they were read at.
    pub async fn read_at(
        &self,
        lookups: &[Lookup],
    ) -> Result<(i64, String, Vec<Box<[Box<str>]>>), DbError> {
        let stored: Vec<&Lookup> = lookups.iter().filter(|l| !unstorable(l)).collect();
        let client = self.client().await?;
        let statement = client
            .prepare_cached(
                "SELECT r.revision, r.database_id, l.i, g.role \
                 FROM unnest($1::int2[], $2::text[], $3::bool[], $4::text[]) \
                      WITH ORDINALITY AS l(kind, holder, pattern, resource, i) \
                 CROSS JOIN portcullis_revision r \
                 LEFT JOIN portcullis_grants g \
                   ON g.holder_kind = l.kind AND g.holder = l.holder COLLATE \"C\" \
                  AND g.pattern = l.pattern AND g.resource = l.resource COLLATE \"C\"",
            )
            .await
            .map_err(DbError::from_pg)?;
        let kinds: Vec<i16> = stored.iter().map(|l| l.kind.code()).collect();
        let holders: Vec<&str> = stored.iter().map(|l| &*l.holder).collect();
        let patterns: Vec<bool> = stored.iter().map(|l| l.pattern).collect();
        let resources: Vec<&str> = stored.iter().map(|l| &*l.resource).collect();
        let rows = client
            .query(&statement, &[&kinds, &holders, &patterns, &resources])
            .await
            .map_err(DbError::from_pg)?;
        let mut revision = None;
        let mut found: Vec<Vec<Box<str>>> = vec![Vec::new(); stored.len()];
        for row in rows {
            let read: i64 = row.try_get(0).map_err(DbError::from_pg)?;
            let database: String = row.try_get(1).map_err(DbError::from_pg)?;
            revision = Some((read, database));
            let index: i64 = row.try_get(2).map_err(DbError::from_pg)?;
            let role: Option<&str> = row.try_get(3).map_err(DbError::from_pg)?;
            let slot = usize::try_from(index - 1)
                .ok()
                .and_then(|i| found.get_mut(i));
            if let (Some(slot), Some(role)) = (slot, role) {
                slot.push(role.into());
            }
        }
        let (revision, database) = match revision {
            Some(r) => r,
            None => {
                let row = client
                    .query_one("SELECT revision, database_id FROM portcullis_revision", &[])
                    .await
                    .map_err(DbError::from_pg)?;
                (row.get(0), row.get(1))
            }
        };
        let mut found = found.into_iter();
        let names = lookups
            .iter()
            .map(|l| {
                if unstorable(l) {
                    Box::default()
                } else {
                    found.next().unwrap_or_default().into_boxed_slice()
                }
            })
            .collect();
        Ok((revision, database, names))
    }
}

impl GrantReader for Postgres {
    fn read<'a>(&'a self, lookups: &'a [Lookup]) -> ReadFuture<'a> {
        Box::pin(async move {
            let (revision, database, names) = self.read_at(lookups).await?;
            Ok(ReadAt {
                revision,
                database,
                names,
            })
        })
    }
}

/// How the server's certificate is checked when TLS is used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertCheck {
    /// Chain to a trusted root and the host name (`require`, `verify-full`,
    /// and `prefer` when the server speaks TLS).
    ChainAndName,
    /// Chain only (`verify-ca`): libpq's meaning, for a certificate that
    /// does not name the address it is reached at.
    Chain,
}

/// The URL with libpq's `sslmode=verify-full` and `verify-ca` turned into
/// the `require` tokio-postgres knows (its parser refuses the others), and
/// the certificate check they ask for. Our `require` already verifies
/// the chain and the host name (stricter than libpq's, which verifies
/// nothing), so `verify-full` means exactly what libpq means by it;
/// `verify-ca` skips the host name only. A URL (`postgresql://…?sslmode=…`)
/// and a `key=value` string are both read; anything else is left to the
/// parser.
pub fn libpq_sslmode(url: &str) -> (String, CertCheck) {
    let mut check = CertCheck::ChainAndName;
    let mut translate = |value: &str| -> Option<&'static str> {
        match value {
            "verify-full" => Some("require"),
            "verify-ca" => {
                check = CertCheck::Chain;
                Some("require")
            }
            _ => None,
        }
    };
    let translated = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        match url.split_once('?') {
            Some((base, query)) => {
                let params: Vec<String> = query
                    .split('&')
                    .map(|param| match param.split_once('=') {
                        Some(("sslmode", value)) => match translate(value) {
                            Some(mode) => format!("sslmode={mode}"),
                            None => param.to_owned(),
                        },
                        _ => param.to_owned(),
                    })
                    .collect();
                format!("{base}?{}", params.join("&"))
            }
            None => url.to_owned(),
        }
    } else {
        translate_key_value(url, &mut translate)
    };
    (translated, check)
}

/// A `key=value` connection string with `sslmode`'s value translated:
/// keys and values as libpq reads them (spaces around `=`, values quoted
/// with `'` and `\` escapes); the rest copied unchanged.
fn translate_key_value(
    text: &str,
    translate: &mut impl FnMut(&str) -> Option<&'static str>,
) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    loop {
        let trimmed = rest.trim_start();
        out.push_str(&rest[..rest.len() - trimmed.len()]);
        rest = trimmed;
        if rest.is_empty() {
            return out;
        }
        // The key, then spaces, `=`, spaces.
        let key_end = rest
            .find(|c: char| c == '=' || c.is_whitespace())
            .unwrap_or(rest.len());
        let key = &rest[..key_end];
        let after_key = &rest[key_end..];
        let Some(after_eq) = after_key.trim_start().strip_prefix('=') else {
            // Not key=value: leave the rest to the parser to refuse.
            out.push_str(rest);
            return out;
        };
        let value_start = after_eq.trim_start();
        out.push_str(&rest[..rest.len() - value_start.len()]);
        // The value: quoted, or up to the next space.
        let value_len = if value_start.starts_with('\'') {
            let mut escaped = false;
            let mut end = value_start.len();
            for (i, c) in value_start.char_indices().skip(1) {
                match (escaped, c) {
                    (true, _) => escaped = false,
                    (false, '\\') => escaped = true,
                    (false, '\'') => {
                        end = i + 1;
                        break;
                    }
                    _ => {}
                }
            }
            end
        } else {
            value_start
                .find(char::is_whitespace)
                .unwrap_or(value_start.len())
        };
        let value = &value_start[..value_len];
        let unquoted = value.trim_matches('\'');
        match (key, translate(unquoted)) {
            ("sslmode", Some(mode)) => out.push_str(mode),
            _ => out.push_str(value),
        }
        rest = &value_start[value_len..];
    }
}

/// The connection settings of `config`, with a connect timeout; libpq's
/// `verify-full` and `verify-ca` read as [`libpq_sslmode`] says.
pub fn pg_config(config: &DatabaseConfig) -> Result<tokio_postgres::Config, DbError> {
    let (url, _) = libpq_sslmode(&config.url);
    let mut pg: tokio_postgres::Config = url
        .parse()
        .map_err(|e: tokio_postgres::Error| DbError::Url(e.to_string()))?;
    if pg.get_connect_timeout().is_none() {
        pg.connect_timeout(Duration::from_secs(3));
    }
    pg.keepalives_idle(Duration::from_secs(30));
    if pg.get_application_name().is_none() {
        pg.application_name("portcullis");
    }
    Ok(pg)
}

/// TLS for the database connection: rustls with the ring provider, never
/// aws-lc-rs. Used when the URL's `sslmode` asks for it; the server's
/// certificate must chain to `config.ca_file` (else the Mozilla roots)
/// and, unless the URL says `sslmode=verify-ca`, name the host.
pub fn tls(config: &DatabaseConfig) -> Result<MakeRustlsConnect, DbError> {
    let ca_file = config.ca_file.as_deref();
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            use rustls_pki_types::pem::PemObject;
            let certs = rustls_pki_types::CertificateDer::pem_file_iter(path)
                .map_err(|e| DbError::Tls(format!("{}: {e}", path.display())))?;
            for cert in certs {
                let cert = cert.map_err(|e| DbError::Tls(format!("{}: {e}", path.display())))?;
                roots
                    .add(cert)
                    .map_err(|e| DbError::Tls(format!("{}: {e}", path.display())))?;
            }
            if roots.is_empty() {
                return Err(DbError::Tls(format!(
                    "{}: no certificate in the CA bundle",
                    path.display()
                )));
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| DbError::Tls(e.to_string()))?;
    let config = match libpq_sslmode(&config.url).1 {
        CertCheck::ChainAndName => builder.with_root_certificates(roots).with_no_client_auth(),
        CertCheck::Chain => {
            let roots = Arc::new(roots);
            let webpki = rustls::client::WebPkiServerVerifier::builder_with_provider(
                roots.clone(),
                provider.clone(),
            )
            .build()
            .map_err(|e| DbError::Tls(e.to_string()))?;
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(ChainOnly {
                    roots,
                    provider,
                    webpki,
                }))
                .with_no_client_auth()
        }
    };
    Ok(MakeRustlsConnect::new(config))
}

/// `sslmode=verify-ca`: the server's certificate must chain to a trusted
/// root, whatever names it holds. The chain is checked by rustls's own
/// `verify_server_cert_signed_by_trust_anchor` (validity, usage, every
/// signature up to a root), the name not at all; handshake signatures are
/// checked by the standard verifier.
#[derive(Debug)]
struct ChainOnly {
    roots: Arc<rustls::RootCertStore>,
    provider: Arc<rustls::crypto::CryptoProvider>,
    webpki: Arc<rustls::client::WebPkiServerVerifier>,
}

impl rustls::client::danger::ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &rustls_pki_types::CertificateDer<'_>,
        intermediates: &[rustls_pki_types::CertificateDer<'_>],
        _server_name: &rustls_pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        let cert = rustls::server::ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

/// A pool of connections for reads and writes (the change feed has a
/// connection of its own).
pub fn pool(config: &DatabaseConfig) -> Result<Pool, DbError> {
    let pg = pg_config(config)?;
    let manager = Manager::from_config(
        pg,
        tls(config)?,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(config.pool_size.max(1))
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(Duration::from_secs(3)))
        .create_timeout(Some(Duration::from_secs(3)))
        .recycle_timeout(Some(Duration::from_secs(3)))
        .build()
        .map_err(|e| DbError::Unreachable(e.to_string()))
}

/// When the server `client` is connected to started: another start time
/// than before means a restart, a restore or a failover. `None` from a
/// database without the function (not PostgreSQL itself).
pub(super) async fn server_started(
    client: &tokio_postgres::Client,
) -> Result<Option<String>, DbError> {
    match client
        .query_one("SELECT pg_postmaster_start_time()::text", &[])
        .await
    {
        Ok(row) => Ok(row.try_get(0).ok()),
        Err(e) if e.as_db_error().is_some() => Ok(None),
        Err(e) => Err(DbError::from_pg(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libpq_verify_modes_read_as_require_with_their_check() {
        let cases = [
            (
                "postgresql://u@h/db?sslmode=verify-full",
                "postgresql://u@h/db?sslmode=require",
                CertCheck::ChainAndName,
            ),
            (
                "postgres://u@h/db?application_name=x&sslmode=verify-ca&connect_timeout=2",
                "postgres://u@h/db?application_name=x&sslmode=require&connect_timeout=2",
                CertCheck::Chain,
            ),
            (
                "postgresql://u@h/db?sslmode=require",
                "postgresql://u@h/db?sslmode=require",
                CertCheck::ChainAndName,
            ),
            (
                "host=h user=u sslmode=verify-full dbname=db",
                "host=h user=u sslmode=require dbname=db",
                CertCheck::ChainAndName,
            ),
            (
                "host=h sslmode = 'verify-ca' password='a b\\' sslmode=x'",
                "host=h sslmode = require password='a b\\' sslmode=x'",
                CertCheck::Chain,
            ),
            (
                "host=h password=sslmode=verify-full",
                "host=h password=sslmode=verify-full",
                CertCheck::ChainAndName,
            ),
        ];
        for (url, translated, check) in cases {
            assert_eq!(libpq_sslmode(url), (translated.to_owned(), check), "{url}");
        }
        for url in [
            "postgresql://u@h/db?sslmode=verify-full",
            "host=h sslmode=verify-ca",
        ] {
            assert!(pg_config(&DatabaseConfig::new(url)).is_ok(), "{url}");
        }
        assert!(pg_config(&DatabaseConfig::new("postgresql://u@h/db?sslmode=allowx")).is_err());
    }
}
