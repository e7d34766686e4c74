//! Writes the seed corpora under `fuzz/corpus/<target>/`: small, meaningful
//! inputs each target starts from. Deterministic, so running it again
//! changes no file. Run from `fuzz/`: `cargo run --features seeds --bin write_seeds`.

use std::path::Path;

use base64_url::encode;
use portcullis_fuzz::{bundled_dir, check_request, demo_tokens, token_world};
use prost::Message;

mod base64_url {
    /// base64url without padding, enough for hand-made token parts.
    pub fn encode(bytes: &[u8]) -> String {
        const ALPHABET: &[u8; 64] =
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let n = chunk
                .iter()
                .enumerate()
                .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
            for i in 0..=chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]));
            }
        }
        out
    }
}

fn write(target: &str, name: &str, bytes: &[u8]) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target);
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    std::fs::write(dir.join(name), bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
}

fn paths() {
    let seeds = [
        ("root", "/"),
        ("document", "/documents/42"),
        ("comments-query", "/documents/42/comments?page=2"),
        ("unreserved-escapes", "/%64ocuments/4%32/comments"),
        ("kept-escape", "/files/a%20b/%3a"),
        ("double-escape", "/documents/%252e%252e/2"),
        ("dot-dot", "/documents/1/../2"),
        ("encoded-dots", "/documents/1/%2e%2E/2"),
        ("trailing-dot", "/documents/2."),
        ("encoded-slash", "/documents/1%2F..%2F2"),
        ("backslash", "/documents/1\\..\\2"),
        ("empty-segment", "/documents//2"),
        ("trailing-slash", "/documents/"),
        ("path-parameter", "/documents/2;x=1"),
        ("bad-escape", "/documents/%zz"),
        ("control-escape", "/documents/1%00"),
        ("fragment", "/documents/1#/../2"),
        ("absolute-form", "http://evil/documents/1"),
        ("many-segments", "/a/b/c/d/e/f/g/h/i/j/k/l/m/n/o/p"),
    ];
    for (name, path) in seeds {
        write("path_normalize", name, path.as_bytes());
    }
}

/// How the bundled demo issuer names its secret, and how a seed that
/// carries it names it instead.
const SECRET_FROM_ENV: &str = "secret_env: PORTCULLIS_DEMO_SECRET";
const SECRET_FROM_FILE: &str = "secret_file: demo.secret";

