//! TLS to the grants database, against a private PostgreSQL with `ssl =
//! on`, a CA and a server certificate made for this run (naming
//! `localhost` only), and a `pg_hba.conf` that rejects plaintext TCP.
//! The URLs are libpq's: `sslmode=require`, `verify-full` and `verify-ca`
//! as an operator writes them, `hostaddr` so `localhost` is reached on
//! 127.0.0.1 whatever it resolves to.

use std::net::SocketAddr;

use super::{policies, runtime, Replica};
use crate::support::load;
use portcullis::app::{App, Exit, Listeners};
use portcullis::grants_db::{DatabaseConfig, DbError, GrantStore};
use portcullis_testkit::postgres::{Postgres, ServerTls};

/// A CA and a server certificate it signed for `names`, as PEM.
struct Pki {
    ca_pem: String,
    server: ServerTls,
}

fn ca(name: &str) -> rcgen::CertifiedIssuer<'static, rcgen::KeyPair> {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("ca params");
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    let key = rcgen::KeyPair::generate().expect("ca key");
    rcgen::CertifiedIssuer::self_signed(params, key).expect("ca cert")
}

fn pki(names: &[&str]) -> Pki {
    let issuer = ca("portcullis test database CA");
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let mut params = rcgen::CertificateParams::new(names).expect("server params");
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "portcullis test database");
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let key = rcgen::KeyPair::generate().expect("server key");
    let cert = params.signed_by(&key, &issuer).expect("server cert");
    Pki {
        ca_pem: issuer.pem(),
        server: ServerTls {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            required: true,
        },
    }
}

/// `database`'s URL with `host`, on 127.0.0.1, and `sslmode`.
fn url(pg: &Postgres, host: &str, database: &str, sslmode: &str) -> String {
    format!(
        "postgresql://postgres@{host}:{}/{database}?hostaddr=127.0.0.1&sslmode={sslmode}",
        pg.port()
    )
}

fn config(url: String, ca: &std::path::Path) -> DatabaseConfig {
    let mut config = DatabaseConfig::new(url);
    config.ca_file = Some(ca.to_path_buf());
    config.pool_size = 2;
    config
}

/// Opens the store (schema checked, revision read) and stops its feed.
fn open(config: DatabaseConfig) -> Result<(), DbError> {
    runtime().block_on(async {
        let (_, feed) = GrantStore::open(config).await?;
        feed.abort();
        Ok(())
    })
}

/// `serve`'s exit when its grants database is `db` (it fails at start).
fn serve_exit(policies: &std::path::Path, db: DatabaseConfig) -> Exit {
    let mut config = crate::support::serve_config(policies);
    config.grants_db = Some(db);
    let app = App::build(config).expect("build");
    runtime().block_on(async {
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let bind = || tokio::net::TcpListener::bind(any);
        let listeners = Listeners {
            grpc: bind().await.unwrap(),
            admin: bind().await.unwrap(),
            api: Some(bind().await.unwrap()),
            console: None,
        };
        tokio::time::timeout(
            std::time::Duration::from_secs(30),
            app.run(listeners, std::future::pending(), |_, _| {}),
        )
        .await
        .expect("serve did not exit")
    })
}

#[test]
#[ignore = "needs PostgreSQL (initdb, pg_ctl): make test runs it when found"]
fn tls_to_the_database_verifies_the_server_as_libpq_modes_say() {
    let pki = pki(&["localhost"]);
    let pg = Postgres::require_tls(&pki.server);
    pg.create_database("tls");
    let dir = policies();
    let ca_file = dir.path().join("db-ca.pem");
    std::fs::write(&ca_file, &pki.ca_pem).unwrap();

    // An operator's libpq URL, verify-full, works with the CLI: migrate.
    let migrate = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["db", "migrate", "--database-url"])
        .arg(url(&pg, "localhost", "tls", "verify-full"))
        .arg("--database-ca")
        .arg(&ca_file)
        .output()
        .unwrap();
    assert!(
        migrate.status.success(),
        "{}",
        String::from_utf8_lossy(&migrate.stderr)
    );
    let verify_full = config(url(&pg, "localhost", "tls", "verify-full"), &ca_file);
    let policy = load(dir.path());
    runtime().block_on(async {
        let pg_config = portcullis::grants_db::pg_config(&verify_full).unwrap();
        let (mut client, connection) = pg_config
            .connect(portcullis::grants_db::tls(&verify_full).unwrap())
            .await
            .expect("connect with verify-full");
        tokio::spawn(connection);
        let ssl: bool = client
            .query_one(
                "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert!(ssl, "the connection is not encrypted");
        let grants = portcullis::grants_db::write::policy_grants(&policy).unwrap();
        portcullis::grants_db::write::write(&mut client, &grants, &[])
            .await
            .unwrap();
    });

    // `require` and `verify-full` with the CA: the whole service decides
    // from the database.
    for sslmode in ["require", "verify-full"] {
        let replica = Replica::start(
            dir.path(),
            config(url(&pg, "localhost", "tls", sslmode), &ca_file),
        );
        assert_eq!(replica.ready(), 200, "{sslmode}");
        assert!(replica.allows("bob", "read", "1", None), "{sslmode}");
        assert!(!replica.allows("bob", "write", "1", None), "{sslmode}");
    }

    // The certificate names localhost, not 127.0.0.1: `require` and
    // `verify-full` check the name and refuse; `verify-ca` checks only the
    // chain, as libpq does.
    for sslmode in ["require", "verify-full"] {
        let refused = open(config(url(&pg, "127.0.0.1", "tls", sslmode), &ca_file));
        match refused {
            Err(DbError::Tls(message)) => assert!(
                message.contains("not valid for name") || message.contains("NotValidForName"),
                "{sslmode}: {message}"
            ),
            other => panic!("{sslmode} to a name the certificate lacks: {other:?}"),
        }
    }
    open(config(url(&pg, "127.0.0.1", "tls", "verify-ca"), &ca_file))
        .expect("verify-ca checks the chain only");

    // Another CA: refused, whatever the mode, and `serve` exits 78.
    let stranger = dir.path().join("stranger-ca.pem");
    std::fs::write(&stranger, ca("another CA").pem()).unwrap();
    for sslmode in ["require", "verify-ca", "verify-full"] {
        match open(config(url(&pg, "localhost", "tls", sslmode), &stranger)) {
            Err(DbError::Tls(message)) => {
                assert!(message.contains("UnknownIssuer"), "{sslmode}: {message}")
            }
            other => panic!("{sslmode} with another CA: {other:?}"),
        }
    }
    assert_eq!(
        serve_exit(
            dir.path(),
            config(url(&pg, "localhost", "tls", "verify-full"), &stranger)
        ),
        Exit::Config
    );
    // Without a CA bundle the Mozilla roots are the roots: refused too.
    let mut no_ca = config(url(&pg, "localhost", "tls", "require"), &ca_file);
    no_ca.ca_file = None;
    assert!(matches!(open(no_ca), Err(DbError::Tls(_))));

    // Plaintext where the server requires TLS: refused by pg_hba.conf.
    match open(config(url(&pg, "localhost", "tls", "disable"), &ca_file)) {
        Err(e @ DbError::Query(_)) => {
            let message = e.to_string();
            assert!(message.contains("no encryption"), "{message}");
        }
        other => panic!("plaintext to a server that requires TLS: {other:?}"),
    }
}
