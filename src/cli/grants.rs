//! `portcullis grants add|remove|list|import|export`: grants kept in the
//! grants database, written as the policy files write them. Every write
//! prints its revision (a check at least that fresh sees it).

use super::db::{connect, runtime, DatabaseArgs};
use super::*;
use crate::grants_db::write::{self, check_role, policy_grants, Written, MAX_WRITE};
use crate::grants_db::{DbError, Grant, GrantError, HolderKind};

/// Who holds a grant, as flags.
#[derive(Debug, Args)]
pub struct HolderArgs {
    #[arg(long, conflicts_with_all = ["group", "authenticated"])]
    pub subject: Option<String>,
    #[arg(long, conflicts_with = "authenticated")]
    pub group: Option<String>,
    /// Every authenticated subject
    #[arg(long)]
    pub authenticated: bool,
}

#[derive(Debug, Args)]
pub struct GrantArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,
    #[command(flatten)]
    pub holder: HolderArgs,
    /// A role of the policy (without a condition)
    #[arg(long)]
    pub role: String,
    /// A resource (document:1), a pattern (document:*) or *
    #[arg(long)]
    pub resource: String,
}

#[derive(Debug, Subcommand)]
pub enum GrantsCommand {
    /// Add one grant (its role checked against --policies)
    Add {
        #[command(flatten)]
        grant: GrantArgs,
        /// The policy directory whose roles the grant must name
        #[arg(long)]
        policies: PathBuf,
    },
    /// Remove one grant
    Remove {
        #[command(flatten)]
        grant: GrantArgs,
    },
    /// Print grants as `.grants` lines (subject:NAME ROLE RESOURCE), optionally one holder's
    List {
        #[command(flatten)]
        database: DatabaseArgs,
        #[command(flatten)]
        holder: HolderArgs,
    },
    /// Copy the grants of a policy directory (YAML `grants:` and `*.grants` files) into the database
    Import {
        #[command(flatten)]
        database: DatabaseArgs,
        /// The policy directory, read by the same loader as `serve`
        dir: PathBuf,
    },
    /// Print every grant as a YAML `grants:` list (what `import` reads back)
    Export {
        #[command(flatten)]
        database: DatabaseArgs,
    },
}

fn grant(args: &GrantArgs) -> Result<Grant, GrantError> {
    Grant::new(
        args.holder.subject.as_deref(),
        args.holder.group.as_deref(),
        args.holder.authenticated,
        &args.role,
        &args.resource,
    )
}

fn load(dir: &Path) -> Result<PolicySet, ExitCode> {
    load_policies(dir).map_err(|errors| {
        for e in &errors.0 {
            eprintln!("{e}");
        }
        Exit::Config.into()
    })
}

fn report(written: Result<Written, DbError>) -> ExitCode {
    match written {
        // The revision as checks carry it: `<database identity>.<n>`.
        Ok(w) if w.database.is_empty() => {
            println!("nothing to write (added 0, removed 0)");
            Exit::Ok.into()
        }
        Ok(w) => {
            println!(
                "revision {} (added {}, removed {})",
                w.token(),
                w.added,
                w.removed
            );
            Exit::Ok.into()
        }
        Err(e) => {
            eprintln!("{e}");
            Exit::Failure.into()
        }
    }
}

/// A grant as a `.grants` line.
fn line(grant: &Grant) -> String {
    let holder = match grant.kind {
        HolderKind::Subject => format!("subject:{}", grant.holder),
        HolderKind::Group => format!("group:{}", grant.holder),
        HolderKind::Authenticated => "authenticated".to_owned(),
    };
    format!("{holder} {} {}", grant.role, grant.resource_text())
}