fn policies() {
    let read = |file: &str| {
        std::fs::read(bundled_dir().join(file)).unwrap_or_else(|e| panic!("{file}: {e}"))
    };
    // Mode 0: the whole bundled policy as one file.
    let mut whole = vec![0u8];
    for file in [
        "issuers.yaml",
        "roles.yaml",
        "documents.yaml",
        "grants.yaml",
        "connections.yaml",
    ] {
        // The target's directory holds the secret in `demo.secret`: the
        // fuzz process sets no environment variable.
        let text = String::from_utf8(read(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
        whole.extend(text.replace(SECRET_FROM_ENV, SECRET_FROM_FILE).into_bytes());
        whole.push(b'\n');
    }
    write("policy_load", "bundled-in-one-file", &whole);
    // Mode 1: grants.yaml beside the bundled rest.
    let mut grants = vec![1u8];
    grants.extend(read("grants.yaml"));
    write("policy_load", "bundled-grants", &grants);
    let extra = b"\x01groups:\n  team:\n    members: [alice, bob]\ngrants:\n  - group: team\n    role: editor\n    resource: \"document:*\"\n  - subject: erin\n    role: admin\n    resource: \"*\"\ndenies:\n  - name: no-deletes\n    group: team\n    resource: \"document:*\"\n    actions: [delete]\n  - name: everyone-off-7\n    resource: document:7\n";
    write("policy_load", "groups-patterns-denies", extra);
    let dry_run = b"\x00issuers:\n  - name: idp\n    issuer: https://idp.test\n    audiences: [api]\n    algorithms: [HS256]\n    key: { secret_file: demo.secret }\nroles:\n  reader: { actions: [read] }\napplications:\n  - name: api\n    mode: dry_run\n    select:\n      hosts: [api.example.com, \"*.example.org\"]\n      context_extensions: { app: api }\n    routes:\n      - name: files\n        methods: [GET, HEAD]\n        path: /files/{path...}\n        resource: file:{path}\n        action: read\n      - name: open\n        methods: [GET]\n        path: /\n        access: public\ngrants:\n  - subject: alice\n    role: reader\n    resource: \"file:*\"\n";
    write("policy_load", "dry-run-rest-capture-hosts", dry_run);
    write(
        "policy_load",
        "unknown-role",
        b"\x01grants:\n  - subject: a\n    role: nosuch\n    resource: x\n",
    );
    write(
        "policy_load",
        "role-cycle",
        b"\x00roles:\n  a: { includes: [b] }\n  b: { includes: [a] }\n",
    );
    write(
        "policy_load",
        "anchors-and-aliases",
        b"\x01grants:\n  - &g { subject: a, role: viewer, resource: document:1 }\n  - *g\n",
    );
    // Mode 2: a bulk grants file beside the whole bundled policy.
    write(
        "policy_load",
        "bulk-grants",
        b"\x02# holder role resource\nsubject:erin owner document:9\ngroup:auditors editor document:*\n\nsubject:bob   viewer   *\n",
    );
    write(
        "policy_load",
        "bulk-bad-lines",
        b"\x02subject:x nosuch document:1\ngroup:undeclared viewer x\nsubject: viewer\nuser:a viewer b\n",
    );
}

fn checks() {
    let tokens = demo_tokens();
    let bearer: Vec<String> = tokens.iter().map(|t| format!("Bearer {t}")).collect();
    let (alice, dave, mallory) = (&bearer[0], &bearer[3], &bearer[4]);
    let seeds: Vec<(&str, _)> = vec![
        (
            "alice-reads-1",
            check_request("GET", "/documents/1", &[alice], true),
        ),
        (
            "alice-deletes-2",
            check_request("DELETE", "/documents/2", &[alice], true),
        ),
        (
            "alice-shares-1-mapped",
            check_request("POST", "/documents/1/share", &[alice], false),
        ),
        (
            "dave-audits-42",
            check_request("GET", "/documents/42/comments", &[dave], true),
        ),
        (
            "mallory-suspended",
            check_request("GET", "/documents/3", &[mallory], true),
        ),
        ("no-token", check_request("GET", "/documents/1", &[], true)),
        ("health", check_request("GET", "/healthz", &[], true)),
        (
            "two-authorizations",
            check_request("GET", "/documents/1", &[alice, alice], true),
        ),
        (
            "basic-auth",
            check_request("GET", "/documents/1", &["Basic YWxpY2U6cHc="], true),
        ),
        (
            "dot-segment",
            check_request("GET", "/documents/2/../1", &[alice], true),
        ),
        (
            "unknown-route",
            check_request("GET", "/admin", &[alice], true),
        ),
    ];
    for (name, request) in seeds {
        write("check_request", name, &request.encode_to_vec());
    }
    write("check_request", "empty", b"");
}

fn tokens() {
    let world = token_world();
    for (name, token) in ["hs256", "rs256", "es256"].iter().zip(&world.valid) {
        write("token_verify", name, token.as_bytes());
    }
    let claims =
        encode(br#"{"iss":"https://hs.idp.test","aud":"api","sub":"alice","exp":4000003600}"#);
    let forged = [
        ("alg-none", r#"{"alg":"none"}"#),
        (
            "alg-hs-with-kid",
            r#"{"alg":"HS256","kid":"../../etc/passwd"}"#,
        ),
        ("crit", r#"{"alg":"HS256","crit":["exp"]}"#),
        (
            "rs-as-hs",
            r#"{"alg":"HS256","typ":"JWT","jku":"http://evil"}"#,
        ),
        ("es384", r#"{"alg":"ES384"}"#),
    ];
    for (name, header) in forged {
        let token = format!("{}.{claims}.c2lnbmF0dXJl", encode(header.as_bytes()));
        write("token_verify", name, token.as_bytes());
    }
    write("token_verify", "two-parts", b"eyJhbGciOiJIUzI1NiJ9.e30");
    write(
        "token_verify",
        "empty-signature",
        format!("{}.{claims}.", encode(br#"{"alg":"HS256"}"#)).as_bytes(),
    );
}

fn main() {
    paths();
    policies();
    checks();
    tokens();
    println!("seeds written under {}/corpus", env!("CARGO_MANIFEST_DIR"));
}
