//! The scaled documents workload: a policy directory, tokens and requests.
//!
//! The policy is the bundled documents application (its `documents.yaml`,
//! `issuers.yaml` and `roles.yaml`, copied) with a generated `grants.yaml`:
//! per-document grants to users, grants to teams (policy groups every user
//! belongs to one of), and denies suspending a few users who hold no token.
//! Tokens are minted for every `users / tokens`-th user with the demo
//! issuer's HS256 secret from `PORTCULLIS_DEMO_SECRET`. Each request is
//! labelled with the decision the policy must give, from a model of the
//! grants kept here, so the load client can count wrong answers.
//!
//! Files written under `--out`:
//! `policies/` (the policy directory), `tokens.txt` (one token a line),
//! `requests.tsv` (method, path, token index or `-`, expected `allow` or
//! `deny`), `envoy-token.txt` and `envoy-paths.txt` (one subject's token
//! and paths it may read, for the all-allowed mix sent through Envoy),
//! and `summary.json`.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use portcullis_testkit::{Claims, Signer};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

#[derive(clap::Args)]
pub struct Args {
    /// Directory to write (created; existing files are replaced).
    #[arg(long)]
    out: PathBuf,
    /// The bundled policy directory whose application, issuers and roles are copied.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/policies"))]
    bundled: PathBuf,
    #[arg(long, default_value_t = 10_000)]
    users: usize,
    #[arg(long, default_value_t = 100_000)]
    documents: usize,
    /// Grants in all: to users, and one in twenty to teams.
    #[arg(long, default_value_t = 200_000)]
    grants: usize,
    #[arg(long, default_value_t = 100)]
    teams: usize,
    /// Distinct tokens (users that send requests).
    #[arg(long, default_value_t = 1_000)]
    tokens: usize,
    /// Requests in the mix (the client cycles through them).
    #[arg(long, default_value_t = 20_000)]
    requests: usize,
    /// Share of requests the policy allows.
    #[arg(long, default_value_t = 0.6)]
    allow_share: f64,
    /// Token lifetime in seconds.
    #[arg(long, default_value_t = 86_400)]
    ttl: u64,
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Write the grants one a line to `grants.grants` (the bulk format)
    /// instead of YAML; groups and denies stay in `grants.yaml`.
    #[arg(long)]
    bulk: bool,
}

const ROLES: [&str; 4] = ["", "viewer", "editor", "owner"];

/// What each role level may do: (method, path suffix after the id).
const OPERATIONS: [(&str, &str, u8); 7] = [
    ("GET", "", 1),
    ("GET", "/comments", 1),
    ("PUT", "", 2),
    ("PATCH", "", 2),
    ("DELETE", "", 3),
    ("POST", "/share", 3),
    // Above every role but admin: no one here holds it.
    ("POST", "/unshare", 9),
];

