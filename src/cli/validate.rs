//! `portcullis validate`: loads a policy directory with the one loader and
//! prints every error as `file:line: message`.

use super::*;

pub(super) fn load_or_report(dir: &Path) -> Option<PolicySet> {
    loaded_or_report(dir, UnreadableKeys::Refuse).map(|loaded| loaded.policy)
}

/// The loaded directory, or `None` after printing every error.
pub(super) fn loaded_or_report(dir: &Path, unreadable: UnreadableKeys) -> Option<Loaded> {
    match load_policies_with(dir, unreadable) {
        Ok(loaded) => Some(loaded),
        Err(errors) => {
            for e in &errors.0 {
                eprintln!("{e}");
            }
            None
        }
    }
}

pub(super) fn validate(dir: &Path, strict: bool) -> ExitCode {
    let Some(loaded) = loaded_or_report(dir, UnreadableKeys::Refuse) else {
        return Exit::Failure.into();
    };
    let policy = &loaded.policy;
    println!(
        "ok: {} applications, {} routes, {} roles, {} grants, {} issuers (version {})",
        policy.applications.len(),
        policy.route_count(),
        policy.named_role_count(),
        policy.grants.len(),
        policy.issuers.len(),
        policy.version
    );
    // Roles define actions no route names (asked about by resource and
    // action); listed, so a misspelled one is seen, not silently new.
    let routed: std::collections::HashSet<usize> = policy
        .applications
        .iter()
        .flat_map(|a| a.routes.iter())
        .filter_map(|r| r.action.as_ref().map(|(_, index)| *index))
        .collect();
    let role_only: Vec<&str> = (0..policy.actions.len())
        .filter(|i| !routed.contains(i))
        .filter_map(|i| policy.actions.get(i).map(|a| &**a))
        .collect();
    if !role_only.is_empty() {
        println!(
            "note: actions no route names (only resource/action checks ask about them): {}",
            role_only.join(", ")
        );
    }
    let lints = crate::lint::lint(policy, &loaded.origins);
    for warning in loaded.warnings.iter().chain(&lints) {
        eprintln!("warning: {warning}");
    }
    let failed = strict && !lints.is_empty();
    if failed {
        eprintln!(
            "error: --strict: {} lint warning(s) (docs/policy-reference.md, \"Lint\")",
            lints.len()
        );
    }
    // The process exits next: freeing a million grants one by one would
    // only add a tenth of a second to every validation in CI.
    std::mem::forget(loaded);
    if failed {
        Exit::Failure.into()
    } else {
        Exit::Ok.into()
    }
}