/// A grant as a YAML flow mapping (JSON strings are YAML scalars).
fn yaml(grant: &Grant) -> String {
    let q = |s: &str| serde_json::Value::String(s.to_owned()).to_string();
    let holder = match grant.kind {
        HolderKind::Subject => format!("subject: {}", q(&grant.holder)),
        HolderKind::Group => format!("group: {}", q(&grant.holder)),
        HolderKind::Authenticated => "authenticated: true".to_owned(),
    };
    format!(
        "  - {{{holder}, role: {}, resource: {}}}",
        q(&grant.role),
        q(&grant.resource_text())
    )
}

/// Every grant (or one holder's), a page at a time.
async fn each(
    client: &tokio_postgres::Client,
    holder: Option<(HolderKind, &str)>,
    mut print: impl FnMut(&Grant),
) -> Result<(), DbError> {
    let mut after: Option<Grant> = None;
    loop {
        let page = write::list(client, holder, after.as_ref(), 10_000).await?;
        for grant in &page {
            print(grant);
        }
        match page.last() {
            Some(last) if page.len() == 10_000 => after = Some(last.clone()),
            _ => return Ok(()),
        }
    }
}

pub(super) fn grants(command: GrantsCommand) -> ExitCode {
    let runtime = match runtime() {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    match command {
        GrantsCommand::Add {
            grant: args,
            policies,
        } => {
            let policy = match load(&policies) {
                Ok(policy) => policy,
                Err(code) => return code,
            };
            let grant = match grant(&args).and_then(|g| check_role(&policy, &g).map(|()| g)) {
                Ok(grant) => grant,
                Err(e) => {
                    eprintln!("{e}");
                    return Exit::Usage.into();
                }
            };
            report(runtime.block_on(async {
                let mut client = connect(&args.database.config()).await?;
                write::write(&mut client, &[grant], &[]).await
            }))
        }
        GrantsCommand::Remove { grant: args } => {
            let grant = match grant(&args) {
                Ok(grant) => grant,
                Err(e) => {
                    eprintln!("{e}");
                    return Exit::Usage.into();
                }
            };
            report(runtime.block_on(async {
                let mut client = connect(&args.database.config()).await?;
                write::write(&mut client, &[], &[grant]).await
            }))
        }
        GrantsCommand::List { database, holder } => {
            let filter = match (&holder.subject, &holder.group, holder.authenticated) {
                (Some(s), _, _) => Some((HolderKind::Subject, s.as_str())),
                (_, Some(g), _) => Some((HolderKind::Group, g.as_str())),
                (_, _, true) => Some((HolderKind::Authenticated, "")),
                _ => None,
            };
            let outcome = runtime.block_on(async {
                let client = connect(&database.config()).await?;
                each(&client, filter, |g| println!("{}", line(g))).await
            });
            match outcome {
                Ok(()) => Exit::Ok.into(),
                Err(e) => {
                    eprintln!("{e}");
                    Exit::Failure.into()
                }
            }
        }
        GrantsCommand::Import { database, dir } => {
            let policy = match load(&dir) {
                Ok(policy) => policy,
                Err(code) => return code,
            };
            let grants = match policy_grants(&policy) {
                Ok(grants) => grants,
                Err(e) => {
                    eprintln!("{}: {e}", dir.display());
                    return Exit::Config.into();
                }
            };
            let outcome = runtime.block_on(async {
                let mut client = connect(&database.config()).await?;
                let mut total = Written {
                    revision: 0,
                    database: String::new(),
                    added: 0,
                    removed: 0,
                };
                for chunk in grants.chunks(MAX_WRITE) {
                    let written = write::write(&mut client, chunk, &[]).await?;
                    total.revision = written.revision;
                    total.database = written.database;
                    total.added += written.added;
                }
                Ok(total)
            });
            report(outcome)
        }
        GrantsCommand::Export { database } => {
            let outcome = runtime.block_on(async {
                let client = connect(&database.config()).await?;
                println!("grants:");
                each(&client, None, |g| println!("{}", yaml(g))).await
            });
            match outcome {
                Ok(()) => Exit::Ok.into(),
                Err(e) => {
                    eprintln!("{e}");
                    Exit::Failure.into()
                }
            }
        }
    }
}