struct Model {
    /// (user, document) → highest role level held directly or via the team.
    levels: HashMap<(usize, usize), u8>,
    /// Documents each user holds anything on.
    held: Vec<Vec<usize>>,
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.users > 0 && args.documents > 0 && args.teams > 0,
        "empty workload"
    );
    anyhow::ensure!(args.tokens <= args.users, "more tokens than users");
    let secret = std::env::var("PORTCULLIS_DEMO_SECRET")
        .context("PORTCULLIS_DEMO_SECRET must hold the demo issuer's secret")?;
    let mut rng = StdRng::seed_from_u64(args.seed);
    let policies = args.out.join("policies");
    std::fs::create_dir_all(&policies)
        .with_context(|| format!("creating {}", policies.display()))?;
    for file in ["documents.yaml", "issuers.yaml", "roles.yaml"] {
        let from = args.bundled.join(file);
        std::fs::copy(&from, policies.join(file))
            .with_context(|| format!("copying {}", from.display()))?;
    }

    let (yaml, bulk, model, grant_count) = grants(args, &mut rng);
    write(&policies.join("grants.yaml"), &yaml)?;
    let bulk_path = policies.join("grants.grants");
    match bulk {
        Some(lines) => write(&bulk_path, &lines)?,
        None if bulk_path.exists() => std::fs::remove_file(&bulk_path)?,
        None => {}
    }

    let step = (args.users / args.tokens.max(1)).max(1);
    let token_users: Vec<usize> = (0..args.tokens).map(|i| i * step).collect();
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let signer = Signer::hs256(secret.as_bytes());
    let ttl = i64::try_from(args.ttl).context("--ttl is too large")?;
    let mut tokens = String::new();
    for &user in &token_users {
        let token = Claims::demo(&format!("user{user}"), now)
            .ttl(ttl)
            .sign(&signer);
        tokens.push_str(&token);
        tokens.push('\n');
    }
    write(&args.out.join("tokens.txt"), &tokens)?;

    let (requests, expected_allows) = requests(args, &model, &token_users, &mut rng);
    write(&args.out.join("requests.tsv"), &requests)?;

    // The subject with the most readable documents, for the Envoy mix.
    if let Some((index, &user)) = token_users
        .iter()
        .enumerate()
        .max_by_key(|(_, &u)| model.held[u].len())
    {
        let token = tokens.lines().nth(index).unwrap_or_default();
        write(&args.out.join("envoy-token.txt"), token)?;
        let held = &model.held[user];
        let mut paths = String::new();
        if !held.is_empty() {
            for i in 0..held.len().max(200) {
                let _ = writeln!(paths, "/documents/{}", held[i % held.len()]);
            }
        }
        write(&args.out.join("envoy-paths.txt"), &paths)?;
    }

    let summary = serde_json::json!({
        "users": args.users,
        "documents": args.documents,
        "grants": grant_count,
        "teams": args.teams,
        "tokens": token_users.len(),
        "requests": args.requests,
        "expected_allow_share": if args.requests == 0 { 0.0 } else { expected_allows as f64 / args.requests as f64 },
        "seed": args.seed,
    });
    write(&args.out.join("summary.json"), &format!("{summary}\n"))?;
    println!("{summary}");
    Ok(())
}

fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// The grants file, the bulk grants (with `--bulk`), the model of who may
/// do what, and the number of grants.
fn grants(args: &Args, rng: &mut StdRng) -> (String, Option<String>, Model, usize) {
    let mut levels: HashMap<(usize, usize), u8> = HashMap::with_capacity(args.grants);
    let mut held = vec![Vec::new(); args.users];
    let mut yaml = String::with_capacity(args.grants * 70);
    yaml.push_str("# Generated by `loadbench workload`: the scaled documents workload.\ngroups:\n");
    let mut members: Vec<Vec<usize>> = vec![Vec::new(); args.teams];
    for user in 0..args.users {
        members[user % args.teams].push(user);
    }
    for (team, users) in members.iter().enumerate() {
        let list: Vec<String> = users.iter().map(|u| format!("user{u}")).collect();
        let _ = writeln!(yaml, "  team{team}:\n    members: [{}]", list.join(", "));
    }

    let mut bulk = String::new();
    if args.bulk {
        bulk.push_str("# Generated by `loadbench workload --bulk`: holder role resource.\n");
    } else {
        yaml.push_str("grants:\n");
    }
    let team_grants = args.grants / 20;
    let mut team_docs: HashMap<usize, Vec<usize>> = HashMap::new();
    let mut seen_team = std::collections::HashSet::new();
    let mut written = 0;
    while written < team_grants {
        let team = rng.gen_range(0..args.teams);
        let document = rng.gen_range(0..args.documents);
        if !seen_team.insert((team, document)) {
            continue;
        }
        if args.bulk {
            let _ = writeln!(bulk, "group:team{team} viewer document:{document}");
        } else {
            let _ = writeln!(
                yaml,
                "  - group: team{team}\n    role: viewer\n    resource: document:{document}"
            );
        }
        team_docs.entry(team).or_default().push(document);
        written += 1;
    }
    while written < args.grants {
        let user = rng.gen_range(0..args.users);
        let document = rng.gen_range(0..args.documents);
        if levels.contains_key(&(user, document)) {
            continue;
        }
        let level: u8 = match rng.gen_range(0..10) {
            0..=5 => 1,
            6..=8 => 2,
            _ => 3,
        };
        let role = ROLES[usize::from(level)];
        if args.bulk {
            let _ = writeln!(bulk, "subject:user{user} {role} document:{document}");
        } else {
            let _ = writeln!(
                yaml,
                "  - subject: user{user}\n    role: {role}\n    resource: document:{document}"
            );
        }
        levels.insert((user, document), level);
        held[user].push(document);
        written += 1;
    }
    // Team grants count for every member (a viewer grant never lowers a level).
    for (user, documents) in held.iter_mut().enumerate() {
        for &document in team_docs.get(&(user % args.teams)).into_iter().flatten() {
            let level = levels.entry((user, document)).or_insert(0);
            if *level == 0 {
                documents.push(document);
            }
            *level = (*level).max(1);
        }
    }

    // Suspend a few users who hold no token (token users are multiples of
    // users / tokens), so denies are in the policy but do not skew the mix.
    yaml.push_str("denies:\n");
    let step = (args.users / args.tokens.max(1)).max(1);
    let mut suspended = 0;
    for user in (0..args.users).rev() {
        if suspended == 10 {
            break;
        }
        if step > 1 && user % step == 0 {
            continue;
        }
        let _ = writeln!(
            yaml,
            "  - name: suspend-user{user}\n    subject: user{user}\n    reason: load bench suspension"
        );
        suspended += 1;
    }
    for documents in &mut held {
        documents.sort_unstable();
        documents.dedup();
    }
    let bulk = args.bulk.then_some(bulk);
    (yaml, bulk, Model { levels, held }, written)
}

/// The request mix and how many of its requests the policy allows.
fn requests(
    args: &Args,
    model: &Model,
    token_users: &[usize],
    rng: &mut StdRng,
) -> (String, usize) {
    let mut out = String::with_capacity(args.requests * 40);
    let mut allows = 0;
    if token_users.is_empty() {
        return (out, 0);
    }
    for _ in 0..args.requests {
        let index = rng.gen_range(0..token_users.len());
        let user = token_users[index];
        let held = &model.held[user];
        let want_allow = rng.gen_bool(args.allow_share.clamp(0.0, 1.0));
        let line = if want_allow && !held.is_empty() {
            let document = held[rng.gen_range(0..held.len())];
            let level = model.levels.get(&(user, document)).copied().unwrap_or(0);
            let permitted: Vec<_> = OPERATIONS.iter().filter(|op| op.2 <= level).collect();
            let (method, suffix, _) = permitted[rng.gen_range(0..permitted.len())];
            allows += 1;
            format!("{method}\t/documents/{document}{suffix}\t{index}\tallow")
        } else {
            match rng.gen_range(0..20) {
                // No token at all: 401.
                0 => format!(
                    "GET\t/documents/{}\t-\tdeny",
                    rng.gen_range(0..args.documents)
                ),
                // A path no route names: 403 before any token work.
                1 => format!("GET\t/admin/users/{user}\t{index}\tdeny"),
                // An action above the role held: 403 no_grant.
                2..=5 if !held.is_empty() => {
                    let document = held[rng.gen_range(0..held.len())];
                    let level = model.levels.get(&(user, document)).copied().unwrap_or(0);
                    let beyond: Vec<_> = OPERATIONS.iter().filter(|op| op.2 > level).collect();
                    let (method, suffix, _) = beyond[rng.gen_range(0..beyond.len())];
                    format!("{method}\t/documents/{document}{suffix}\t{index}\tdeny")
                }
                // A document the user holds nothing on: 403 no_grant.
                _ => loop {
                    let document = rng.gen_range(0..args.documents);
                    if !model.levels.contains_key(&(user, document)) {
                        break format!("GET\t/documents/{document}\t{index}\tdeny");
                    }
                },
            }
        };
        out.push_str(&line);
        out.push('\n');
    }
    (out, allows)
}
